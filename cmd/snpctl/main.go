// Command snpctl is snpd's operator CLI: it measures firmware, builds ID blocks, drives
// VMs over snpd's unix socket, checks policy, verifies attestation and serves as the
// libvirt hook.
//
// Each subcommand lives in its own file and registers itself with addCommand in init.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// version is snpctl's version, set by make build (-ldflags -X main.version=...).
var version = "dev"

var subcommands []func() *cobra.Command

// addCommand registers a constructor for a top-level subcommand.
func addCommand(f func() *cobra.Command) { subcommands = append(subcommands, f) }

// exitError carries an exit status chosen by a subcommand; its message (if any) has
// already been printed.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "snpctl",
		Short: "Operate snpd: measure, launch and attest AMD SEV-SNP guests",
		Long: `snpctl is the operator CLI of snpd, the host daemon that launches AMD SEV-SNP guests
under QEMU with a pinned, measured configuration and serves their attestation.

vm, status, attest, verify, reference, certs and libvirt-hook talk to snpd over its unix
socket: --socket, else $SNPD_SOCKET, else /run/snpd/snpd.sock. measure, id-block and
policy check work offline, without snpd. A copy of snpctl installed as
/etc/libvirt/hooks/qemu.d/snpd (make install-hook) is libvirt's qemu hook: invoked by
that name it runs libvirt-hook (see snpctl libvirt-hook --help).

Exit status 0 on success. On failure one line "Error: ..." on stderr and exit status 1;
attest, verify and policy check also exit 1 when a check fails.`,
		Example: `  # Define the example VM, start it, and read its launch record
  snpctl vm define config/examples/vm.toml
  snpctl vm start example
  snpctl vm show example

  # A snpd started by hand with its own runtime directory
  snpctl --socket /tmp/snpd-run/snpd.sock status

  # Offline: the launch digest of a firmware, as sev-snp-measure computes it
  snpctl measure --mode snp --vcpus 1 --vcpu-type EPYC-v4 --ovmf /usr/share/ovmf/OVMF.fd`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.SetVersionTemplate("snpctl {{.Version}}\n")
	root.PersistentFlags().String("socket", "", "snpd API socket (default $SNPD_SOCKET, then /run/snpd/snpd.sock)")
	root.PersistentFlags().Bool("json", false, "print JSON instead of human-readable output (every subcommand)")
	for _, f := range subcommands {
		root.AddCommand(f())
	}
	return root
}

func main() {
	os.Exit(run(commandArgs(os.Args)))
}

// run executes snpctl with args and returns the process exit status. Errors are printed
// as one line on stderr.
func run(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintf(os.Stderr, "Error: %s\n", errorLine(err))
	return 1
}

// errorLine is err's message on one line: errors joined with errors.Join (a launch
// spec's or a definition's every problem) are separated by "; " instead of newlines.
func errorLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}

// table aligns columns like tabwriter and writes the result to w in one write at Flush:
// tabwriter alone writes cell by cell, a system call each, and each write to a pipe can
// wake the reader (a script reading `snpctl vm list`) once per cell.
type table struct {
	*tabwriter.Writer
	bw *bufio.Writer
}

// newTable returns a table on w with padding spaces between columns.
func newTable(w io.Writer, padding int) table {
	bw := bufio.NewWriterSize(w, 16<<10)
	return table{tabwriter.NewWriter(bw, 0, 4, padding, ' ', 0), bw}
}

// Flush aligns the buffered rows and writes them to the underlying writer.
func (t table) Flush() error {
	if err := t.Writer.Flush(); err != nil {
		return err
	}
	return t.bw.Flush()
}
