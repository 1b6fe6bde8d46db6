package main

import (
	"bytes"
	"testing"
)

// TestVersionFlag: snpctl --version prints its version ("dev" without the Makefile's
// -ldflags; TestMakeBuildStampsVersion in cmd/snpd checks the stamped builds).
func TestVersionFlag(t *testing.T) {
	root := newRoot()
	var out bytes.Buffer
	root.SetArgs([]string{"--version"})
	root.SetOut(&out)
	if err := root.Execute(); err != nil || out.String() != "snpctl dev\n" {
		t.Fatalf("%v, %q; want \"snpctl dev\\n\"", err, out.String())
	}
}
