package main

import (
	"os"
	"path/filepath"
)

// snpctl is built twice from this package (make build):
//
//   - snpctl-full (the default build, what `go build ./cmd/snpctl` makes): every command.
//   - snpctl (-tags snpctl_lean): the commands that talk to snpd's API (vm, status,
//     attest, verify, reference, certs) and measure (package snp/launch, standard
//     library only). The others — id-block, policy and libvirt-hook — need package snp
//     (go-sev-guest, protobuf), config (go-toml, libvirtxml) or daemon, whose package
//     initialisation runs on every call whatever the command: about a millisecond of CPU
//     and a dozen more context switches per `snpctl vm list`. The lean build runs them by
//     exec'ing snpctl-full from its own directory (lean.go).
//
// The full-only commands' names and summaries are declared here, for both builds, so
// that the lean root help lists exactly what the full one does.
const (
	idBlockUse   = "id-block --measurement B64 (--idkey PEM [--authorkey PEM] | --keyless [--authorkey PEM])"
	idBlockShort = "Build an SEV-SNP ID block and ID auth so the AMD-SP refuses any launch whose digest differs"

	policyUse   = "policy"
	policyShort = "Check VM definitions and libvirt domains against the host policy"

	libvirtHookUse   = "libvirt-hook DOMAIN OPERATION SUB-OPERATION [EXTRA]"
	libvirtHookShort = "libvirt qemu hook: refuse domains that break the host policy (install as /etc/libvirt/hooks/qemu.d/snpd)"
)

// fullBinary is the file name of the full build, which the lean build looks for in its
// own directory.
const fullBinary = "snpctl-full"

// hookArgv0 is the name the hook is installed under (/etc/libvirt/hooks/qemu.d/snpd):
// invoked by that name, snpctl acts as `snpctl libvirt-hook -- ARGS...`.
const hookArgv0 = "snpd"

func init() {
	if filepath.Base(os.Args[0]) == hookArgv0 && len(os.Args) > 1 {
		// "--" keeps a domain name starting with "-" from being read as a flag.
		os.Args = append([]string{os.Args[0], "libvirt-hook", "--"}, os.Args[1:]...)
	}
}
