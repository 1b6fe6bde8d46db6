package launch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/snpd/snpd/qmp"
	"github.com/snpd/snpd/snp"
	"golang.org/x/sys/unix"
)

// QEMUCaps is what ProbeQEMU learned about a QEMU binary.
type QEMUCaps struct {
	// Path is the binary probed.
	Path string
	// Version is query-version's reply.
	Version qmp.VersionInfo
	// SNPProps maps each sev-snp-guest property name to its QOM type ("uint64", "bool",
	// "string", ...); nil when the binary has no sev-snp-guest type.
	SNPProps map[string]string
}

// requiredSNPProps are the sev-snp-guest properties BuildArgv may emit or the
// verification reads, with the QOM type each must have.
var requiredSNPProps = map[string]string{
	"policy":                    "uint64",
	"cbitpos":                   "uint32",
	"reduced-phys-bits":         "uint32",
	"guest-visible-workarounds": "string",
	"id-block":                  "string",
	"id-auth":                   "string",
	"host-data":                 "string",
	"author-key-enabled":        "bool",
	"vcek-disabled":             "bool",
	"kernel-hashes":             "bool",
}

// CheckSNP returns nil when the binary can launch SEV-SNP guests as snpd builds them, or
// one error naming every missing or mistyped sev-snp-guest property.
func (c *QEMUCaps) CheckSNP() error {
	if c.SNPProps == nil {
		return fmt.Errorf("QEMU %s at %s has no sev-snp-guest object (SEV-SNP needs QEMU >= 9.1)", c.Version, c.Path)
	}
	var bad []string
	names := make([]string, 0, len(requiredSNPProps))
	for n := range requiredSNPProps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		want := requiredSNPProps[n]
		got, ok := c.SNPProps[n]
		switch {
		case !ok:
			bad = append(bad, n+" missing")
		case got != want:
			bad = append(bad, fmt.Sprintf("%s is %s, want %s", n, got, want))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("QEMU %s at %s: sev-snp-guest lacks what snpd needs: %s", c.Version, c.Path, strings.Join(bad, "; "))
	}
	return nil
}

