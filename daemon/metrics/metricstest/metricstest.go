// Package metricstest reads a Prometheus text exposition, as a scraper does, into
// samples tests can compare: it parses with the Prometheus text parser
// (github.com/prometheus/common/expfmt) and flattens every family into series keys.
package metricstest

import (
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Samples maps a series key to its value. A key is the metric name followed by its
// labels sorted by name, as Prometheus prints them: `snpd_vms{platform="none",state="running"}`
// (just the name when there are none). A histogram gives name_count and name_sum series;
// a summary its _count and _sum as well.
type Samples map[string]float64

// Types maps a family name to its type (COUNTER, GAUGE, HISTOGRAM, ...).
type Types map[string]dto.MetricType

// Family is one metric family of a scrape: its type and the names of the labels its
// series carry (sorted, each once).
type Family struct {
	Type   dto.MetricType
	Labels []string
}

// ParseFamilies reads one scrape in the text format into its families by name.
func ParseFamilies(r io.Reader) (map[string]Family, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parsing the metrics exposition: %w", err)
	}
	out := map[string]Family{}
	for name, f := range fams {
		fam := Family{Type: f.GetType()}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if !slices.Contains(fam.Labels, l.GetName()) {
					fam.Labels = append(fam.Labels, l.GetName())
				}
			}
		}
		sort.Strings(fam.Labels)
		out[name] = fam
	}
	return out, nil
}

// Parse reads one scrape in the text format.
func Parse(r io.Reader) (Samples, Types, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing the metrics exposition: %w", err)
	}
	out, types := Samples{}, Types{}
	for name, f := range fams {
		types[name] = f.GetType()
		for _, m := range f.GetMetric() {
			lk := Key("", labels(m)...)
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[name+lk] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[name+lk] = m.GetGauge().GetValue()
			case dto.MetricType_UNTYPED:
				out[name+lk] = m.GetUntyped().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[name+"_count"+lk] = float64(m.GetHistogram().GetSampleCount())
				out[name+"_sum"+lk] = m.GetHistogram().GetSampleSum()
			case dto.MetricType_SUMMARY:
				out[name+"_count"+lk] = float64(m.GetSummary().GetSampleCount())
				out[name+"_sum"+lk] = m.GetSummary().GetSampleSum()
			}
		}
	}
	return out, types, nil
}

func labels(m *dto.Metric) []string {
	var kv []string
	for _, l := range m.GetLabel() {
		kv = append(kv, l.GetName(), l.GetValue())
	}
	return kv
}

// Key builds a series key from a name and label name/value pairs (in any order).
func Key(name string, kv ...string) string {
	if len(kv)%2 != 0 {
		panic("metricstest.Key: odd number of label names and values")
	}
	if len(kv) == 0 {
		return name
	}
	pairs := make([]string, 0, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		pairs = append(pairs, fmt.Sprintf("%s=%q", kv[i], kv[i+1]))
	}
	sort.Strings(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// Delta returns after minus before for every series of after whose name starts with one
// of prefixes and whose value changed (a series new in after counts from 0); series that
// disappeared are reported with NaN.
func Delta(before, after Samples, prefixes ...string) map[string]float64 {
	out := map[string]float64{}
	match := func(k string) bool {
		return slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(k, p) })
	}
	for k, v := range after {
		if match(k) && v != before[k] {
			out[k] = v - before[k]
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok && match(k) {
			out[k] = math.NaN()
		}
	}
	return out
}
