// Package collector is the exposition: it turns the fleet's VM states
// into Prometheus metrics. Every metric is defined once, in metrics.go;
// Collector serves them to a client_golang registry, and TextWriter
// writes them straight in the text format for /metrics. A scrape only
// reads kept state: nothing here touches a socket.
package collector

import (
	"cmp"
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
// Counters that have counted something carry their created timestamp
// where it is known (as TextWriter's OpenMetrics _created; see
// Metric.countsFromStart), for registries that encode it.
type Collector struct {
	fleet *fleet.Fleet
	// plain are the descriptors of the metrics of VMs without configured
	// labels; read-only once made.
	plain map[*Metric]*prometheus.Desc

	mu sync.Mutex // guards descs
	// descs caches the descriptors of metrics that carry a VM's extra
	// labels, by metric name and label set.
	descs map[string]*prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector for f's VMs.
func NewCollector(f *fleet.Fleet) *Collector {
	c := &Collector{fleet: f, plain: make(map[*Metric]*prometheus.Desc, len(vmMetrics)), descs: make(map[string]*prometheus.Desc)}
	for _, m := range vmMetrics {
		c.plain[m] = newDesc(m, nil)
	}
	return c
}

func newDesc(m *Metric, constLabels prometheus.Labels) *prometheus.Desc {
	return prometheus.NewDesc(m.Name, m.Help, append([]string{"vm"}, m.Labels...), constLabels)
}

// Describe sends the description of every per-VM metric.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range vmMetrics {
		ch <- c.plain[m]
	}
}

// Collect sends the current value of every series. It first takes the
// visible VMs and their labels from the fleet, then builds each VM's
// metrics under that VM's lock (a few microseconds, during which its
// event reader waits) and sends them once the lock is released, so that
// a slow consumer of ch holds no VM and only one VM's metrics are kept at
// a time. (A VM whose state changes in between is shown as it is when
// its metrics are built, under the label it had a moment before.)
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	type shown struct {
		v     *fleet.VM
		label string
	}
	var vms []shown
	c.fleet.Visible(time.Now(), func(v *fleet.VM, label string, _ *vmstate.State) {
		vms = append(vms, shown{v, label})
	})
	var out []prometheus.Metric
	var keys keyCache
	for _, vm := range vms {
		meta := vm.v.Meta()
		s := sink{vm: vm.label, extra: meta.Labels, libvirt: meta.Kind == fleet.Libvirt, out: out[:0], c: c, k: &keys}
		s.emit(vmMetrics, vm.v.LockRead())
		vm.v.Unlock()
		out = s.out
		for _, m := range out {
			ch <- m
		}
	}
}

// descFor returns m's descriptor with a VM's extra labels as constant
// labels (those whose names the metric already uses are left out).
// Describe lists only the descriptors without extra labels: configured
// labels may change at every reload, and the exporter's registry, which is
// not pedantic, only needs the described ones to be consistent.
func (c *Collector) descFor(m *Metric, extra map[string]string) *prometheus.Desc {
	if d := c.plain[m]; d != nil && len(extra) == 0 {
		return d
	}
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
	desc := newDesc(m, constLabels)
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

// FleetCollector exposes what the fleet counts of itself rather than of
// one VM: qmp_uuid_conflicts_total.
type FleetCollector struct {
	fleet *fleet.Fleet
	desc  *prometheus.Desc
}

var _ prometheus.Collector = (*FleetCollector)(nil)

// NewFleetCollector returns a FleetCollector for f.
func NewFleetCollector(f *fleet.Fleet) *FleetCollector {
	m := uuidConflicts
	return &FleetCollector{fleet: f, desc: prometheus.NewDesc(m.Name, m.Help, m.Labels, nil)}
}

// Describe sends the fleet counter's description.
func (c *FleetCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect sends the fleet counter, from 0: an alert reading it must see
// the first conflict as an increase.
func (c *FleetCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.fleet.UUIDConflicts()))
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
	// created is when the VM's counters started (CountersSince); zero
	// when not known.
	created time.Time
	// Text mode.
	text *textScratch
	// k keeps sorted keys for the VM being emitted (reset by emit).
	k *keyCache
	// libvirt: the VM is seen through libvirt (fleet.Meta.Kind).
	libvirt bool
}

