package launch

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/snp/snptest"
)

// TestLaunchRecordsTheChipsProductLine: an SEV-SNP launch records the product line the
// host's CPUID names (a Genoa or Turin host gets Genoa or Turin, whatever the guest's vCPU
// model), refuses to start when the host cannot name one, and a launch on platform none
// records none. The host's CPUID and /dev/kvm are replaced by Launcher.detect.
func TestLaunchRecordsTheChipsProductLine(t *testing.T) {
	dir := t.TempDir()
	fw := dir + "/amdsev.fd"
	if err := os.WriteFile(fw, snptest.AmdSevOVMF(1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	snpHost := func(line string, lineErr error) func() (HostFacts, error) {
		return func() (HostFacts, error) {
			return HostFacts{CBitPos: 51, ReducedPhysBits: 1, Accel: AccelKVM, ProductLine: line}, lineErr
		}
	}
	for _, c := range []struct {
		name, line, model string
		platform          Platform
		want              string
	}{
		{"genoa host, EPYC-v4 guest", "Genoa", "EPYC-v4", PlatformSEVSNP, "Genoa"},
		{"turin host, EPYC-Milan guest", "Turin", "EPYC-Milan", PlatformSEVSNP, "Turin"},
		{"milan host, EPYC-Genoa guest", "Milan", "EPYC-Genoa", PlatformSEVSNP, "Milan"},
		{"platform none", "Genoa", "EPYC-Genoa", PlatformNone, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := &Launcher{QEMU: ltQEMU, Platform: c.platform, RuntimeDir: dir, detect: snpHost(c.line, nil)}
			if c.platform == PlatformNone {
				// No KVM probe on platform none: TCG.
				l.detect = func() (HostFacts, error) { return HostFacts{Accel: AccelTCG, ProductLine: c.line}, nil }
			}
			spec, rec, err := l.Prepare(t.Context(), &config.VM{Name: "pl", Firmware: fw, CPUModel: c.model})
			if err != nil {
				t.Fatal(err)
			}
			spec.Close()
			if rec.ProductLine != c.want {
				t.Fatalf("record's product line %q, want %q", rec.ProductLine, c.want)
			}
		})
	}

	l := &Launcher{QEMU: ltQEMU, Platform: PlatformSEVSNP, RuntimeDir: dir,
		detect: snpHost("", errors.New("CPUID family 0x17 model 0x31 is no known SEV-SNP product line (Milan, Genoa, Turin)"))}
	_, _, err := l.Prepare(t.Context(), &config.VM{Name: "pl", Firmware: fw, CPUModel: "EPYC-v4"})
	if err == nil || !strings.Contains(err.Error(), "determining the host chip's product line: CPUID family 0x17") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("a host without a product line: %v", err)
	}
}

// TestHostProductLine: on this host the product line is either named or refused with a
// reason, and DetectHost agrees with it.
func TestHostProductLine(t *testing.T) {
	line, err := HostProductLine()
	if (line == "") == (err == nil) {
		t.Fatalf("HostProductLine = %q, %v: want a line or a reason", line, err)
	}
	if got := DetectHost().ProductLine; got != line {
		t.Fatalf("DetectHost's product line %q, HostProductLine's %q", got, line)
	}
	t.Logf("this host: %q %v", line, err)
}
