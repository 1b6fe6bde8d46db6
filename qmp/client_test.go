package qmp_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/qmp"
	"github.com/snpd/snpd/qmp/qmptest"
)

func dial(t *testing.T, srv *qmptest.Server) *qmp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, srv.Path(), nil)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHandshakeAndTypedCommands(t *testing.T) {
	srv := qmptest.NewServer(t, qmptest.WithVersion(9, 2, 1))
	c := dial(t, srv)
	ctx := testCtx(t)
	if got := c.Greeting().Version.String(); got != "9.2.1" {
		t.Errorf("greeting version = %q, want 9.2.1", got)
	}
	v, err := c.QueryVersion(ctx)
	if err != nil || v.String() != "9.2.1" || !v.AtLeast(9, 1) || v.AtLeast(10, 0) {
		t.Fatalf("QueryVersion = %v, %v", v, err)
	}
	st, err := c.QueryStatus(ctx)
	if err != nil || st.Status != qmp.RunStatePrelaunch || st.Running {
		t.Fatalf("QueryStatus = %+v, %v", st, err)
	}
	policy := uint64(0x30000)
	srv.Reply("query-sev", map[string]any{
		"enabled": true, "api-major": 1, "api-minor": 55, "build-id": 21,
		"state": "launch-update", "sev-type": "sev-snp", "snp-policy": policy,
	})
	sev, err := c.QuerySEV(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sev.SevType != qmp.SevTypeSNP || sev.SNPPolicy == nil || *sev.SNPPolicy != policy || sev.Policy != nil || sev.APIMinor != 55 {
		t.Errorf("QuerySEV = %+v", sev)
	}
	srv.Handle("qom-get", func(_ context.Context, args json.RawMessage) (any, error) {
		var a struct{ Path, Property string }
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		if a.Path != "/objects/sev0" || a.Property != "policy" {
			return nil, &qmp.Error{Class: qmp.ClassDeviceNotFound, Desc: "no " + a.Path}
		}
		return 196608, nil
	})
	var got uint64
	if err := c.QOMGet(ctx, "/objects/sev0", "policy", &got); err != nil || got != 0x30000 {
		t.Errorf("QOMGet = %#x, %v", got, err)
	}
	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.QueryStatus(ctx); st.Status != qmp.RunStateRunning || !st.Running {
		t.Errorf("after cont: %+v", st)
	}
	want := []string{"qmp_capabilities", "query-version", "query-status", "query-sev", "qom-get", "cont", "query-status"}
	if got := srv.CommandNames(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("server received %v, want %v", got, want)
	}
	cmds := srv.Commands()
	if string(cmds[4].Args) != `{"path":"/objects/sev0","property":"policy"}` {
		t.Errorf("qom-get args = %s", cmds[4].Args)
	}
}

func TestErrorClassKept(t *testing.T) {
	srv := qmptest.NewServer(t)
	c := dial(t, srv)
	srv.Fail("query-sev", qmp.ClassGenericError, "SEV feature is not available")
	_, err := c.QuerySEV(testCtx(t))
	var qe *qmp.Error
	if !errors.As(err, &qe) {
		t.Fatalf("QuerySEV error %v is not a *qmp.Error", err)
	}
	if qe.Class != qmp.ClassGenericError || qe.Desc != "SEV feature is not available" {
		t.Errorf("error = %+v", qe)
	}
	if !strings.Contains(err.Error(), "query-sev") {
		t.Errorf("error %q does not name the command", err)
	}
	err = c.Execute(testCtx(t), "no-such-command", nil, nil)
	if !errors.As(err, &qe) || qe.Class != qmp.ClassCommandNotFound {
		t.Errorf("unknown command: %v", err)
	}
	// The connection is still usable after error replies.
	if _, err := c.QueryStatus(testCtx(t)); err != nil {
		t.Errorf("after errors: %v", err)
	}
}
