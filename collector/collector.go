package collector

import (
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes the Manager's VM states as metrics. Collect only reads
// in-memory state; it performs no I/O, so a hung VM cannot slow a scrape.
type Collector struct {
	m *Manager

	mu sync.Mutex // guards descs
	// descs caches the descriptors of metrics that carry a VM's extra
	// labels, by metric name and label set.
	descs map[string]*prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector for m's VMs.
func NewCollector(m *Manager) *Collector {
	return &Collector{m: m, descs: make(map[string]*prometheus.Desc)}
}

// Describe sends every metric description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range metricDefs {
		ch <- d.desc
	}
}

// Collect sends the current value of every series. Each VM's metrics are
// built under that VM's lock (a few microseconds, during which its event
// reader waits) and sent after the lock is released.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	var buf []prometheus.Metric
	c.m.visibleVMs(time.Now(), func(w *watcher, vm string) {
		e := emitter{vm: vm, out: buf[:0], extra: w.target.Labels, c: c}
		e.vmMetrics(&w.st)
		buf = e.out
		w.mu.Unlock()
		for _, m := range buf {
			ch <- m
		}
		w.mu.Lock()
	})
	for _, m := range c.m.listenerMetrics() {
		ch <- m
	}
}

// visibleVMs calls fn, with the watcher's lock held, for each VM whose
// series a scrape shows, with its vm label, in a stable order. VMs whose
// sockets linger or that have not dialled in again for StaleAfter are
// left out, and so is every VM after the first with the same UUID.
func (m *Manager) visibleVMs(now time.Time, fn func(w *watcher, vm string)) {
	used := make(map[string]bool)
	uuids := make(map[string]string) // UUID → vm label of its first VM
	for _, w := range m.sortedWatchers() {
		w.mu.Lock()
		if (w.target.Discovered || w.dynamic) && w.stale(now) {
			w.mu.Unlock()
			continue // its socket lingers, or it has not dialled in again
		}
		uuid := w.st.info.uuid
		identified := w.st.up && uuid != "" && uuid != zeroUUID
		if identified {
			if first, dup := uuids[uuid]; dup {
				w.mu.Unlock()
				m.warnDuplicate(w, first)
				continue
			}
		}
		vm := uniqueName(vmLabel(w.target, &w.st), w.target, used)
		if identified {
			uuids[uuid] = vm
		}
		fn(w, vm)
		w.mu.Unlock()
	}
}

// ListenerCollector exposes the listeners' connection counters
// (qmp_listener_connections_total), the one family of the
// Manager's that TextWriter leaves to a registry.
type ListenerCollector struct{ m *Manager }

var _ prometheus.Collector = (*ListenerCollector)(nil)

// NewListenerCollector returns a ListenerCollector for m's listeners.
func NewListenerCollector(m *Manager) *ListenerCollector { return &ListenerCollector{m: m} }

// Describe sends the listener counter's description.
func (c *ListenerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- mListener.desc }

// Collect sends one counter per listener and result.
func (c *ListenerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.m.listenerMetrics() {
		ch <- m
	}
}

// zeroUUID is what query-uuid returns for a QEMU started without -uuid.
const zeroUUID = "00000000-0000-0000-0000-000000000000"

// descFor returns d's descriptor with the VM's extra labels as constant
// labels (those whose names the metric already uses are left out).
// Describe lists only the descriptors without extra labels: configured
// labels may change at every reload, and the exporter's registry, which is
// not pedantic, only needs the described ones to be consistent.
func (c *Collector) descFor(d *metricDef, extra map[string]string) *prometheus.Desc {
	if len(extra) == 0 {
		return d.desc
	}
	var key strings.Builder
	key.WriteString(d.name)
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
		if k != "vm" && !slices.Contains(d.labels, k) {
			constLabels[k] = extra[k]
		}
	}
	desc := prometheus.NewDesc(d.name, d.help, d.labels, constLabels)
	if len(c.descs) < 100000 { // label sets are bounded by the configuration
		c.descs[key.String()] = desc
	}
	return desc
}

