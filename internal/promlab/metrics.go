package promlab

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qmp-exporter/qmp_exporter/collector"
)

// ExtraMetrics are the series outside the collector that dashboards and
// rules may read: Prometheus's own up, and the exporter's own metrics
// (registered in cmd/qmp_exporter). Their labels are not checked.
var ExtraMetrics = []string{
	"up",
	"qmp_exporter_build_info",
	"qmp_exporter_config_last_reload_successful",
}

// TargetLabels are the labels Prometheus adds to every scraped series.
var TargetLabels = []string{"job", "instance"}

var descRE = regexp.MustCompile(`^Desc\{fqName: "([^"]+)", .*, variableLabels: \{([^}]*)\}\}$`)

// Metrics returns every metric a query may name, with its label names: the
// metrics collector.Collector describes, with their variable labels plus
// TargetLabels, and ExtraMetrics, with nil labels (unknown).
func Metrics() (map[string][]string, error) {
	ch := make(chan *prometheus.Desc)
	go func() {
		collector.NewCollector(collector.NewManager(collector.Options{})).Describe(ch)
		close(ch)
	}()
	out := map[string][]string{}
	var bad []string
	for d := range ch {
		m := descRE.FindStringSubmatch(d.String())
		if m == nil {
			bad = append(bad, d.String())
			continue
		}
		labels := append([]string(nil), TargetLabels...)
		for l := range strings.SplitSeq(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"))
			}
		}
		out[m[1]] = labels
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("promlab: cannot read metric descriptions: %q", bad)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("promlab: the collector describes no metrics")
	}
	for _, n := range ExtraMetrics {
		out[n] = nil
	}
	return out, nil
}
