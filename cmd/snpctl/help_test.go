package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// needLong are the commands whose help must explain more than one line: what they do,
// what they print and their exit status.
var needLong = map[string]bool{
	"snpctl": true, "snpctl vm": true, "snpctl vm define": true, "snpctl vm start": true,
	"snpctl vm stop": true, "snpctl vm show": true, "snpctl measure": true,
	"snpctl policy check": true, "snpctl id-block": true, "snpctl id-block verify": true,
	"snpctl libvirt-hook": true, "snpctl attest": true, "snpctl reference": true,
	"snpctl verify": true, "snpctl status": true, "snpctl certs import": true,
}

// ownCommands walks snpctl's command tree, leaving out cobra's generated help and
// completion commands.
func ownCommands(c *cobra.Command, f func(*cobra.Command)) {
	if c.Name() == "help" || c.Name() == "completion" {
		return
	}
	f(c)
	for _, s := range c.Commands() {
		ownCommands(s, f)
	}
}

// TestHelpIsHelpful checks every subcommand's --help: a one-line summary, a long
// description where the command needs one, and examples for every runnable command;
// and that --help actually prints them.
func TestHelpIsHelpful(t *testing.T) {
	n := 0
	ownCommands(newRoot(), func(c *cobra.Command) {
		n++
		path := c.CommandPath()
		if c.Short == "" || strings.Contains(c.Short, "\n") {
			t.Errorf("%s: Short must be one line, got %q", path, c.Short)
		}
		if needLong[path] && len(strings.TrimSpace(c.Long)) < 2*len(c.Short) {
			t.Errorf("%s: Long help missing or barely longer than the summary", path)
		}
		if (c.Runnable() || path == "snpctl") && strings.TrimSpace(c.Example) == "" {
			t.Errorf("%s: no Example", path)
		}
		// --help prints the description and the examples.
		root := newRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append(strings.Fields(path)[1:], "--help"))
		if err := root.Execute(); err != nil {
			t.Errorf("%s --help: %v", path, err)
		}
		want := c.Short
		if c.Long != "" {
			want = strings.TrimSpace(c.Long)
		}
		if !strings.Contains(out.String(), want) {
			t.Errorf("%s --help does not print its description", path)
		}
		if c.Example != "" && !strings.Contains(out.String(), "Examples:") {
			t.Errorf("%s --help does not print its examples", path)
		}
	})
	if n < 20 {
		t.Fatalf("walked only %d commands", n)
	}
}

// TestHelpExamplesParse runs every example line that invokes snpctl through cobra's
// parsing (without running it): the subcommand must exist, every flag and the argument
// count must be accepted, and each command's examples must show the command itself. So
// examples cannot rot when flags change.
func TestHelpExamplesParse(t *testing.T) {
	checked := 0
	ownCommands(newRoot(), func(c *cobra.Command) {
		shown := c.Example == ""
		for _, line := range exampleCommands(c.Example) {
			words, err := shellWords(line)
			if err != nil {
				t.Errorf("%s example %q: %v", c.CommandPath(), line, err)
				continue
			}
			if len(words) == 0 || words[0] != "snpctl" {
				continue
			}
			checked++
			root := newRoot()
			found, rest, err := root.Find(words[1:])
			if err != nil {
				t.Errorf("%s example %q: %v", c.CommandPath(), line, err)
				continue
			}
			if strings.HasPrefix(found.CommandPath(), c.CommandPath()) {
				shown = true
			}
			if err := found.ParseFlags(rest); err != nil {
				t.Errorf("%s example %q: %v", c.CommandPath(), line, err)
				continue
			}
			if err := found.ValidateArgs(found.Flags().Args()); err != nil {
				t.Errorf("%s example %q: %v", c.CommandPath(), line, err)
			}
		}
		if !shown {
			t.Errorf("%s: no example runs it", c.CommandPath())
		}
	})
	if checked < 20 {
		t.Fatalf("only %d example lines checked", checked)
	}
}

// exampleCommands returns the command lines of an Example: continuation lines ("\" at
// the end) joined, comments and output lines (not starting with a command) kept for
// the caller to filter, everything from an unquoted redirection or pipe on dropped.
func exampleCommands(ex string) []string {
	var out []string
	var cur string
	for _, l := range strings.Split(ex, "\n") {
		l = strings.TrimPrefix(strings.TrimSpace(l), "$ ")
		if strings.HasSuffix(l, "\\") {
			cur += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		cur += l
		if cur != "" && !strings.HasPrefix(cur, "#") {
			out = append(out, cur)
		}
		cur = ""
	}
	return out
}

// shellWords splits a command line as sh would for the simple forms examples use
// (single and double quotes, no expansions), stopping at an unquoted <, >, | or ;.
func shellWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				w.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case strings.ContainsRune("<>|;", r):
			if inWord {
				words = append(words, w.String())
			}
			return words, nil
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, errUnterminatedQuote
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

var errUnterminatedQuote = errors.New("unterminated quote")

// TestErrorLineIsOneLine: every problem of a joined error stays, on one line.
func TestErrorLineIsOneLine(t *testing.T) {
	err := fmt.Errorf("building launch spec for %q: %w", "vm1", errors.Join(
		errors.New("snp.cbitpos 7: want 32..63"), errors.New("snp.reduced_phys_bits 0: want 1..63")))
	got := errorLine(err)
	want := `building launch spec for "vm1": snp.cbitpos 7: want 32..63; snp.reduced_phys_bits 0: want 1..63`
	if got != want {
		t.Errorf("errorLine = %q, want %q", got, want)
	}
}
