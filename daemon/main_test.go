package daemon

import (
	"os"
	"testing"
)

// TestMain lets tests re-execute the test binary as a helper process (a store writer to
// be killed mid-write, or snpd itself).
func TestMain(m *testing.M) {
	if dir := os.Getenv("SNPD_TEST_STORE_WRITER"); dir != "" {
		storeWriter(dir)
		return
	}
	if cfg := os.Getenv("SNPD_TEST_DAEMON"); cfg != "" {
		daemonMain(cfg)
		return
	}
	os.Exit(m.Run())
}
