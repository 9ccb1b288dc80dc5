package promlab

import (
	"errors"
	"slices"

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

// Metrics returns every metric a query may name, with its label names:
// the metrics of collector.Metrics, the one place where each is defined,
// with their labels plus TargetLabels, and ExtraMetrics, with nil labels
// (unknown).
func Metrics() (map[string][]string, error) {
	out := map[string][]string{}
	for _, m := range collector.Metrics() {
		out[m.Name] = append(slices.Clone(TargetLabels), m.Labels...)
	}
	if len(out) == 0 {
		return nil, errors.New("promlab: the collector defines no metrics")
	}
	for _, n := range ExtraMetrics {
		out[n] = nil
	}
	return out, nil
}
