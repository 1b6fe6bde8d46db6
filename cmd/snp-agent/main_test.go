package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/snpd/snpd/snp/agentproto"
)

// TestNoReportDevice: on this host (no /dev/sev-guest, no configfs-tsm) the agent's report
// source refuses with the documented error instead of returning anything.
func TestNoReportDevice(t *testing.T) {
	if hasReportDevice() {
		t.Skip("this machine has an SEV-SNP guest report device")
	}
	r, c, err := (&quoteSource{}).GetReport([64]byte{})
	if !errors.Is(err, ErrNoDevice) || r != nil || c != nil || err.Error() != "guest has no SEV-SNP report device" {
		t.Fatalf("got %v (%d, %d bytes)", err, len(r), len(c))
	}
}

// TestAgentServesOverConn: the agent's source behind agentproto.Serve answers a challenge
// with the refusal and stores the record snpd provisions.
func TestAgentServesOverConn(t *testing.T) {
	if hasReportDevice() {
		t.Skip("this machine has an SEV-SNP guest report device")
	}
	dir := t.TempDir()
	src := &quoteSource{stateDir: dir}
	a, b := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agentproto.Serve(ctx, b, src) }()
	defer func() { cancel(); a.Close(); b.Close(); <-done }()
	ectx, ecancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ecancel()
	f, err := agentproto.Exchange(ectx, a, agentproto.TypeReportRequest, 1, &agentproto.ReportRequest{Nonce: []byte("n")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agentproto.DecodeReportResponse(f); err == nil || err.Error() != ErrNoDevice.Error() {
		t.Fatalf("got %v", err)
	}
	rec := []byte(`{"name":"vm1","expected_digest":"ab"}`)
	f, err = agentproto.Exchange(ectx, a, agentproto.TypeProvision, 2, &agentproto.Provision{Record: rec, ChainPEM: "PEM"})
	if err != nil || f.Type != agentproto.TypeAck {
		t.Fatalf("provision: %+v %v", f, err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "record.json"))
	if err != nil || !bytes.Equal(got, rec) {
		t.Fatalf("record.json = %q, %v", got, err)
	}
}

// fakeSnpd is the host end of a serial link: it answers record requests for "vm1" and
// chain requests with the "no certificates cached" refusal, as snpd does without a cache.
func fakeSnpd(t *testing.T, a *agent) {
	t.Helper()
	hostEnd, guestEnd := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	host := agentproto.NewConn(hostEnd, func(_ context.Context, f *agentproto.Frame) (agentproto.Type, any) {
		switch f.Type {
		case agentproto.TypeRecordRequest:
			return agentproto.TypeRecordResponse, &agentproto.RecordResponse{VM: "vm1", Record: []byte(`{"name":"vm1","expected_digest":"c0ffee"}`)}
		case agentproto.TypeChainRequest:
			return agentproto.TypeError, &agentproto.Error{Message: "no certificates cached for this VM"}
		}
		return agentproto.TypeError, &agentproto.Error{Message: "unexpected"}
	})
	guest := agentproto.NewConn(guestEnd, agentproto.AgentHandler(a.src))
	a.host.Store(guest)
	done := make(chan struct{}, 2)
	go func() { _ = host.Run(ctx); done <- struct{}{} }()
	go func() { _ = guest.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); hostEnd.Close(); guestEnd.Close(); <-done; <-done })
}

// TestRecordAndChainAskHostLive: `snp-agent record|chain` go through the running agent's
// control socket to snpd over the serial link and print snpd's answer; a refusal is one
// error line with exit 1; without a running agent the command says so.
func TestRecordAndChainAskHostLive(t *testing.T) {
	dir, err := os.MkdirTemp("", "snp-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := &agent{src: &quoteSource{stateDir: dir}}
	fakeSnpd(t, a)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := a.serveControl(ctx, filepath.Join(dir, controlName)); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, controlName)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode: %v %v", st.Mode(), err)
	}
	var out, errOut bytes.Buffer
	if code := ask(&out, &errOut, dir, 0, []string{"record"}); code != 0 || out.String() != `{"name":"vm1","expected_digest":"c0ffee"}`+"\n" {
		t.Fatalf("record: exit %d, out %q, err %q", code, out.String(), errOut.String())
	}
	out.Reset()
	if code := ask(&out, &errOut, dir, 0, []string{"chain"}); code != 1 || out.Len() != 0 || errOut.String() != "snp-agent: chain: no certificates cached for this VM\n" {
		t.Fatalf("chain: exit %d, out %q, err %q", code, out.String(), errOut.String())
	}
	errOut.Reset()
	if code := ask(&out, &errOut, t.TempDir(), 0, []string{"record"}); code != 1 || !bytes.Contains(errOut.Bytes(), []byte("the agent is not running")) {
		t.Fatalf("without an agent: exit %d, err %q", code, errOut.String())
	}
	if code := ask(&out, &errOut, dir, 0, []string{"records"}); code != 2 {
		t.Fatalf("bad subcommand: exit %d", code)
	}
	// The control socket relays nothing but record and chain requests.
	c, err := net.Dial("unix", filepath.Join(dir, controlName))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ectx, ecancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ecancel()
	f, err := agentproto.Exchange(ectx, c, agentproto.TypeReportRequest, 1, &agentproto.ReportRequest{Nonce: []byte{1}})
	if err != nil || f.Type != agentproto.TypeError {
		t.Fatalf("report request on the control socket: %+v %v", f, err)
	}
	if got := describeRecord(&agentproto.RecordResponse{VM: "vm1", Record: []byte(`{"expected_digest":"ab"}`)}); got != "launch record from snpd: vm vm1, expected measurement ab" {
		t.Fatalf("describeRecord = %q", got)
	}
}
