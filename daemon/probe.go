package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/snpd/snpd/qmp"
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
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("probing qemu: creating socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "qmp-probe")
	theirs := os.NewFile(uintptr(fds[1]), "qmp-probe-qemu")
	defer ours.Close()
	dir, err := os.MkdirTemp("", "snpd-probe-")
	if err != nil {
		theirs.Close()
		return nil, fmt.Errorf("probing qemu: %w", err)
	}
	defer os.RemoveAll(dir)
	args := []string{
		"-machine", "none", "-S", "-no-user-config", "-nodefaults", "-display", "none",
		"-sandbox", SandboxArg,
		"-chardev", "socket,id=qmp,fd=3", "-mon", "chardev=qmp,mode=control",
	}
	inst, _, err := startProcess(qemuPath, args, []*os.File{theirs}, dir+"/"+StderrName)
	theirs.Close()
	if err != nil {
		return nil, fmt.Errorf("probing qemu: %w", err)
	}
	defer inst.Kill()
	c, err := qmp.NewClientFile(ctx, ours, nil)
	if err != nil {
		select {
		case <-inst.Done():
		case <-time.After(time.Second):
		}
		return nil, fmt.Errorf("probing qemu %s: %w%s", qemuPath, err, stderrHint(inst))
	}
	defer c.Close()
	caps := &QEMUCaps{Path: qemuPath}
	if caps.Version, err = c.QueryVersion(ctx); err != nil {
		return nil, fmt.Errorf("probing qemu %s: %w", qemuPath, err)
	}
	props, err := c.QOMListProperties(ctx, "sev-snp-guest")
	var qe *qmp.Error
	switch {
	case errors.As(err, &qe):
		// DeviceNotFound / GenericError: the type does not exist in this binary.
	case err != nil:
		return nil, fmt.Errorf("probing qemu %s: %w", qemuPath, err)
	default:
		caps.SNPProps = make(map[string]string, len(props))
		for _, p := range props {
			caps.SNPProps[p.Name] = p.Type
		}
	}
	_ = c.Quit(ctx)
	return caps, nil
}

func stderrHint(inst *Instance) string {
	select {
	case <-inst.Done():
		if t := inst.Exit().StderrTail; len(t) > 0 {
			return " (qemu: " + t[len(t)-1] + ")"
		}
	default:
	}
	return ""
}

// DetectHost reads the host facts a Spec needs: the C-bit position and reduced physical
// address bits from CPUID 0x8000001F (0 when the CPU does not report SEV), and the
// accelerator (KVM when /dev/kvm opens read-write, else TCG).
func DetectHost() HostFacts {
	var h HostFacts
	h.CBitPos, h.ReducedPhysBits, _, _ = hostSEVBits()
	h.Accel = AccelTCG
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
		f.Close()
		h.Accel = AccelKVM
	}
	return h
}

// KVMRunsModel reports whether QEMU can create a vCPU of the CPU model under KVM with
// every feature of the model (enforce). A nested or limited host may lack features a named
// model needs; platform "none" then falls back to TCG. It starts a paused q35 machine
// without firmware and quits it. The reason is QEMU's first error line when false.
func KVMRunsModel(ctx context.Context, qemuPath, model string) (ok bool, reason string, err error) {
	if !cpuModelRE.MatchString(model) {
		return false, "", fmt.Errorf("cpu model %q: not a plain model name", model)
	}
	if _, has := ctx.Deadline(); !has {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, "", fmt.Errorf("probing kvm cpu model: creating socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "qmp-probe")
	theirs := os.NewFile(uintptr(fds[1]), "qmp-probe-qemu")
	defer ours.Close()
	dir, err := os.MkdirTemp("", "snpd-probe-")
	if err != nil {
		theirs.Close()
		return false, "", fmt.Errorf("probing kvm cpu model: %w", err)
	}
	defer os.RemoveAll(dir)
	args := []string{
		"-machine", "q35", "-accel", "kvm", "-cpu", model + ",enforce", "-m", "size=16M",
		"-S", "-no-user-config", "-nodefaults", "-display", "none", "-sandbox", SandboxArg,
		"-chardev", "socket,id=qmp,fd=3", "-mon", "chardev=qmp,mode=control",
	}
	inst, _, err := startProcess(qemuPath, args, []*os.File{theirs}, dir+"/"+StderrName)
	theirs.Close()
	if err != nil {
		return false, "", fmt.Errorf("probing kvm cpu model: %w", err)
	}
	defer inst.Kill()
	c, cerr := qmp.NewClientFile(ctx, ours, nil)
	if cerr == nil {
		_ = c.Quit(ctx)
		c.Close()
		return true, "", nil
	}
	select {
	case <-inst.Done():
		for _, l := range inst.Exit().StderrTail {
			if strings.Contains(l, "doesn't support") || strings.Contains(l, "error") {
				return false, stripQEMUPrefix(strings.TrimSpace(l)), nil
			}
		}
		return false, "qemu " + inst.Exit().String(), nil
	case <-ctx.Done():
		return false, "", fmt.Errorf("probing kvm cpu model: %w", cerr)
	}
}

// SEVCapabilities runs query-sev-capabilities on a `-machine none -accel kvm` QEMU: the
// host's C-bit position and reduced physical address bits as the SEV firmware reports
// them. On a host without SEV it returns one line saying what to check.
func SEVCapabilities(ctx context.Context, qemuPath string) (*qmp.SevCapability, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("querying SEV capabilities: creating socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "qmp-probe")
	theirs := os.NewFile(uintptr(fds[1]), "qmp-probe-qemu")
	defer ours.Close()
	dir, err := os.MkdirTemp("", "snpd-probe-")
	if err != nil {
		theirs.Close()
		return nil, fmt.Errorf("querying SEV capabilities: %w", err)
	}
	defer os.RemoveAll(dir)
	args := []string{
		"-machine", "none", "-accel", "kvm", "-S", "-no-user-config", "-nodefaults", "-display", "none",
		"-sandbox", SandboxArg, "-chardev", "socket,id=qmp,fd=3", "-mon", "chardev=qmp,mode=control",
	}
	inst, _, err := startProcess(qemuPath, args, []*os.File{theirs}, dir+"/"+StderrName)
	theirs.Close()
	if err != nil {
		return nil, fmt.Errorf("querying SEV capabilities: %w", err)
	}
	defer inst.Kill()
	c, err := qmp.NewClientFile(ctx, ours, nil)
	if err != nil {
		select {
		case <-inst.Done():
			return nil, fmt.Errorf("querying SEV capabilities: %w", qemuExitError(inst.Exit()))
		case <-time.After(time.Second):
		}
		return nil, fmt.Errorf("querying SEV capabilities: %w", err)
	}
	defer c.Close()
	caps, err := c.QuerySEVCapabilities(ctx)
	var qe *qmp.Error
	if errors.As(err, &qe) {
		return nil, fmt.Errorf("SEV-SNP is not available on this host (query-sev-capabilities: %s): %s", qe.Desc, snpHostHint)
	}
	if err != nil {
		return nil, fmt.Errorf("querying SEV capabilities: %w", err)
	}
	_ = c.Quit(ctx)
	return &caps, nil
}
