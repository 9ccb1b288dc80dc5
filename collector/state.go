package collector

import (
	"maps"
	"time"

	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// runStates is QEMU's RunState enumeration (QAPI schema, run-state.json),
// in schema order. qmp_vm_status exports one series for each.
var runStates = []string{
	"debug", "inmigrate", "internal-error", "io-error", "paused",
	"postmigrate", "prelaunch", "finish-migrate", "restore-vm", "running",
	"save-vm", "shutdown", "suspended", "watchdog", "guest-panicked", "colo",
}

// migrationStates is QEMU's MigrationStatus enumeration (migration.json).
var migrationStates = []string{
	"none", "setup", "cancelling", "cancelled", "active", "postcopy-active",
	"postcopy-paused", "postcopy-recover-setup", "postcopy-recover",
	"completed", "failed", "colo", "pre-switchover", "device", "wait-unplug",
}

// Bounded label values that are exported at 0 as soon as the VM (or the
// device) is known, so that the first occurrence is an increase
// Prometheus can see (see STYLE.md, "Counters that alerts read start at 0").
var (
	ioOperations    = []string{"read", "write"}            // IoOperationType
	ioActions       = []string{"ignore", "report", "stop"} // BlockErrorAction
	panicActions    = []string{"pause", "poweroff", "run"} // GuestPanicAction
	watchdogActions = []string{"reset", "shutdown", "poweroff", "pause", "debug", "none", "inject-nmi"}
	ioStatuses      = []string{"ok", "failed", "nospace"} // BlockDeviceIoStatus
	quorumOps       = []string{"read", "write", "flush"}  // QuorumOpType
	migrationEnds   = []string{"completed", "failed", "cancelled"}
	dumpResults     = []string{"completed", "failed"}
)

func indexOf(list []string, v []byte) int {
	for i, s := range list {
		if s == string(v) {
			return i
		}
	}
	return -1
}

var knownRunState = func() map[string]bool {
	m := make(map[string]bool, len(runStates))
	for _, s := range runStates {
		m[s] = true
	}
	return m
}()

// Bounds on what one VM can add to the label space.
const (
	// maxEventNames bounds the distinct event names in qmp_events_total;
	// QEMU has fewer than 64.
	maxEventNames = 128
	// maxLabelBytes bounds label values that come from the VM.
	maxLabelBytes = 128
	// maxDevices bounds block devices, jobs, serial ports and other
	// per-object label values, per kind and VM.
	maxDevices = 64
	// maxEnumValues bounds the distinct values of an enum-like label
	// (reasons, job types, actions from a newer QEMU).
	maxEnumValues = 32
	// maxPendingClients bounds the VNC/SPICE clients tracked between
	// CONNECTED and INITIALIZED.
	maxPendingClients = 256
)

// eventStat is what is kept per event name.
type eventStat struct {
	count uint64
	last  time.Time // QEMU's timestamp of the latest one; zero if unknown
}

// vmInfo is what the initial sync learns about the VM.
type vmInfo struct {
	name, uuid, version, pkg string
}

// need is a set of queries the fold asks the watcher to run, because an
// event changed something only a query can tell exactly. The fold never
// runs them itself: it runs on the connection's reader goroutine.
type need uint8

const (
	needStatus need = 1 << iota
	needBlock
	needMigrate
	needJobs
	needVNC
	needSpice
	needBalloon

	needAll = needStatus | needBlock | needMigrate | needJobs | needVNC | needSpice | needBalloon
)

// blockDev is the state of one guest block device, labelled by its qdev id
// or QOM path.
type blockDev struct {
	ioErrors       [2][3]uint64 // by ioOperations × ioActions
	nospace        uint64
	ioStatus       string // "" when query-block does not report it
	tray           int8   // -1 unknown (not removable), 0 closed, 1 open
	corruptions    uint64
	corruptFatal   int8 // -1 never reported
	thresholdHits  uint64
	quorumFailures uint64
	quorumBad      [3]uint64 // by quorumOps
	// confirmed: query-block has listed this device. A device known only
	// from events (a node with no guest device, such as a mirror target)
	// is never removed by a query-block that does not list it.
	confirmed bool
}

func newBlockDev() *blockDev { return &blockDev{tray: -1, corruptFatal: -1} }

// blockJob is a job from query-jobs or the BLOCK_JOB_*/JOB_STATUS_CHANGE
// events.
type blockJob struct {
	typ, status      string
	progress, length uint64
}

// migration is the outgoing migration as far as query-migrate and the
// MIGRATION events tell.
type migration struct {
	known                                         bool
	status                                        string
	pass                                          uint64
	transferred, remaining, total                 uint64
	haveRAM                                       bool
	dirtyRate                                     float64 // pages per second
	expectedDowntime, totalTime, downtime, setupT float64 // seconds; -1 unknown

	// Counting ends exactly once, whether they are seen through events,
	// polling, or only afterwards. endKey identifies the last ended
	// migration query-migrate reported (status and final figures);
	// baseline is set once the first one after connecting is known (that
	// one ended before the exporter was watching, or was counted already).
	// endCounted says the current migration's end is counted; eventEnd
	// that an event counted it and query-migrate has not reported it yet.
	// unfinal: the last reply said completed before QEMU had measured its
	// times (see setMigrate); the next poll brings the final figures.
	// unfinalPolls counts the unfinal replies in a row, so that a peer
	// that never gives final figures is not polled for ever.
	endKey               string
	baseline             bool
	endCounted, eventEnd bool
	unfinal              bool
	unfinalPolls         uint8

	// eventsSeen: a MIGRATION event arrived during this session, so the
	// "events" migration capability is on and a migration announces
	// itself; a STOP or RESUME then need not re-read query-migrate.
	eventsSeen bool
}

// maxUnfinalPolls bounds the polls for the final figures of a completed
// migration; QEMU has them a few milliseconds after it says completed.
const maxUnfinalPolls = 5

// polled reports whether query-migrate is read every
// migrationPollInterval: while a migration runs, and after a completed
// reply without final figures, until they come (or maxUnfinalPolls).
func (m *migration) polled() bool {
	return m.inProgress() || m.unfinal && m.unfinalPolls < maxUnfinalPolls
}

func (m *migration) inProgress() bool {
	switch m.status {
	case "", "none", "completed", "failed", "cancelled":
		return false
	}
	return true
}

// guestReason keys the SHUTDOWN and RESET counters.
type guestReason struct {
	guest  bool
	reason string
}

// display is the state of VNC or SPICE.
type display struct {
	enabled     int8 // -1 unknown (query failed or absent), 0 off, 1 on
	clients     int
	connections uint64
	sessions    uint64
	failed      uint64              // clients gone before INITIALIZED
	pending     map[string]struct{} // clients not yet initialized; made on first use
}

// vmState is everything known about one VM. It is changed by the pure fold
// (apply) and by the reconcile methods fed with query replies; none of them
// does I/O or locking. The watcher holds the lock.
type vmState struct {
	up     bool
	status string // current RunState; "" while unknown
	info   vmInfo
	synced bool // info is valid

	events     map[string]*eventStat
	unlabelled uint64

	attempts, failures uint64
	protocolErrors     uint64
	dataErrors         uint64 // events whose data could not be read
	commandTimeouts    uint64
	dropped            map[string]uint64

	// Guest.
	shutdowns, resets map[guestReason]uint64
	panics            map[[2]string]uint64 // action, info type; see countPanic
	crashloads        map[string]uint64    // action
	watchdog          map[string]uint64    // action; see countWatchdog
	// ownPanics and ownWatchdog: panics and watchdog are this VM's own
	// maps, no longer the shared zeroPanics and zeroWatchdog.
	ownPanics, ownWatchdog bool
	memoryFailures         map[[2]string]uint64 // recipient, action
	rtcOffset              int64
	rtcKnown               bool
	dumps                  [2]uint64 // by dumpResults
	deviceDeletions        uint64
	vserports              map[string]bool

	// Block devices and their name maps.
	devices   map[string]*blockDev
	bbToDev   map[string]string // BlockBackend name → device label
	nodeToDev map[string]string // node name → device label
	jobs      map[string]*blockJob
	jobsDone  map[[2]string]uint64 // job type, result (completed, failed, cancelled)
	// endedJob is the id and type of the last job an end event forgot,
	// for the JOB_STATUS_CHANGE that follows it.
	endedJob   [2]string
	jobErrors  [2][3]uint64 // by ioOperations × ioActions
	balloon    uint64
	balloonOK  bool
	hvBalloon  [2]uint64 // committed, available
	hvBalloonK bool

	mig      migration
	migEnded [3]uint64 // by migrationEnds

	vnc, spice display
}

// newVMState returns the state of a VM nothing is known about yet. Its
// maps are made on first write (a nil map reads as empty), because most
// VMs never see a panic, a memory failure, a job or a serial port, and
// an idle VM's memory is what a host with thousands of them pays for.
// The panic and watchdog counters that are exported at 0 from the start
// share one read-only map among all VMs until their first write (see
// countPanic and countWatchdog).
func newVMState() vmState {
	return vmState{
		panics:   zeroPanics,
		watchdog: zeroWatchdog,
		vnc:      display{enabled: -1},
		spice:    display{enabled: -1},
	}
}

// zeroPanics and zeroWatchdog are the counters every VM starts with, at 0.
// They are shared and never written: a VM's first count copies them.
var (
	zeroPanics = func() map[[2]string]uint64 {
		m := make(map[[2]string]uint64, len(panicActions))
		for _, a := range panicActions {
			m[[2]string{a, "none"}] = 0
		}
		return m
	}()
	zeroWatchdog = func() map[string]uint64 {
		m := make(map[string]uint64, len(watchdogActions))
		for _, a := range watchdogActions {
			m[a] = 0
		}
		return m
	}()
)

// countPanic counts a panic by action and info type, within the bound.
func (s *vmState) countPanic(k [2]string) { countShared(&s.panics, &s.ownPanics, k) }

// countWatchdog counts a watchdog action, within the bound.
func (s *vmState) countWatchdog(a string) { countShared(&s.watchdog, &s.ownWatchdog, a) }

// countShared is countKey for a map that starts shared among VMs: the
// first write copies it, and *own records that it has been.
func countShared[K comparable](m *map[K]uint64, own *bool, k K) {
	if !*own {
		*m, *own = maps.Clone(*m), true
	}
	countKey(m, k)
}

// countKey adds one to (*m)[k], making the map on first use, unless k is
// new and the map already holds maxEnumValues keys.
func countKey[K comparable](m *map[K]uint64, k K) {
	if _, seen := (*m)[k]; !seen && len(*m) >= maxEnumValues {
		return
	}
	if *m == nil {
		*m = make(map[K]uint64)
	}
	(*m)[k]++
}

// apply folds one event into the state and reports which queries should
// run to confirm what the event implies.
func (s *vmState) apply(ev qmp.Event) need {
	st := s.events[ev.Name]
	if st == nil {
		if st = s.newEvent(ev.Name); st == nil {
			return 0
		}
	}
	st.count++
	if !ev.Time.IsZero() {
		st.last = ev.Time
	}
	h, ok := handlers[ev.Name]
	if !ok {
		return 0
	}
	if !h.fold {
		return h.need
	}
	var f qmp.Fields
	if len(ev.Data) > 0 {
		if err := qmp.ParseFields(ev.Data, &f); err != nil {
			s.dataErrors++
			return h.need
		}
	}
	n, ok := s.foldData(ev.Name, &f)
	if !ok {
		s.dataErrors++
	}
	return h.need | n
}

// newEvent starts counting events named name, or counts the event as
// unlabelled and returns nil if the name is not worth a label value or
// there are too many.
func (s *vmState) newEvent(name string) *eventStat {
	if len(s.events) >= maxEventNames || !validEventName(name) {
		s.unlabelled++
		return nil
	}
	if s.events == nil {
		s.events = make(map[string]*eventStat)
	}
	st := &eventStat{}
	s.events[name] = st
	return st
}

// validEventName accepts what QEMU's QAPI generator produces: upper-case
// letters, digits and underscores, at most 64 of them. Anything else from
// a peer is not worth a label value.
func validEventName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// validEnum accepts the spelling of QAPI enum values: lower-case letters,
// digits and '-', at most 32. Enum values from a newer QEMU pass; prose
// does not.
func validEnum(b []byte) bool {
	if len(b) == 0 || len(b) > 32 {
		return false
	}
	for _, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

// setStatus records the run state that query-status returned. Unknown
// states from a newer QEMU are kept if they look like a RunState name.
func (s *vmState) setStatus(status string) {
	if !knownRunState[status] && !validEnum([]byte(status)) {
		status = ""
	}
	s.status = status
}

// setInfo records what the initial sync learned. If the VM on the other
// end is not the one seen before (another name or UUID: a different QEMU
// now listens on the same socket), the state starts again, because it
// describes a different VM. It reports whether that happened.
func (s *vmState) setInfo(info vmInfo) (replaced bool) {
	info.name = cleanLabel(info.name)
	info.uuid = cleanLabel(info.uuid)
	info.version = cleanLabel(info.version)
	info.pkg = cleanLabel(info.pkg)
	if s.synced && (s.info.name != info.name || s.info.uuid != info.uuid) {
		replaced = true
		fresh := newVMState()
		fresh.up, fresh.attempts, fresh.failures, fresh.protocolErrors = s.up, s.attempts, s.failures, s.protocolErrors
		*s = fresh
	}
	s.info = info
	s.synced = true
	return replaced
}

// disconnected marks the session lost: up and the gauges that describe the
// present change; counters stay.
func (s *vmState) disconnected() {
	s.up = false
	s.status = ""
	s.vnc.pending = nil
	s.spice.pending = nil
	s.mig.eventsSeen = false
}

// drop counts a label set that was not created because its kind is full.
func (s *vmState) drop(kind string) {
	if s.dropped == nil {
		s.dropped = make(map[string]uint64)
	}
	s.dropped[kind]++
}

// cleanLabel makes a VM-supplied string safe as a label value: valid
// UTF-8, no control characters, at most maxLabelBytes.
func cleanLabel(v string) string {
	ok := len(v) <= maxLabelBytes
	for i := 0; ok && i < len(v); i++ {
		if v[i] < 0x20 || v[i] >= 0x7f {
			ok = false
		}
	}
	if ok {
		return v
	}
	out := make([]rune, 0, len(v))
	size := 0
	for _, r := range v {
		if r == '\uFFFD' || r < 0x20 || r == 0x7f {
			r = '_'
		}
		if size+len(string(r)) > maxLabelBytes {
			break
		}
		size += len(string(r))
		out = append(out, r)
	}
	return string(out)
}
