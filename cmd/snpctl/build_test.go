package main

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/snpd/snpd/daemon/api"
	"github.com/spf13/cobra"
)

// goBuild builds the package pkg (a path relative to cmd/snpctl) into the file out as
// make build does: static (CGO_ENABLED=0).
func goBuild(t *testing.T, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(cmd.Args[1:], " "), err, b)
	}
}

// snpctlBuild builds snpctl alone into a temporary directory and returns its path.
func snpctlBuild(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "snpctl")
	goBuild(t, bin, ".")
	return bin
}

// TestMakeBuildAndInstallHook runs `make install-hook` (which runs `make build` first)
// into temporary directories: the build must produce snpd, snpctl and snp-agent and
// nothing else, the hook must be a copy of that snpctl, and the copy, run the way
// libvirt runs it, must act as the hook.
func TestMakeBuildAndInstallHook(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	bin, root := t.TempDir(), t.TempDir()
	cmd := exec.Command("make", "--no-print-directory", "install-hook", "BIN="+bin, "DESTDIR="+root)
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install-hook: %v\n%s", err, out)
	}
	ents, err := os.ReadDir(bin)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{"snp-agent", "snpctl", "snpd"}; !slices.Equal(names, want) {
		t.Errorf("make build made %q, want %q", names, want)
	}
	hook := filepath.Join(root, "etc/libvirt/hooks/qemu.d/snpd")
	got, err := os.ReadFile(hook)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(bin, "snpctl"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the installed hook is not a copy of %s/snpctl", bin)
	}
	if fi, err := os.Stat(hook); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("hook mode: %v %v, want 0755", fi.Mode(), err)
	}

	hs := newHookServer(t, http.StatusOK, api.LibvirtDomainResponse{Name: "web1"})
	run := exec.Command(hook, "web1", "prepare", "begin", "-")
	run.Env = append(os.Environ(), "SNPD_SOCKET="+hs.sock)
	run.Stdin = strings.NewReader(hookDomainXML)
	if out, err := run.CombinedOutput(); err != nil {
		t.Fatalf("hook web1 prepare begin: %v: %s", err, out)
	}
	if got := hs.requests(); len(got) != 1 || got[0] != "POST /v1/libvirt/domains web1" {
		t.Errorf("hook sent %q", got)
	}
}

// TestEveryHelpFromTheBinary runs the built snpctl, alone in its directory, with --help
// for every command (cobra's help and completion included), and as `snpctl help
// COMMAND`: exit 0, the command's description and usage on stdout, nothing on stderr.
func TestEveryHelpFromTheBinary(t *testing.T) {
	bin := snpctlBuild(t)
	n := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		n++
		path := strings.Fields(c.CommandPath())[1:]
		desc := strings.TrimSpace(c.Long)
		if desc == "" {
			desc = c.Short
		}
		for _, args := range [][]string{append(slices.Clone(path), "--help"), append([]string{"help"}, path...)} {
			out, errOut, rc := idbRun(t, bin, args...)
			if rc != 0 || errOut != "" || !strings.Contains(out, "Usage:") || !strings.Contains(out, desc) {
				t.Errorf("snpctl %s: exit %d, stderr %q, stdout %.200q", strings.Join(args, " "), rc, errOut, out)
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	root := newRoot()
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	walk(root)
	if n < 30 {
		t.Fatalf("walked only %d commands", n)
	}
}

// TestCompletionFromTheBinary: shell completion (what the scripts of `snpctl completion`
// run) knows every command and their flags.
func TestCompletionFromTheBinary(t *testing.T) {
	bin := snpctlBuild(t)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", ""}, []string{"vm", "measure", "id-block", "policy", "libvirt-hook", "attest", "verify", "reference", "certs", "status"}},
		{[]string{"__complete", "vm", "st"}, []string{"start", "stop"}},
		{[]string{"__complete", "measure", "--mo"}, []string{"--mode"}},
		{[]string{"__complete", "id-block", "--id"}, []string{"--idkey"}},
		{[]string{"__complete", "--json", "policy", "check", "--"}, []string{"--policy", "--libvirt-xml"}},
		{[]string{"__complete", "libvirt-hook", "--"}, []string{"--fail-open"}},
	} {
		out, errOut, rc := idbRun(t, bin, tc.args...)
		lines := strings.Split(out, "\n")
		for _, w := range tc.want {
			if !slices.ContainsFunc(lines, func(l string) bool { return l == w || strings.HasPrefix(l, w+"\t") }) {
				t.Errorf("snpctl %q: no %q in %q (exit %d, %q)", tc.args, w, out, rc, errOut)
			}
		}
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if out, errOut, rc := idbRun(t, bin, "completion", shell); rc != 0 || !strings.Contains(out, "__complete") {
			t.Errorf("snpctl completion %s: exit %d, %q, %.100q", shell, rc, errOut, out)
		}
	}
}

// TestOneBuild guards against a second build of snpctl coming back: no file of this
// package is left out of the default build (a build tag would do that), and the names
// of the retired lean build and its companion appear nowhere in the repository.
func TestOneBuild(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.IgnoredGoFiles}}", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "[]" {
		t.Errorf("files left out of snpctl's build: %s", got)
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skip("not a git checkout")
	}
	// The names are split so that this file does not match itself.
	grep := exec.Command("git", "grep", "-n", "-I", "-e", "snpctl"+"-full", "-e", "snpctl"+"_lean", "-e", "SNPCTL"+"_FULL")
	grep.Dir = strings.TrimSpace(string(top))
	out, err = grep.Output()
	if len(out) > 0 {
		t.Errorf("the retired second build is still referred to:\n%s", out)
	} else if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("git grep: %v", err)
	}
}

// TestLinksNoDaemon: snpctl is a client; it links neither package daemon nor what only
// the daemon needs (the Prometheus client, bbolt), whose package initialisation every
// snpctl call would pay for.
func TestLinksNoDaemon(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "github.com/snpd/snpd/daemon" || strings.HasPrefix(dep, "github.com/prometheus/") || strings.HasPrefix(dep, "go.etcd.io/bbolt") {
			t.Errorf("snpctl links %s", dep)
		}
	}
}
