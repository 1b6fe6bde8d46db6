package daemon

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// allowedEdges names every import from one of snpd's own packages to another that the
// layout allows, for the packages under daemon/ and the shared ones below them (a
// package not listed may import none of the project's packages). Imports flow one way:
//
//	cmd -> daemon -> {daemon/launch, daemon/store, daemon/guestchan, daemon/metrics} -> {config, snp, qmp, daemon/api}
//
// The daemon's subpackages never import daemon or each other; snp knows nothing of QEMU.
// Fakes in *test packages may import what their package may, and their package.
var allowedEdges = map[string][]string{
	"daemon": {"config", "daemon/api", "daemon/guestchan", "daemon/launch", "daemon/metrics", "daemon/store",
		"qmp", "snp", "snp/agentproto", "snp/launch", "systemd"},
	"daemon/launch":                  {"config", "daemon/api", "qmp", "snp", "snp/launch", "snp/uki"},
	"daemon/store":                   {"daemon/api"},
	"daemon/guestchan":               {"daemon/api", "snp", "snp/agentproto"},
	"daemon/guestchan/guestchantest": {"daemon/api", "snp", "snp/agentproto"},
	"daemon/metrics":                 {"daemon/api"},
	"daemon/metrics/metricstest":     {},
	"daemon/api":                     {},
	"config":                         {},
	"qmp":                            {},
	"qmp/qmptest":                    {"qmp"},
	"snp":                            {"snp/agentproto", "snp/launch"},
	"snp/launch":                     {},
	"snp/uki":                        {},
	"snp/agentproto":                 {},
	"snp/snptest":                    {"snp", "snp/agentproto", "snp/launch", "snp/uki"},
	"systemd":                        {},
	"systemd/systemdtest":            {"systemd"},
	"scripts/testsummary":            {},
}

// TestImportDirection enforces the layout: every import between the project's own
// packages is one allowedEdges names; no package outside cmd depends (even indirectly) on
// cmd, and none below daemon on daemon; snp never depends on QEMU (package qmp or
// go-qemu); daemon/api imports only the standard library.
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
	if len(pkgs) < 12 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	under := func(path, prefix string) bool {
		return path == mod+prefix || strings.HasPrefix(path, mod+prefix+"/")
	}
	checked := 0
	for _, p := range pkgs {
		rel := strings.TrimPrefix(p.ImportPath, mod)
		if under(p.ImportPath, "cmd") {
			continue
		}
		allowed, listed := allowedEdges[rel]
		if !listed {
			t.Errorf("%s is not in allowedEdges: add it with the project packages it may import", rel)
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			if to := strings.TrimPrefix(imp, mod); !slices.Contains(allowed, to) {
				t.Errorf("%s imports %s: not an allowed edge (see allowedEdges)", rel, to)
			}
		}
		for _, dep := range p.Deps {
			switch {
			case under(dep, "cmd"):
				t.Errorf("%s depends on %s: nothing imports cmd", rel, dep)
			case rel != "daemon" && under(dep, "daemon") && !under(dep, "daemon/api") &&
				!strings.HasPrefix(rel, "daemon/"):
				t.Errorf("%s depends on %s: only cmd and daemon's own packages use daemon", rel, dep)
			case strings.HasPrefix(rel, "daemon/") && dep == mod+"daemon":
				t.Errorf("%s depends on package daemon: imports must flow daemon -> its subpackages", rel)
			case under(p.ImportPath, "snp") && (under(dep, "qmp") || strings.HasPrefix(dep, "github.com/digitalocean/go-qemu")):
				t.Errorf("%s depends on %s: snp must know nothing of QEMU", rel, dep)
			case under(p.ImportPath, "daemon/api") && strings.Contains(strings.SplitN(dep, "/", 2)[0], "."):
				t.Errorf("%s imports %s: daemon/api must use the standard library only", rel, dep)
			}
		}
		checked++
	}
	t.Logf("checked the imports of %d packages", checked)
}
