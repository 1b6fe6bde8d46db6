package launch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
)

// mkfifo makes a FIFO at path that nothing ever writes to: opening it for reading
// without O_NONBLOCK blocks forever.
func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
}

// prompt runs f and fails the test if it takes longer than 5 s (it would block forever
// on a FIFO opened the blocking way).
func prompt(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatalf("%s blocked on a FIFO", what)
		return nil
	}
}

// TestBootFileFIFORefusedPromptly: every path that opens a file a definition names —
// sealing firmware, kernel and initrd (plain and through the seal cache), the firmware
// facts of the policy check and the libvirt hook, ID and author keys — refuses a FIFO at
// once with one line naming the file, as a definition error (api.ErrInvalid), also when
// the FIFO replaces a regular file between the stat and the open.
func TestBootFileFIFORefusedPromptly(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "boot.fifo")
	mkfifo(t, fifo)
	check := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: a FIFO was accepted", what)
		}
		if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), fifo) ||
			!strings.Contains(err.Error(), "named pipe") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v; want one line naming %s as a named pipe, kind invalid", what, err, fifo)
		}
	}
	for _, name := range []string{"firmware", "kernel", "initrd"} {
		check("SealFile "+name, prompt(t, "SealFile", func() error { _, err := SealFile(name, fifo, 1<<20); return err }))
		var c sealCache
		check("Seal "+name, prompt(t, "Seal", func() error { _, err := c.Seal(name, fifo, 1<<20); return err }))
	}
	var f config.Facts
	check("firmware facts", prompt(t, "firmwareFileFacts", func() error { return firmwareFileFacts(fifo, &f) }))
	check("key", prompt(t, "readKey", func() error { _, err := readKey(fifo); return err }))
	vm := &config.VM{Firmware: "/usr/share/ovmf/OVMF.fd", Kernel: fifo, SNP: config.SNP{IDKeyFile: fifo}}
	err := CheckBootFiles(vm)
	if err == nil || !strings.Contains(err.Error(), "named pipe") {
		t.Fatalf("CheckBootFiles: %v", err)
	}
	if strings.Count(err.Error(), fifo) != 2 {
		t.Errorf("CheckBootFiles names %d of the 2 FIFOs: %v", strings.Count(err.Error(), fifo), err)
	}

	// The race: a regular file at stat time, a FIFO by the time it is opened.
	swapped := filepath.Join(dir, "swapped")
	if err := os.WriteFile(swapped, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	testHookBeforeOpen = func(p string) {
		if p == swapped {
			os.Remove(p)
			mkfifo(t, p)
		}
	}
	defer func() { testHookBeforeOpen = nil }()
	err = prompt(t, "SealFile after a swap", func() error { _, err := SealFile("firmware", swapped, 1<<20); return err })
	if err == nil || !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), swapped) {
		t.Fatalf("a FIFO swapped in after the stat: %v", err)
	}
}

// TestVMFactsFIFOFirmware: the libvirt hook's facts of a domain whose firmware is a
// FIFO come back at once with the firmware unknown (so the policy refuses it).
func TestVMFactsFIFOFirmware(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "ovmf.fd")
	mkfifo(t, fifo)
	var f config.Facts
	err := prompt(t, "VMFacts", func() error {
		var err error
		f, err = VMFacts(context.Background(), &config.VM{Firmware: fifo}, "none", "")
		return err
	})
	if err == nil || !strings.Contains(err.Error(), fifo) || f.FirmwareSHA256 != nil {
		t.Fatalf("VMFacts: %v, firmware digest %x", err, f.FirmwareSHA256)
	}
}
