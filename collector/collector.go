// Package collector is the exposition: it turns the fleet's VM states
// into Prometheus metrics. Every metric is defined once, in metrics.go;
// Collector serves them to a client_golang registry, and TextWriter
// writes them straight in the text format for /metrics. A scrape only
// reads kept state: nothing here touches a socket.
package collector

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
)

// Collector exposes the fleet's VM states as metrics. Collect only reads
// in-memory state; it performs no I/O, so a hung VM cannot slow a scrape.
type Collector struct {
	fleet *fleet.Fleet

	mu sync.Mutex // guards descs
	// descs caches the descriptors of metrics, by metric name and, for
	// those that carry a VM's extra labels, label set.
	descs map[string]*prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector for f's VMs.
func NewCollector(f *fleet.Fleet) *Collector {
	return &Collector{fleet: f, descs: make(map[string]*prometheus.Desc)}
}

// Describe sends the description of every per-VM metric.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range vmMetrics {
		ch <- c.descFor(m, nil)
	}
}

// Collect sends the current value of every series. Each VM's metrics are
// built under that VM's lock (a few microseconds, during which its event
// reader waits), and all are sent once every lock is released.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	var out []prometheus.Metric
	c.fleet.Visible(time.Now(), func(v *fleet.VM, vm string, st *vmstate.State) {
		s := sink{vm: vm, extra: v.Meta().Labels, out: out, c: c}
		s.emit(vmMetrics, st)
		out = s.out
	})
	for _, m := range out {
		ch <- m
	}
}

// descFor returns m's descriptor with a VM's extra labels as constant
// labels (those whose names the metric already uses are left out).
// Describe lists only the descriptors without extra labels: configured
// labels may change at every reload, and the exporter's registry, which is
// not pedantic, only needs the described ones to be consistent.
func (c *Collector) descFor(m *Metric, extra map[string]string) *prometheus.Desc {
	var key strings.Builder
	key.WriteString(m.Name)
	names := slices.Sorted(maps.Keys(extra))
	for _, k := range names {
		key.WriteString("\x00" + k + "=" + extra[k])
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if desc, ok := c.descs[key.String()]; ok {
		return desc
	}
	constLabels := prometheus.Labels{}
	for _, k := range names {
		if k != "vm" && !slices.Contains(m.Labels, k) {
			constLabels[k] = extra[k]
		}
	}
	desc := prometheus.NewDesc(m.Name, m.Help, append([]string{"vm"}, m.Labels...), constLabels)
	if len(c.descs) < 100000 { // label sets are bounded by the configuration
		c.descs[key.String()] = desc
	}
	return desc
}

// ListenerCollector exposes the listeners' connection counters
// (qmp_listener_connections_total), the one family that is not per VM.
type ListenerCollector struct {
	each func(fn func(listener, result string, count uint64))
	desc *prometheus.Desc
}

var _ prometheus.Collector = (*ListenerCollector)(nil)

// NewListenerCollector returns a ListenerCollector that reads the
// counters through each (the QMP-socket source's EachListenerCount).
func NewListenerCollector(each func(fn func(listener, result string, count uint64))) *ListenerCollector {
	l := listenerConnections
	return &ListenerCollector{each: each, desc: prometheus.NewDesc(l.Name, l.Help, l.Labels, nil)}
}

// Describe sends the listener counter's description.
func (c *ListenerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect sends one counter per listener and result.
func (c *ListenerCollector) Collect(ch chan<- prometheus.Metric) {
	var out []prometheus.Metric
	c.each(func(listener, result string, n uint64) {
		out = append(out, prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), listener, result))
	})
	for _, m := range out {
		ch <- m
	}
}

// sink receives one VM's samples, metric by metric (emit sets m), as
// const metrics for a registry or, when text is set, as text lines.
type sink struct {
	m     *Metric
	vm    string
	extra map[string]string // the VM's configured labels
	// Registry mode.
	out  []prometheus.Metric
	c    *Collector
	desc *prometheus.Desc // m's, made on its first sample
	// Text mode.
	text *textScratch
}

// emit sends every sample of metrics for st, metric by metric.
func (s *sink) emit(metrics []*Metric, st *vmstate.State) {
	for i, m := range metrics {
		s.m, s.desc = m, nil
		if s.text != nil {
			s.text.start(i)
		}
		m.values(st, s)
	}
}

// add sends one sample of the current metric.
func (s *sink) add(v float64, labels ...string) {
	if len(labels) != len(s.m.Labels) {
		panic("collector: " + s.m.Name + " given the wrong number of label values")
	}
	if s.text != nil {
		s.text.add(s, v, labels)
		return
	}
	if s.desc == nil {
		s.desc = s.c.descFor(s.m, s.extra)
	}
	vt := prometheus.GaugeValue
	if s.m.Type == counter {
		vt = prometheus.CounterValue
	}
	s.out = append(s.out, prometheus.MustNewConstMetric(s.desc, vt, v, append([]string{s.vm}, labels...)...))
}
