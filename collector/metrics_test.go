package collector

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestMetricDefinitions checks every definition for what a scrape and the
// conventions need: a unique qmp_ name, a known type whose name says it
// (_total for counters only), documentation, a way to read its values,
// and valid, distinct labels, none of them vm (every per-VM series
// carries it first) or instance, which Prometheus adds itself. (The job
// label of the two block-job gauges, a job's id, predates this check
// and is published; Prometheus stores it as exported_job.)
func TestMetricDefinitions(t *testing.T) {
	name := regexp.MustCompile(`^qmp_[a-z][a-z0-9_]*[a-z0-9]$`)
	label := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	seen := map[string]bool{}
	for _, m := range append(slices.Clone(vmMetrics), exporterMetrics...) {
		t.Run(m.Name, func(t *testing.T) {
			if !name.MatchString(m.Name) || seen[m.Name] {
				t.Errorf("name %q is not a unique qmp_ metric name", m.Name)
			}
			seen[m.Name] = true
			switch m.Type {
			case counter:
				if !strings.HasSuffix(m.Name, "_total") {
					t.Errorf("counter %s does not end in _total", m.Name)
				}
			case gauge:
				if strings.HasSuffix(m.Name, "_total") {
					t.Errorf("gauge %s ends in _total", m.Name)
				}
			default:
				t.Errorf("type %q is neither gauge nor counter", m.Type)
			}
			if !strings.HasSuffix(m.Help, ".") || m.Source == "" {
				t.Errorf("help %q is not a sentence, or source %q is empty", m.Help, m.Source)
			}
			if !slices.Contains(exporterMetrics, m) && m.values == nil {
				t.Errorf("%s has no values function", m.Name)
			}
			for i, l := range m.Labels {
				if !label.MatchString(l) || slices.Contains(m.Labels[:i], l) || l == "vm" || l == "instance" {
					t.Errorf("label %q of %s is invalid, repeated or reserved", l, m.Name)
				}
			}
		})
	}
	// In OpenMetrics a counter's family drops _total and its start is a
	// sample named _created: neither may be another metric's name.
	for _, m := range append(slices.Clone(vmMetrics), exporterMetrics...) {
		if base, ok := strings.CutSuffix(m.Name, "_total"); ok && m.Type == counter && (seen[base] || seen[base+"_created"]) {
			t.Errorf("counter %s collides in OpenMetrics with %s or %s_created", m.Name, base, base)
		}
	}
	if got, want := len(Metrics()), len(vmMetrics)+len(exporterMetrics); got != want {
		t.Errorf("Metrics() describes %d metrics, want %d", got, want)
	}
	if len(textFamilies) != len(vmMetrics) || len(textHeaders) != len(vmMetrics) {
		t.Errorf("the text writer knows %d families, the definitions %d", len(textFamilies), len(vmMetrics))
	}
}

// TestSinkRefusesWrongLabelCount: a values function that gives a metric
// the wrong number of label values is a bug the first scrape shows, on
// both paths, rather than a line under the wrong labels.
func TestSinkRefusesWrongLabelCount(t *testing.T) {
	m := &Metric{Name: "qmp_test", Type: gauge, Labels: []string{"a"}}
	for _, s := range []*sink{{m: m, text: &textScratch{}}, {m: m, c: NewCollector(nil)}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("add with no label value for a metric with one did not panic (text=%v)", s.text != nil)
				}
			}()
			s.add(1)
		}()
	}
}
