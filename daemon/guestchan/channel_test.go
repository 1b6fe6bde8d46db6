package guestchan

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/snp/agentproto"
	"github.com/snpd/snpd/snp/snptest"
)

// bootAgentGuest boots Debian's cloud kernel with the agent initramfs under plain QEMU
// (platform none, TCG) with the agent's virtio-serial port
// on sock. It returns the console log path.
func bootAgentGuest(t *testing.T, sock string) string {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed; run scripts/install-deps.sh")
	}
	initrd := snptest.BuildAgentInitrd(t)
	dir := filepath.Dir(sock)
	console := filepath.Join(dir, "console.log")
	// TCG, not KVM: on this nested-KVM host Linux guests hang early under KVM with the
	// default CPU model (and -cpu host aborts on MSR 0x10a); TCG boots in seconds and the
	// guest channel does not depend on the accelerator.
	accel := "tcg"
	args := []string{
		"-machine", "q35", "-accel", accel, "-m", "512", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + console,
		"-kernel", snptest.GuestKernel(t),
		"-initrd", initrd,
		"-append", "console=ttyS0 panic=-1",
		"-device", `{"driver":"virtio-serial-pci","id":"virtio-serial0"}`,
		"-chardev", "socket,id=agent0,path=" + sock + ",server=on,wait=off",
		"-device", `{"driver":"virtserialport","bus":"virtio-serial0.0","chardev":"agent0","name":"org.snpd.agent.0","id":"agent0"}`,
	}
	t.Logf("argv: %s %s", qemu, strings.Join(args, " "))
	cmd := exec.Command(qemu, args...)
	stderr, _ := os.Create(filepath.Join(dir, "qemu.stderr"))
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		stderr.Close()
		if t.Failed() {
			b, _ := os.ReadFile(console)
			e, _ := os.ReadFile(filepath.Join(dir, "qemu.stderr"))
			t.Logf("guest console:\n%s\nqemu stderr:\n%s", b, e)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("qemu did not create the agent socket")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return console
}

// TestGuestChannelRealGuest boots a real Linux guest whose init is snp-agent, reaches it
// over the virtio-serial port, and checks that a challenge on this host (no SEV-SNP) comes
// back promptly with the agent's clean refusal instead of hanging or passing.
func TestGuestChannelRealGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest; skipped with -short")
	}
	dir, err := os.MkdirTemp("", "snpd-gc-") // short path: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	bootAgentGuest(t, sock)
	g := GuestChannel{SerialSocket: sock, Timeout: 3 * time.Second}

	// Wait for the agent (kernel boot + module loading); TCG can take a while.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Second)
	defer cancel()
	for {
		err := g.Ping(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("agent never answered: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	nonce, err := NewNonce(32)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := g.Challenge(context.Background(), nonce, nil)
	if resp != nil || err == nil {
		t.Fatalf("challenge on a host without SEV-SNP returned a report (%v)", err)
	}
	var re *agentproto.RemoteError
	if !errors.As(err, &re) || re.Message != "guest has no SEV-SNP report device" {
		t.Fatalf("got %v, want the agent's \"guest has no SEV-SNP report device\"", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("refusal took %v", d)
	}
	t.Logf("agent answered: %v (%v)", err, time.Since(start))
}

// TestGuestChannelNoAgent: a socket where nothing answers times out instead of hanging.
func TestGuestChannelNoAgent(t *testing.T) {
	dir, err := os.MkdirTemp("", "snpd-gc-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // hold it open, never answer
		}
	}()
	g := GuestChannel{SerialSocket: sock, Timeout: 300 * time.Millisecond}
	_, err = g.Challenge(context.Background(), []byte("n"), nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	if _, err := (GuestChannel{}).Challenge(context.Background(), []byte("n"), nil); !errors.Is(err, ErrNoGuestChannel) {
		t.Fatalf("got %v, want ErrNoGuestChannel", err)
	}
	if _, err := (GuestChannel{VsockCID: 2, VsockPort: 5000}).Challenge(context.Background(), []byte("n"), nil); err == nil || !strings.Contains(err.Error(), "refusing vsock CID 2") {
		t.Fatalf("got %v, want CID 2 refused", err)
	}
}
