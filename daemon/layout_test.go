package daemon

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// TestImportDirection enforces the design card's layout: imports flow one way,
// cmd -> daemon -> {config, snp, qmp, systemd}; snp, qmp, config and systemd never import
// daemon or cmd; snp imports nothing of QEMU (package qmp); daemon/api imports only the
// standard library.
func TestImportDirection(t *testing.T) {
	const mod = "github.com/snpd/snpd/"
	out, err := exec.Command("go", "list", "-deps=false", "-json", "../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	type pkg struct {
		ImportPath string
		Imports    []string
		Deps       []string
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkg
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 8 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	under := func(path, prefix string) bool {
		return path == mod+prefix || strings.HasPrefix(path, mod+prefix+"/")
	}
	checked := 0
	for _, p := range pkgs {
		rel := strings.TrimPrefix(p.ImportPath, mod)
		for _, dep := range p.Deps {
			switch {
			case under(p.ImportPath, "daemon/api"):
				if strings.Contains(strings.SplitN(dep, "/", 2)[0], ".") {
					t.Errorf("%s imports %s: daemon/api must use the standard library only", rel, dep)
				}
			case under(p.ImportPath, "snp") || under(p.ImportPath, "qmp") ||
				under(p.ImportPath, "config") || under(p.ImportPath, "systemd"):
				if under(dep, "daemon") || under(dep, "cmd") {
					t.Errorf("%s depends on %s: imports must flow cmd -> daemon -> {config, snp, qmp, systemd}", rel, dep)
				}
				if under(p.ImportPath, "snp") && (under(dep, "qmp") || strings.HasPrefix(dep, "github.com/digitalocean/go-qemu")) {
					t.Errorf("%s depends on %s: snp must know nothing of QEMU", rel, dep)
				}
			case under(p.ImportPath, "daemon"):
				if under(dep, "cmd") {
					t.Errorf("%s depends on %s: daemon must not import cmd", rel, dep)
				}
			}
		}
		checked++
	}
	t.Logf("checked the dependencies of %d packages", checked)
}
