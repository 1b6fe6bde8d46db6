package daemon

import (
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp/agentproto"
)

// TestVerifyRouteBoundsTheNonce: POST /v1/verify, through a real snpd, refuses a nonce
// outside 1..64 bytes (at 65,536 bytes the 16-bit length in the binding wraps, so one
// REPORT_DATA would bind two (nonce, user data) pairs), user data over 64 bytes or
// without a nonce, and a report_data that is not the binding of the nonce given with it,
// each with 400 and one line, before it looks at the VM; a consistent request gets as far
// as the VM lookup.
func TestVerifyRouteBoundsTheNonce(t *testing.T) {
	e := newTestEnv(t, "")
	startDaemon(t, e)
	nonce := []byte("verifier nonce")
	good, err := agentproto.BindReportData(nonce, []byte("ud"))
	if err != nil {
		t.Fatal(err)
	}
	h := hex.EncodeToString
	for _, c := range []struct {
		name   string
		req    api.VerifyRequest
		status int
		want   string
	}{
		{"65-byte nonce", api.VerifyRequest{Nonce: h(make([]byte, 65))}, 400, "nonce is 65 bytes, want 1..64"},
		{"65536-byte nonce", api.VerifyRequest{Nonce: h(make([]byte, 65536))}, 400, "nonce is 65536 bytes, want 1..64"},
		{"65-byte user data", api.VerifyRequest{Nonce: h(nonce), UserData: h(make([]byte, 65))}, 400, "user data is 65 bytes"},
		{"user data without nonce", api.VerifyRequest{UserData: h([]byte("ud"))}, 400, "nonce is 0 bytes"},
		{"report_data not the binding", api.VerifyRequest{Nonce: h(nonce), ReportData: h(make([]byte, 64))}, 400, "report_data is not the binding of nonce and user_data"},
		{"report_data of the nonce without the user data", api.VerifyRequest{Nonce: h(nonce), UserData: h([]byte("other")), ReportData: h(good[:])}, 400, "report_data is not the binding"},
		{"consistent", api.VerifyRequest{Nonce: h(nonce), UserData: h([]byte("ud")), ReportData: h(good[:])}, 404, "not defined"},
		{"exact report_data alone", api.VerifyRequest{ReportData: h(good[:])}, 404, "not defined"},
	} {
		c.req.VM, c.req.Report = "nosuch", make([]byte, 1184)
		body, _ := json.Marshal(c.req)
		status, resp := rawRequest(t, e.Socket, http.MethodPost, api.VerifyPath, body)
		var ae api.Error
		if status != c.status || json.Unmarshal([]byte(resp), &ae) != nil || !strings.Contains(ae.Message, c.want) || strings.Contains(ae.Message, "\n") {
			t.Errorf("%s: %d %s; want %d with %q", c.name, status, resp, c.status, c.want)
		}
	}
}
