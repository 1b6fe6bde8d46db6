//go:build snpctl_lean

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// The lean build (see commands.go) stands in for the full-only commands with commands of
// the same name and summary that exec snpctl-full, so `snpctl policy check ...`, `snpctl
// id-block --help`, `snpctl help policy` and shell completion of their flags behave as
// in the full build.
func init() {
	fullOnly := []struct{ use, short string }{
		{idBlockUse, idBlockShort},
		{policyUse, policyShort},
		{libvirtHookUse, libvirtHookShort},
	}
	for _, c := range fullOnly {
		addCommand(func() *cobra.Command { return fullOnlyCmd(c.use, c.short) })
	}
	// Cobra's hidden completion requests (`snpctl __complete id-block --id`, what the
	// completion scripts run) for a full-only command go to snpctl-full, which knows its
	// flags. The stand-ins parse no flags, so they could not answer.
	if len(os.Args) > 2 && (os.Args[1] == cobra.ShellCompRequestCmd || os.Args[1] == cobra.ShellCompNoDescRequestCmd) {
		for _, c := range fullOnly {
			if name, _, _ := strings.Cut(c.use, " "); os.Args[2] == name {
				execFullOrExit(name)
			}
		}
	}
}

// fullOnlyCmd is the lean build's stand-in for a full-only command: it parses nothing
// and hands the whole command line to snpctl-full.
func fullOnlyCmd(use, short string) *cobra.Command {
	c := &cobra.Command{
		Use:                use,
		Short:              short,
		DisableFlagParsing: true,
		RunE:               func(c *cobra.Command, _ []string) error { return execFull(c.Name()) },
	}
	c.SetHelpFunc(func(c *cobra.Command, _ []string) { execFullOrExit(c.Name()) })
	return c
}

// execFullOrExit is execFull where no error can be returned: it prints the error as
// run does and exits 1.
func execFullOrExit(name string) {
	err := execFull(name)
	fmt.Fprintf(os.Stderr, "Error: %s\n", errorLine(err))
	os.Exit(1)
}

// execFull replaces this process with snpctl-full from this executable's directory,
// with the same arguments and environment; it returns only if that fails. The path is
// never looked up in $PATH.
func execFull(name string) error {
	self, err := os.Executable()
	if err == nil {
		self, err = filepath.EvalSymlinks(self)
	}
	if err != nil {
		return fmt.Errorf("snpctl %s is run by %s, but this executable's path is unknown: %w", name, fullBinary, err)
	}
	full := filepath.Join(filepath.Dir(self), fullBinary)
	argv := append([]string{full}, os.Args[1:]...)
	err = syscall.Exec(full, argv, os.Environ())
	if errors.Is(err, syscall.ENOENT) {
		how := "install it with snpctl (make install), or build a complete snpctl with go build ./cmd/snpctl"
		if filepath.Base(os.Args[0]) == hookArgv0 {
			how = "the libvirt hook must be snpctl-full itself (make install-hook)"
		}
		return fmt.Errorf("snpctl %s is run by %s, which is not beside this snpctl (%s): %s", name, fullBinary, full, how)
	}
	return fmt.Errorf("snpctl %s: running %s: %w", name, full, err)
}