// ProbeQEMU starts qemuPath with `-machine none` (no guest, sandboxed, paused), asks for
// its version and the sev-snp-guest properties over QMP on a socketpair, and quits it.
// ctx bounds the whole probe (a 10 s limit applies when ctx has no deadline).
func ProbeQEMU(ctx context.Context, qemuPath string) (*QEMUCaps, error) {
	caps := &QEMUCaps{Path: qemuPath}
	err := withProbeQEMU(ctx, qemuPath, []string{"-machine", "none"}, func(ctx context.Context, c *qmp.Client) error {
		var err error
		if caps.Version, err = c.QueryVersion(ctx); err != nil {
			return err
		}
		props, err := c.QOMListProperties(ctx, "sev-snp-guest")
		var qe *qmp.Error
		switch {
		case errors.As(err, &qe):
			// DeviceNotFound / GenericError: the type does not exist in this binary.
		case err != nil:
			return err
		default:
			caps.SNPProps = make(map[string]string, len(props))
			for _, p := range props {
				caps.SNPProps[p.Name] = p.Type
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("probing qemu %s: %w", qemuPath, err)
	}
	return caps, nil
}

// probeExitError is returned by withProbeQEMU when QEMU exits before answering on QMP;
// err is QEMU's own message (see qemuExitError), exit how it ended.
type probeExitError struct {
	err  error
	exit ExitInfo
}

func (e *probeExitError) Error() string { return e.err.Error() }
func (e *probeExitError) Unwrap() error { return e.err }

// withProbeQEMU starts a throwaway, sandboxed, paused QEMU with args (plus -S,
// -nodefaults, -no-user-config, -display none and a QMP monitor on a socketpair), runs
// fn with a QMP client to it, then quits and kills it. ctx bounds everything (10 s when
// it has no deadline). A QEMU that exits first gives a *probeExitError.
func withProbeQEMU(ctx context.Context, qemuPath string, args []string, fn func(ctx context.Context, c *qmp.Client) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("creating socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "qmp-probe")
	theirs := os.NewFile(uintptr(fds[1]), "qmp-probe-qemu")
	defer ours.Close()
	dir, err := os.MkdirTemp("", "snpd-probe-")
	if err != nil {
		theirs.Close()
		return fmt.Errorf("creating probe directory: %w", err)
	}
	defer os.RemoveAll(dir)
	full := append([]string{"-S", "-no-user-config", "-nodefaults", "-display", "none", "-sandbox", SandboxArg,
		"-chardev", "socket,id=qmp,fd=3", "-mon", "chardev=qmp,mode=control"}, args...)
	// A probe must not outlive snpd (a guest must): it dies with the thread that started
	// it (Pdeathsig), which stays locked to this goroutine, and so alive, until the probe
	// was killed below.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	inst, _, err := startProcess(qemuPath, full, []*os.File{theirs}, filepath.Join(dir, StderrName), &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL})
	theirs.Close()
	if err != nil {
		return err
	}
	defer inst.Kill()
	c, err := qmp.NewClientFile(ctx, ours, nil)
	if err != nil {
		select {
		case <-inst.Done():
			return &probeExitError{qemuExitError(inst.Exit()), inst.Exit()}
		case <-time.After(time.Second):
		}
		return fmt.Errorf("connecting to QEMU's monitor: %w", err)
	}
	defer c.Close()
	if err := fn(ctx, c); err != nil {
		return err
	}
	_ = c.Quit(ctx)
	return nil
}

// DetectHost reads the host facts a Spec needs: the C-bit position and reduced physical
// address bits from CPUID 0x8000001F (0 when the CPU does not report SEV), the chip's
// SEV-SNP product line from CPUID 1 (empty when the CPU does not report SEV-SNP or its
// family and model name no known line; HostProductLine says why), and the accelerator
// (KVM when /dev/kvm opens read-write, else TCG).
func DetectHost() HostFacts {
	var h HostFacts
	var snpOK bool
	h.CBitPos, h.ReducedPhysBits, snpOK, _ = hostSEVBits()
	if snpOK {
		if l, err := snp.ProductLineFromCPUID(hostCPUID1EAX()); err == nil {
			h.ProductLine = l
		}
	}
	h.Accel = AccelTCG
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
		f.Close()
		h.Accel = AccelKVM
	}
	return h
}

// HostProductLine names this host's SEV-SNP product line from its CPUID, or says why it
// cannot: the CPU does not report SEV-SNP (CPUID 0x8000001F EAX bit 4), or its family and
// model (CPUID 1) are no known line. The guest's vCPU model never enters into it.
func HostProductLine() (string, error) {
	if _, _, snpOK, _ := hostSEVBits(); !snpOK {
		return "", errors.New("the CPU does not report SEV-SNP (CPUID 0x8000001F EAX bit 4)")
	}
	return snp.ProductLineFromCPUID(hostCPUID1EAX())
}

// KVMRunsModel reports whether QEMU can create a vCPU of the CPU model under KVM with
// every feature of the model (enforce). A nested or limited host may lack features a named
// model needs; platform "none" then falls back to TCG. It starts a paused q35 machine
// without firmware and quits it. The reason is QEMU's first error line when false.
func KVMRunsModel(ctx context.Context, qemuPath, model string) (ok bool, reason string, err error) {
	if !cpuModelRE().MatchString(model) {
		return false, "", fmt.Errorf("cpu model %q: not a plain model name", model)
	}
	args := []string{"-machine", "q35", "-accel", "kvm", "-cpu", model + ",enforce", "-m", "size=16M"}
	err = withProbeQEMU(ctx, qemuPath, args, func(context.Context, *qmp.Client) error { return nil })
	var pe *probeExitError
	switch {
	case errors.As(err, &pe):
		// QEMU prints one warning per missing feature, then the error.
		for _, l := range pe.exit.StderrTail {
			if strings.Contains(l, "doesn't support") {
				return false, stripQEMUPrefix(strings.TrimSpace(l)), nil
			}
		}
		return false, pe.Error(), nil
	case err != nil:
		return false, "", fmt.Errorf("probing kvm cpu model %s: %w", model, err)
	}
	return true, "", nil
}

// SEVCapabilities runs query-sev-capabilities on a `-machine none -accel kvm` QEMU: the
// host's C-bit position and reduced physical address bits as the SEV firmware reports
// them. On a host without SEV it returns one line saying what to check.
func SEVCapabilities(ctx context.Context, qemuPath string) (*qmp.SevCapability, error) {
	var caps qmp.SevCapability
	err := withProbeQEMU(ctx, qemuPath, []string{"-machine", "none", "-accel", "kvm"}, func(ctx context.Context, c *qmp.Client) error {
		var err error
		caps, err = c.QuerySEVCapabilities(ctx)
		var qe *qmp.Error
		if errors.As(err, &qe) {
			return fmt.Errorf("SEV-SNP is not available on this host (query-sev-capabilities: %s): %s", qe.Desc, SNPHostHint)
		}
		return err
	})
	var pe *probeExitError
	if errors.As(err, &pe) {
		// QEMU could not even start on KVM (no /dev/kvm, no access to it).
		if line, ok := kvmFailure(pe.exit); ok {
			err = snpUnavailable(line)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("querying SEV capabilities: %w", err)
	}
	return &caps, nil
}
