package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
)

// expect400 checks err is the API's 400 (kind invalid) naming path, on one line.
func expect400(t *testing.T, what string, err error, path string) {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("%s: %v, want a 400 (invalid)", what, err)
	}
	if !strings.Contains(ae.Message, path) || !strings.Contains(ae.Message, "named pipe") {
		t.Errorf("%s: %q does not name %s as a named pipe", what, ae.Message, path)
	}
}

// TestFIFOBootFilesRefused runs the real snpd with a FIFO (that nothing writes to) as
// firmware, kernel and initrd in turn. Defining such a VM is refused with 400 naming the
// file. A FIFO swapped in after the definition makes the start fail at once with 400
// naming the file (it used to hang the start forever, while kill, stop and undefine
// answered "still starting"), and the VM can then be killed (409: not running), stopped
// (409) and undefined.
func TestFIFOBootFilesRefused(t *testing.T) {
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	c := d.Client
	fw, err := os.ReadFile(testFirmware)
	if err != nil {
		t.Skipf("%s is missing (run scripts/install-deps.sh): %v", testFirmware, err)
	}
	for _, which := range []string{"firmware", "kernel", "initrd"} {
		t.Run(which, func(t *testing.T) {
			dir := filepath.Join(e.Dir, which)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			files := map[string]string{}
			for _, f := range []string{"firmware", "kernel", "initrd"} {
				files[f] = filepath.Join(dir, f)
			}
			def := func(name string) string {
				return fmt.Sprintf("name = %q\nvcpus = 1\nmemory_mib = 64\nfirmware = %q\nkernel = %q\ninitrd = %q\n",
					name, files["firmware"], files["kernel"], files["initrd"])
			}
			write := func() {
				for f, p := range files {
					b := []byte("not a real " + f)
					if f == "firmware" {
						b = fw
					}
					os.Remove(p) // a FIFO left by the step before
					if err := os.WriteFile(p, b, 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			toFIFO := func() string {
				p := files[which]
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				if err := syscall.Mkfifo(p, 0o644); err != nil {
					t.Fatal(err)
				}
				return p
			}

			// At define.
			write()
			fifo := toFIFO()
			_, err := c.Define(ctxT(t, 10*time.Second), api.DefineRequest{File: "f.toml", TOML: def("fifo-def-" + which)})
			expect400(t, "define", err, fifo)

			// At start: defined while regular, a FIFO by the time it starts.
			write()
			name := "fifo-start-" + which
			if _, err := c.Define(ctxT(t, 10*time.Second), api.DefineRequest{File: "f.toml", TOML: def(name)}); err != nil {
				t.Fatal(err)
			}
			fifo = toFIFO()
			began := time.Now()
			_, err = c.Start(ctxT(t, 30*time.Second), name)
			took := time.Since(began)
			expect400(t, "start", err, fifo)
			if took > 5*time.Second {
				t.Errorf("the refused start took %s", took)
			}
			ctx := ctxT(t, 5*time.Second)
			if _, err := c.Kill(ctx, name); !errors.Is(err, api.ErrConflict) {
				t.Errorf("kill after the refused start: %v, want conflict (not running)", err)
			}
			if _, err := c.Stop(ctx, name, api.StopRequest{}); !errors.Is(err, api.ErrConflict) {
				t.Errorf("stop after the refused start: %v, want conflict (not running)", err)
			}
			if err := c.Undefine(ctx, name); err != nil {
				t.Errorf("undefine after the refused start: %v", err)
			}
		})
	}
}
