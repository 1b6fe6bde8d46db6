package daemon

import (
	"os"
	"testing"
)

// TestMain lets tests re-execute the test binary as snpd itself.
func TestMain(m *testing.M) {
	if cfg := os.Getenv("SNPD_TEST_DAEMON"); cfg != "" {
		daemonMain(cfg)
		return
	}
	os.Exit(m.Run())
}