// emit sends every sample of metrics for st, metric by metric; a VM
// seen through libvirt gets none of the QMP-only metrics.
func (s *sink) emit(metrics []*Metric, st *vmstate.State) {
	s.k.have = 0
	if s.text == nil && st.CountersSince > 0 {
		s.created = time.UnixMilli(st.CountersSince)
	}
	for i, m := range metrics {
		s.m, s.desc = m, nil
		if s.text != nil {
			s.text.start(i)
		}
		if !(m.qmpOnly && s.libvirt) {
			m.values(st, s)
		}
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
	labels = append([]string{s.vm}, labels...)
	switch {
	case s.m.Type != counter:
		s.out = append(s.out, prometheus.MustNewConstMetric(s.desc, prometheus.GaugeValue, v, labels...))
	case v != 0 && !s.created.IsZero() && s.m.countsFromStart():
		s.out = append(s.out, prometheus.MustNewConstMetricWithCreatedTimestamp(s.desc, prometheus.CounterValue, v, s.created, labels...))
	default:
		s.out = append(s.out, prometheus.MustNewConstMetric(s.desc, prometheus.CounterValue, v, labels...))
	}
}

// keyCache holds the sorted keys of one VM's maps while its metrics are
// emitted. Nine families walk the devices and two the event names, so
// each of those is sorted once per VM; the slices are reused from VM to
// VM (the text writer pools them), so that rendering a VM that changed
// allocates little more than its lines.
type keyCache struct {
	have                  uint8 // haveEvents | haveDevices | haveJobs
	events, devices, jobs []string
	// Scratch for the maps only one family walks; valid until the next
	// sortedInto or sortedPairs on the same slice.
	strs    []string
	pairs   [][2]string
	reasons []vmstate.GuestReason
}

const (
	haveEvents uint8 = 1 << iota
	haveDevices
	haveJobs
)

// eventNames returns st's event names, sorted.
func (s *sink) eventNames(st *vmstate.State) []string {
	if s.k.have&haveEvents == 0 {
		s.k.events = sortedInto(&s.k.events, st.Events)
		s.k.have |= haveEvents
	}
	return s.k.events
}

// eachDevice calls fn for each of st's block devices, by name.
func (s *sink) eachDevice(st *vmstate.State, fn func(name string, d *vmstate.BlockDev)) {
	if s.k.have&haveDevices == 0 {
		s.k.devices = sortedInto(&s.k.devices, st.Devices)
		s.k.have |= haveDevices
	}
	for _, name := range s.k.devices {
		fn(name, st.Devices[name])
	}
}

// eachJob calls fn for each of st's jobs, by id, with "unknown" for a
// type not known.
func (s *sink) eachJob(st *vmstate.State, fn func(id, typ string, j *vmstate.Job)) {
	if s.k.have&haveJobs == 0 {
		s.k.jobs = sortedInto(&s.k.jobs, st.Jobs)
		s.k.have |= haveJobs
	}
	for _, id := range s.k.jobs {
		j := st.Jobs[id]
		fn(id, orUnknown(j.Type), j)
	}
}

// sortedInto returns m's keys, sorted, in *buf's storage.
func sortedInto[V any](buf *[]string, m map[string]V) []string {
	keys := (*buf)[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	*buf = keys
	return keys
}

// sortedPairs returns m's keys, sorted, in *buf's storage.
func sortedPairs[V any](buf *[][2]string, m map[[2]string]V) [][2]string {
	keys := (*buf)[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [2]string) int {
		return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1]))
	})
	*buf = keys
	return keys
}

// EventLogCollector exposes qmp_event_log_dropped_total, read through
// dropped (journal.LogFile.Dropped).
type EventLogCollector struct {
	dropped func() uint64
	desc    *prometheus.Desc
}

var _ prometheus.Collector = (*EventLogCollector)(nil)

// NewEventLogCollector returns an EventLogCollector reading dropped.
func NewEventLogCollector(dropped func() uint64) *EventLogCollector {
	m := eventLogDropped
	return &EventLogCollector{dropped: dropped, desc: prometheus.NewDesc(m.Name, m.Help, nil, nil)}
}

// Describe sends the counter's description.
func (c *EventLogCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect sends the counter.
func (c *EventLogCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.dropped()))
}
