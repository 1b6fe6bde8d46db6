package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/snpd/snpd/systemd/systemdtest"
)

// TestMain lets tests re-execute the test binary as snpd itself, or as a client hogging
// its connections (hogMain).
func TestMain(m *testing.M) {
	if cfg := os.Getenv("SNPD_TEST_DAEMON"); cfg != "" {
		daemonMain(cfg)
		return
	}
	if socket := os.Getenv("SNPD_TEST_HOG"); socket != "" {
		hogMain(socket)
		return
	}
	code := m.Run()
	systemdtest.Shutdown() // the systemd container, if a test booted it
	if worldBin != "" {
		os.RemoveAll(filepath.Dir(worldBin))
	}
	os.Exit(code)
}