// vmLabel is the configured name, else QEMU's -name, else the default
// derived from the socket.
func vmLabel(t Target, st *vmState) string {
	if t.Name != "" {
		return t.Name
	}
	if st.info.name != "" {
		return st.info.name
	}
	return t.DefaultName()
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

// emitter builds one VM's metrics: as const metrics for a registry, or
// as text lines when text is set.
type emitter struct {
	vm    string
	out   []prometheus.Metric
	extra map[string]string // the VM's configured labels
	c     *Collector
	text  *textScratch
}

func (e *emitter) add(d *metricDef, v float64, labels ...string) {
	if e.text != nil {
		e.text.add(e, d, v, labels)
		return
	}
	vt := prometheus.GaugeValue
	if d.typ == "counter" {
		vt = prometheus.CounterValue
	}
	desc := d.desc
	if len(e.extra) > 0 {
		desc = e.c.descFor(d, e.extra)
	}
	e.out = append(e.out, prometheus.MustNewConstMetric(desc, vt, v, append([]string{e.vm}, labels...)...))
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func boolLabel(b bool) string { return strconv.FormatBool(b) }

// sortedKeys returns a map's keys in order, so output is stable.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (e *emitter) vmMetrics(st *vmState) {
	e.add(mUp, boolValue(st.up))
	known := false
	for _, rs := range runStates {
		v := 0.0
		if st.up && rs == st.status {
			v, known = 1, true
		}
		e.add(mVMStatus, v, rs)
	}
	if st.up && !known && st.status != "" {
		e.add(mVMStatus, 1, st.status)
	}
	if st.synced {
		e.add(mVMInfo, 1, st.info.uuid, st.info.version, st.info.pkg)
	}
	for _, n := range sortedKeys(st.events) {
		ev := st.events[n]
		e.add(mEvents, float64(ev.count), n)
		if !ev.last.IsZero() {
			e.add(mLastEvent, float64(ev.last.UnixMicro())/1e6, n)
		}
	}
	e.add(mEventsUnlabelled, float64(st.unlabelled))
	e.add(mAttempts, float64(st.attempts))
	e.add(mFailures, float64(st.failures))
	e.add(mProtocolErrors, float64(st.protocolErrors))
	e.add(mEventDataErrors, float64(st.dataErrors))
	e.add(mCommandTimeouts, float64(st.commandTimeouts))
	for _, k := range sortedKeys(st.dropped) {
		e.add(mDropped, float64(st.dropped[k]), k)
	}
	e.guest(st)
	e.block(st)
	e.memoryAndMigration(st)
	e.consoles(st)
}

func (e *emitter) guest(st *vmState) {
	for _, m := range []struct {
		d    *metricDef
		vals map[guestReason]uint64
	}{{mShutdowns, st.shutdowns}, {mResets, st.resets}} {
		keys := make([]guestReason, 0, len(m.vals))
		for k := range m.vals {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			if keys[i].guest != keys[j].guest {
				return !keys[i].guest
			}
			return keys[i].reason < keys[j].reason
		})
		for _, k := range keys {
			e.add(m.d, float64(m.vals[k]), boolLabel(k.guest), k.reason)
		}
	}
	for _, m := range []struct {
		d    *metricDef
		vals map[[2]string]uint64
	}{{mPanics, st.panics}, {mMemoryFailures, st.memoryFailures}} {
		keys := make([][2]string, 0, len(m.vals))
		for k := range m.vals {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			if keys[i][0] != keys[j][0] {
				return keys[i][0] < keys[j][0]
			}
			return keys[i][1] < keys[j][1]
		})
		for _, k := range keys {
			e.add(m.d, float64(m.vals[k]), k[0], k[1])
		}
	}
	for _, k := range sortedKeys(st.crashloads) {
		e.add(mCrashloads, float64(st.crashloads[k]), k)
	}
	for _, k := range sortedKeys(st.watchdog) {
		e.add(mWatchdog, float64(st.watchdog[k]), k)
	}
	if st.rtcKnown {
		e.add(mRTCOffset, float64(st.rtcOffset))
	}
	for _, k := range sortedKeys(st.vserports) {
		e.add(mVserport, boolValue(st.vserports[k]), k)
	}
	for i, r := range dumpResults {
		e.add(mDumps, float64(st.dumps[i]), r)
	}
	e.add(mDeviceDeletions, float64(st.deviceDeletions))
}

