package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
)

// pipeWriter writes data to a new pipe, as libvirt writes the domain XML to the hook's
// stdin, and closes its end afterwards unless keepOpen. The returned channel gets the
// write's error: EPIPE when the hook exited (closed its end) without reading it all.
func pipeWriter(t *testing.T, data []byte, keepOpen bool) (*os.File, <-chan error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.Write(data)
		if !keepOpen {
			w.Close()
		} else {
			t.Cleanup(func() { w.Close() })
		}
		done <- err
	}()
	return r, done
}

// TestHookDrainsLargeStdin: XML over the 1 MiB limit on stdin is read to its end (libvirt
// gets no broken pipe) and the domain refused with its size named; the other
// operations drain it too.
func TestHookDrainsLargeStdin(t *testing.T) {
	big := []byte(hookDomainXML + "<!--" + strings.Repeat("x", 3<<20) + "-->")
	for _, op := range [][2]string{{"prepare", "begin"}, {"release", "end"}, {"started", "begin"}, {"stopped", "end"}} {
		t.Run(op[0]+" "+op[1], func(t *testing.T) {
			hs := newHookServer(t, http.StatusOK, api.LibvirtDomainResponse{Name: "web1"})
			r, wrote := pipeWriter(t, big, false)
			var stderr bytes.Buffer
			h := &libvirtHook{socket: hs.sock, stderr: &stderr}
			err := h.run(context.Background(), "web1", op[0], op[1], r)
			r.Close() // as the hook process exiting would
			if werr := <-wrote; werr != nil {
				t.Errorf("libvirt's write of the XML failed: %v", werr)
			}
			if op[0] == "prepare" {
				var ee exitError
				if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(stderr.String(), "more than the 1048576 allowed") {
					t.Errorf("oversized XML: %v, stderr %q", err, stderr.String())
				}
				if len(hs.requests()) != 0 {
					t.Errorf("oversized XML was sent to snpd")
				}
			}
		})
	}
	if config.MaxLibvirtXMLSize != 1<<20 {
		t.Fatalf("MaxLibvirtXMLSize is %d; the messages above assume 1 MiB", config.MaxLibvirtXMLSize)
	}
}

// TestHookStdinNeverCloses: a stdin that never closes does not hold the hook: it reads
// for hookStdinTimeout, then refuses the domain at prepare and gives up draining at the
// other operations.
func TestHookStdinNeverCloses(t *testing.T) {
	defer func(d time.Duration) { hookStdinTimeout = d }(hookStdinTimeout)
	hookStdinTimeout = 300 * time.Millisecond
	for _, op := range [][2]string{{"prepare", "begin"}, {"release", "end"}, {"started", "begin"}} {
		hs := newHookServer(t, http.StatusOK, api.LibvirtDomainResponse{Name: "web1"})
		r, _ := pipeWriter(t, []byte(hookDomainXML), true)
		var stderr bytes.Buffer
		h := &libvirtHook{socket: hs.sock, stderr: &stderr}
		began := time.Now()
		err := h.run(context.Background(), "web1", op[0], op[1], r)
		if took := time.Since(began); took > 3*time.Second {
			t.Errorf("%s %s: took %s", op[0], op[1], took)
		}
		if !strings.Contains(stderr.String(), "stdin did not end within 300ms") {
			t.Errorf("%s %s: stderr %q", op[0], op[1], stderr.String())
		}
		if op[0] == "prepare" && err == nil {
			t.Errorf("prepare with an unended stdin was approved")
		}
	}
}

// TestHookProcessStdinNeverCloses runs the built snpctl as libvirt runs the hook, with a
// stdin that stays open: it exits 1 within the default bound instead of hanging.
func TestHookProcessStdinNeverCloses(t *testing.T) {
	bin := snpctlBuild(t)
	hs := newHookServer(t, http.StatusOK, api.LibvirtDomainResponse{Name: "web1"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--socket", hs.sock, "libvirt-hook", "web1", "prepare", "begin", "-")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if _, err := io.WriteString(stdin, hookDomainXML); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	err = cmd.Wait()
	took := time.Since(began)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || ctx.Err() != nil {
		t.Fatalf("hook: %v after %s (stderr %q)", err, took, stderr.String())
	}
	if took > hookStdinTimeout+5*time.Second || !strings.Contains(stderr.String(), "stdin did not end within") {
		t.Errorf("exit after %s, stderr %q", took, stderr.String())
	}
}
