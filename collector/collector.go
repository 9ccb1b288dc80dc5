package collector

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes the Manager's VM states as metrics. Collect only copies
// in-memory state; it performs no I/O, so a hung VM cannot slow a scrape.
type Collector struct {
	m *Manager
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector for m's VMs.
func NewCollector(m *Manager) *Collector { return &Collector{m: m} }

// Describe sends every metric description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range metricDefs {
		ch <- d.desc
	}
}

// Collect sends the current value of every series.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	snaps := c.m.snapshots()
	used := make(map[string]bool, len(snaps))
	for i := range snaps {
		s := &snaps[i]
		vm := uniqueName(vmLabel(s), s.target, used)
		emitVM(ch, vm, s)
	}
}

// vmLabel is the configured name, else QEMU's -name, else the default
// derived from the socket.
func vmLabel(s *snapshot) string {
	if s.target.Name != "" {
		return s.target.Name
	}
	if s.st.info.name != "" {
		return s.st.info.name
	}
	return s.target.DefaultName()
}

// uniqueName keeps vm labels unique within a scrape: two targets whose
// QEMUs report the same -name would otherwise produce duplicate series and
// fail the whole scrape. The later one (in target order) falls back to its
// socket-derived name, then to a numbered suffix.
func uniqueName(name string, t Target, used map[string]bool) string {
	if !used[name] {
		used[name] = true
		return name
	}
	if d := t.DefaultName(); !used[d] {
		used[d] = true
		return d
	}
	for i := 2; ; i++ {
		n := name + "#" + strconv.Itoa(i)
		if !used[n] {
			used[n] = true
			return n
		}
	}
}

func emitVM(ch chan<- prometheus.Metric, vm string, s *snapshot) {
	st := &s.st
	ch <- prometheus.MustNewConstMetric(mUp.desc, prometheus.GaugeValue, boolValue(st.up), vm)
	known := false
	for _, rs := range runStates {
		v := 0.0
		if st.up && rs == st.status {
			v, known = 1, true
		}
		ch <- prometheus.MustNewConstMetric(mVMStatus.desc, prometheus.GaugeValue, v, vm, rs)
	}
	if st.up && !known && st.status != "" {
		ch <- prometheus.MustNewConstMetric(mVMStatus.desc, prometheus.GaugeValue, 1, vm, st.status)
	}
	if st.synced {
		ch <- prometheus.MustNewConstMetric(mVMInfo.desc, prometheus.GaugeValue, 1, vm, st.info.uuid, st.info.version, st.info.pkg)
	}
	for _, e := range s.events {
		ch <- prometheus.MustNewConstMetric(mEvents.desc, prometheus.CounterValue, float64(e.stat.count), vm, e.name)
		if !e.stat.last.IsZero() {
			ch <- prometheus.MustNewConstMetric(mLastEvent.desc, prometheus.GaugeValue, float64(e.stat.last.UnixMicro())/1e6, vm, e.name)
		}
	}
	ch <- prometheus.MustNewConstMetric(mEventsUnlabelled.desc, prometheus.CounterValue, float64(st.unlabelled), vm)
	ch <- prometheus.MustNewConstMetric(mAttempts.desc, prometheus.CounterValue, float64(st.attempts), vm)
	ch <- prometheus.MustNewConstMetric(mFailures.desc, prometheus.CounterValue, float64(st.failures), vm)
	ch <- prometheus.MustNewConstMetric(mProtocolErrors.desc, prometheus.CounterValue, float64(st.protocolErrors), vm)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