func (e *emitter) block(st *vmState) {
	for _, name := range sortedKeys(st.devices) {
		d := st.devices[name]
		for oi, op := range ioOperations {
			for ai, act := range ioActions {
				e.add(mIOErrors, float64(d.ioErrors[oi][ai]), name, op, act)
			}
		}
		e.add(mNospace, float64(d.nospace), name)
		if d.ioStatus != "" {
			for _, s := range ioStatuses {
				e.add(mIOStatus, boolValue(s == d.ioStatus), name, s)
			}
		}
		if d.tray >= 0 {
			e.add(mTray, float64(d.tray), name)
		}
		e.add(mCorruptions, float64(d.corruptions), name)
		if d.corruptFatal >= 0 {
			e.add(mCorruptFatal, float64(d.corruptFatal), name)
		}
		if d.thresholdHits > 0 {
			e.add(mThreshold, float64(d.thresholdHits), name)
		}
		if d.quorumFailures > 0 {
			e.add(mQuorumFailures, float64(d.quorumFailures), name)
		}
		for i, op := range quorumOps {
			if d.quorumBad[i] > 0 {
				e.add(mQuorumBad, float64(d.quorumBad[i]), name, op)
			}
		}
	}
	counts := map[[2]string]int{}
	for _, id := range sortedKeys(st.jobs) {
		j := st.jobs[id]
		typ := j.typ
		if typ == "" {
			typ = "unknown"
		}
		status := j.status
		if status == "" {
			status = "unknown"
		}
		counts[[2]string{typ, status}]++
		e.add(mJobProgress, float64(j.progress), id, typ)
		e.add(mJobLength, float64(j.length), id, typ)
	}
	keys := make([][2]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+" "+keys[i][1] < keys[j][0]+" "+keys[j][1] })
	for _, k := range keys {
		e.add(mJobs, float64(counts[k]), k[0], k[1])
	}
	done := make([][2]string, 0, len(st.jobsDone))
	for k := range st.jobsDone {
		done = append(done, k)
	}
	sort.Slice(done, func(i, j int) bool { return done[i][0]+" "+done[i][1] < done[j][0]+" "+done[j][1] })
	for _, k := range done {
		e.add(mJobsDone, float64(st.jobsDone[k]), k[0], k[1])
	}
	for oi, op := range ioOperations {
		for ai, act := range ioActions {
			e.add(mJobErrors, float64(st.jobErrors[oi][ai]), op, act)
		}
	}
}

func (e *emitter) memoryAndMigration(st *vmState) {
	if st.balloonOK {
		e.add(mBalloon, float64(st.balloon))
	}
	if st.hvBalloonK {
		e.add(mHVCommitted, float64(st.hvBalloon[0]))
		e.add(mHVAvailable, float64(st.hvBalloon[1]))
	}
	m := &st.mig
	if st.up && m.known {
		for _, s := range migrationStates {
			e.add(mMigStatus, boolValue(s == m.status), s)
		}
		if indexOf(migrationStates, []byte(m.status)) < 0 {
			e.add(mMigStatus, 1, m.status)
		}
		if m.status != "none" {
			e.add(mMigPass, float64(m.pass))
			if m.haveRAM {
				e.add(mMigTransferred, float64(m.transferred))
				e.add(mMigRemaining, float64(m.remaining))
				e.add(mMigTotal, float64(m.total))
				e.add(mMigDirtyRate, m.dirtyRate)
			}
			for _, g := range []struct {
				d *metricDef
				v float64
			}{{mMigExpectedDowntime, m.expectedDowntime}, {mMigDowntime, m.downtime}, {mMigTotalTime, m.totalTime}, {mMigSetupTime, m.setupT}} {
				if g.v >= 0 {
					e.add(g.d, g.v)
				}
			}
		}
	}
	for i, r := range migrationEnds {
		e.add(mMigEnded, float64(st.migEnded[i]), r)
	}
}

func (e *emitter) consoles(st *vmState) {
	for _, c := range []struct {
		d                                    *display
		clients, conns, sessions, failedDesc *metricDef
	}{
		{&st.vnc, mVNCClients, mVNCConnections, mVNCSessions, mVNCFailed},
		{&st.spice, mSpiceClients, mSpiceConnections, mSpiceSessions, mSpiceFailed},
	} {
		if c.d.enabled != 1 && c.d.connections == 0 {
			continue
		}
		if st.up && c.d.enabled == 1 {
			e.add(c.clients, float64(c.d.clients))
		}
		e.add(c.conns, float64(c.d.connections))
		e.add(c.sessions, float64(c.d.sessions))
		e.add(c.failedDesc, float64(c.d.failed))
	}
}
