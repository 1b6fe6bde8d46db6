package daemon

// This file checks docs/operations.md against the metrics snpd exposes: every snpd_*
// family of a scrape has a row in the table with its type and labels, no row names a
// family that does not exist, and the alert rules use only metrics that exist.

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/metrics"
	"github.com/snpd/snpd/daemon/metrics/metricstest"
)

// everyFamily returns the families of a scrape in which every snpd_* family has a
// series: each source set, each event recorded once, per_vm on.
func everyFamily(t *testing.T) map[string]metricstest.Family {
	t.Helper()
	m := metrics.New(metrics.Options{Platform: "none", Version: "test", PerVM: true})
	m.SetSources(metrics.Sources{
		VMs:           func() ([]metrics.VM, error) { return []metrics.VM{{Name: "a", State: api.StateRunning}}, nil },
		GuestSessions: func() (int, int) { return 1, 1 },
		Certs: func() ([]metrics.Cert, error) {
			return []metrics.Cert{{Kind: "VCEK", NotAfter: time.Now().Add(time.Hour)}}, nil
		},
		Store: func() (metrics.StoreStats, error) {
			return metrics.StoreStats{SizeBytes: 1, LastWrite: time.Now()}, nil
		},
	})
	m.LaunchStep("measure", time.Millisecond)
	m.LaunchStarted(time.Second)
	m.LaunchRefused("admit", "vcpu.models")
	m.LaunchFailed("spawn")
	m.PolicyRefusal(metrics.PointDefinition, []string{"vcpu.models"})
	m.Transition(api.StateRunning)
	m.Attestation(metrics.SourceVerify, metrics.VerdictFailed, []string{"measurement"})
	m.Reattached([]api.State{api.StateRunning})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /x", func(http.ResponseWriter, *http.Request) {})
	m.InstrumentAPI(mux).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/x", nil))
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", metrics.Path, nil))
	fams, err := metricstest.ParseFamilies(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

var (
	opsRowRE   = regexp.MustCompile("^\\| `(snpd_\\w+)` \\| (\\w*) \\|([^|]*)\\|")
	opsLabelRE = regexp.MustCompile("`(\\w+)`")
	// opsMetricRE finds metric names in PromQL expressions.
	opsMetricRE = regexp.MustCompile(`\b(snpd_\w+|process_\w+)`)
)

// TestOperationsDocsListEveryMetric fails when a family snpd exposes has no row in
// docs/operations.md's metrics table, with its type and labels, or a row names one that
// does not exist; and when the alert rules there name a metric snpd does not expose.
func TestOperationsDocsListEveryMetric(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "docs", "operations.md"))
	if err != nil {
		t.Fatalf("reading docs/operations.md: %v", err)
	}
	doc := string(b)
	fams := everyFamily(t)
	rows := map[string][2]string{}
	for _, line := range strings.Split(doc, "\n") {
		if m := opsRowRE.FindStringSubmatch(line); m != nil {
			if _, dup := rows[m[1]]; dup {
				t.Errorf("docs/operations.md: %s has two rows", m[1])
			}
			rows[m[1]] = [2]string{m[2], m[3]}
		}
	}
	types := map[dto.MetricType]string{dto.MetricType_COUNTER: "counter", dto.MetricType_GAUGE: "gauge", dto.MetricType_HISTOGRAM: "histogram"}
	n := 0
	for name, f := range fams {
		if !strings.HasPrefix(name, "snpd_") {
			continue
		}
		n++
		row, ok := rows[name]
		if !ok {
			t.Errorf("docs/operations.md: %s (%s, labels %q) has no row in the metrics table", name, types[f.Type], f.Labels)
			continue
		}
		if row[0] != types[f.Type] {
			t.Errorf("docs/operations.md: %s is a %s, the table says %q", name, types[f.Type], row[0])
		}
		var labels []string
		for _, m := range opsLabelRE.FindAllStringSubmatch(row[1], -1) {
			labels = append(labels, m[1])
		}
		sort.Strings(labels)
		if !slices.Equal(labels, f.Labels) {
			t.Errorf("docs/operations.md: %s has labels %q, the table says %q", name, f.Labels, labels)
		}
	}
	for name := range rows {
		if _, ok := fams[name]; !ok {
			t.Errorf("docs/operations.md: the table has a row for %s, which snpd does not expose", name)
		}
	}
	if n < 15 {
		t.Fatalf("only %d snpd_ families in the scrape", n)
	}

	// The alert rules: every metric they name exists (histograms by their family).
	start := strings.Index(doc, "```yaml\ngroups:")
	if start < 0 {
		t.Fatal("docs/operations.md: no ```yaml block with the alert rules (groups:)")
	}
	rules := doc[start : start+strings.Index(doc[start+3:], "```")+3]
	alerts := 0
	for _, line := range strings.Split(rules, "\n") {
		if strings.Contains(line, "- alert: ") {
			alerts++
		}
		if strings.Contains(line, "summary:") || strings.Contains(line, "description:") {
			continue
		}
		for _, m := range opsMetricRE.FindAllString(line, -1) {
			if _, ok := fams[m]; !ok {
				t.Errorf("docs/operations.md: the alert rules use %s, which snpd does not expose", m)
			}
		}
	}
	if alerts < 5 {
		t.Errorf("docs/operations.md: %d alert rules, want at least the five of the issue", alerts)
	}
}
