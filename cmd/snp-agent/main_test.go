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
// with the refusal and stores a provisioned record that `snp-agent record` prints.
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
	if code := show(dir, "chain", 1); code != 0 {
		t.Fatalf("show chain: exit %d", code)
	}
	if code := show(t.TempDir(), "record", 1); code != 1 {
		t.Fatalf("show without a record: exit %d, want 1", code)
	}
}
