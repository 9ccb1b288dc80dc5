package vmstate

import (
	"maps"
	"time"

	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// RunStates is QEMU's RunState enumeration (QAPI schema, run-state.json),
// in schema order. qmp_vm_status exports one series for each.
var RunStates = []string{
	"debug", "inmigrate", "internal-error", "io-error", "paused",
	"postmigrate", "prelaunch", "finish-migrate", "restore-vm", "running",
	"save-vm", "shutdown", "suspended", "watchdog", "guest-panicked", "colo",
}

// MigrationStates is QEMU's MigrationStatus enumeration (migration.json),
// in schema order, as of 10.2: since 2.3 none, setup, cancelling,
// cancelled, active, completed, failed; postcopy-active 2.5, colo 2.8,
// pre-switchover and device 2.11, postcopy-paused and postcopy-recover
// 3.0, wait-unplug 4.2, postcopy-recover-setup 9.1, postcopy-device 10.2.
// A status of a newer QEMU still folds if it is spelled like an enum
// value.
var MigrationStates = []string{
	"none", "setup", "cancelling", "cancelled", "active", "postcopy-device",
	"postcopy-active", "postcopy-paused", "postcopy-recover-setup",
	"postcopy-recover", "completed", "failed", "colo", "pre-switchover",
	"device", "wait-unplug",
}

// Bounded label values that are exported at 0 as soon as the VM (or the
// device) is known, so that the first occurrence is an increase
// Prometheus can see: increase() over a window that holds only a series'
// first sample is 0, so a counter born at 1 would never fire an alert.
var (
	IOOperations     = []string{"read", "write"}            // IoOperationType
	IOActions        = []string{"ignore", "report", "stop"} // BlockErrorAction
	panicActions     = []string{"pause", "poweroff", "run"} // GuestPanicAction
	watchdogActions  = []string{"reset", "shutdown", "poweroff", "pause", "debug", "none", "inject-nmi"}
	IOStatuses       = []string{"ok", "failed", "nospace"} // BlockDeviceIoStatus
	QuorumOps        = []string{"read", "write", "flush"}  // QuorumOpType
	MigrationResults = []string{"completed", "failed", "cancelled"}
	DumpResults      = []string{"completed", "failed"}
)

// OperationUnknown is the operation of a BLOCK_IO_ERROR whose source
// does not say whether it was a read or a write (libvirt's I/O error
// events do not), and of a QUORUM_REPORT_BAD of QEMU before 2.6 (which
// had no type): its counts are the last row of BlockDev.IOErrors and the
// last slot of BlockDev.QuorumBad.
const OperationUnknown = "unknown"

func indexOf(list []string, v []byte) int {
	for i, s := range list {
		if s == string(v) {
			return i
		}
	}
	return -1
}

var knownRunState = func() map[string]bool {
	m := make(map[string]bool, len(RunStates))
	for _, s := range RunStates {
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

// EventStat is what is kept per event name.
type EventStat struct {
	Count uint64
	Last  time.Time // QEMU's timestamp of the latest one; zero if unknown
}

// Info is what the initial sync learns about the VM: its -name, its
// -uuid, and QEMU's version and package string. SetInfo makes every value
// safe as a label value.
type Info struct {
	Name, UUID, Version, Package string
}

// Need is a set of parts of the state that an event made uncertain and
// that only a query can tell exactly. Apply returns it; the source runs
// the queries (the QMP source, query-status for NeedStatus and so on) and
// feeds the replies back through the Set methods. The fold never runs
// them itself: it runs on the connection's reader goroutine.
type Need uint8

// The parts of the state a source can re-read.
const (
	NeedStatus  Need = 1 << iota // the run state (query-status)
	NeedBlock                    // block devices, their names and trays (query-block)
	NeedMigrate                  // the outgoing migration (query-migrate)
	NeedJobs                     // block jobs (query-jobs)
	NeedVNC                      // VNC clients (query-vnc)
	NeedSpice                    // SPICE channels (query-spice)
	NeedBalloon                  // the balloon (query-balloon)

	NeedAll = NeedStatus | NeedBlock | NeedMigrate | NeedJobs | NeedVNC | NeedSpice | NeedBalloon
)

// BlockDev is the state of one guest block device, labelled by its qdev id
// or QOM path.
type BlockDev struct {
	IOErrors       [3][3]uint64 // by IOOperations then OperationUnknown × IOActions
	Nospace        uint64
	IOStatus       string // "" when query-block does not report it
	Tray           int8   // -1 unknown (not removable), 0 closed, 1 open
	Corruptions    uint64
	CorruptFatal   int8 // -1 never reported
	ThresholdHits  uint64
	QuorumFailures uint64
	QuorumBad      [4]uint64 // by QuorumOps, then OperationUnknown (QEMU before 2.6)
	// confirmed: query-block has listed this device. A device known only
	// from events (a node with no guest device, such as a mirror target)
	// is never removed by a query-block that does not list it.
	confirmed bool
}

func newBlockDev() *BlockDev { return &BlockDev{Tray: -1, CorruptFatal: -1} }

// Job is a job from query-jobs or the BLOCK_JOB_*/JOB_STATUS_CHANGE
// events. Type and Status are "" while unknown.
type Job struct {
	Type, Status     string
	Progress, Length uint64
}

// Migration is the outgoing migration as far as query-migrate and the
// MIGRATION events tell.
//
// Known and HaveRAM sit with the unexported flags at the end, so that
// the struct has no padding (see State).
type Migration struct {
	Status           string
	Pass             uint64
	Transferred      uint64
	Remaining, Total uint64
	DirtyRate        float64 // pages per second
	// Seconds; -1 unknown.
	ExpectedDowntime, TotalTime, Downtime, SetupTime float64

	// Counting ends exactly once, whether they are seen through events,
	// polling, or only afterwards. endKey identifies the last ended
	// migration query-migrate reported (status and final figures);
	// baseline is set once the first one after connecting is known (that
	// one ended before the exporter was watching, or was counted already).
	// endCounted says the current migration's end is counted; eventEnd
	// that an event counted it and query-migrate has not reported it yet.
	// unfinal: the last reply said completed before QEMU had measured its
	// times (see SetMigrate); the next poll brings the final figures.
	// unfinalPolls counts the unfinal replies in a row, so that a peer
	// that never gives final figures is not polled for ever.
	endKey               string
	baseline             bool
	endCounted, eventEnd bool
	unfinal              bool
	unfinalPolls         uint8

	Known   bool // a status is known this session
	HaveRAM bool // the RAM figures above are known

	// eventsSeen: a MIGRATION event arrived during this session, so the
	// "events" migration capability is on and a migration announces
	// itself; a STOP or RESUME then need not re-read query-migrate.
	eventsSeen bool
}

// MaxUnfinalPolls bounds the polls for the final figures of a completed
// migration; QEMU has them a few milliseconds after it says completed.
const MaxUnfinalPolls = 5

// Polled reports whether the source should re-read the migration every
// second or so: while a migration runs, and after a completed reply
// without final figures, until they come (or MaxUnfinalPolls). Without
// the events capability, polling is the only way to see a migration end.
func (m *Migration) Polled() bool {
	return m.InProgress() || m.unfinal && m.unfinalPolls < MaxUnfinalPolls
}

// InProgress reports whether the migration runs: its status is neither
// an end nor none.
func (m *Migration) InProgress() bool {
	switch m.Status {
	case "", "none", "completed", "failed", "cancelled":
		return false
	}
	return true
}

// GuestReason keys the SHUTDOWN and RESET counters.
type GuestReason struct {
	Guest  bool
	Reason string
}

// Display is the state of VNC or SPICE.
type Display struct {
	Enabled     int8  // -1 unknown (query failed or absent), 0 off, 1 on
	Clients     int32 // int32 beside Enabled: the struct packs (see State)
	Connections uint64
	Sessions    uint64
	Failed      uint64              // clients gone before INITIALIZED
	pending     map[string]struct{} // clients not yet initialized; made on first use
}

// State is everything known about one VM. It is changed by the pure fold
// (Apply), by the Set methods fed with query replies and by the session
// methods (MarkUp, MarkDown, SetInfo); none of them does I/O or locking:
// the caller holds the VM's lock (see internal/fleet). The exposition and
// the journal read the exported fields; only this package's methods and
// the source's session counters (Attempts, Failures, ProtocolErrors,
// CommandTimeouts) change them.
//
// The booleans sit together, away from the fields they qualify, so that
// the struct packs into a smaller allocation: with fleet.VM around it, 768
// bytes instead of 896 per VM (a host keeps one per VM; see fleet.VM).
type State struct {
	Up     bool
	Synced bool // Info is valid
	// PID is the QEMU process behind the current or last session, as the
	// kernel reports the peer of a unix socket (SO_PEERCRED); 0 when it
	// cannot be known (TCP, libvirt, a process outside the exporter's pid
	// namespace). Set by the source; it tells two QEMUs with the same
	// UUID and -name apart (see internal/fleet).
	PID    int32
	Status string // current RunState; "" while unknown
	Info   Info
	// DownSince is when the VM was last seen up, or when its source
	// started looking for it; zero while it is up.
	DownSince time.Time
	// UpSince is when the current session began, in Unix milliseconds
	// (as CountersSince, 16 bytes less than a time.Time); 0 while down.
	UpSince int64
	// CountersSince is when every counter of the state started from
	// zero, in Unix milliseconds: when the source added the VM to the
	// fleet. 0 when that is not known, which is the case once SetInfo
	// has started the state again for a different VM (the fold has no
	// clock, and the session counters it keeps are older than the
	// rest). The exposition gives it as the counters' OpenMetrics
	// _created. (Milliseconds rather than a time.Time, 16 bytes less per
	// VM.)
	CountersSince int64

	Events     map[string]*EventStat
	Unlabelled uint64

	// Session counters, kept by the source.
	Attempts, Failures uint64
	ProtocolErrors     uint64
	CommandTimeouts    uint64

	DataErrors uint64 // events whose data could not be read
	Dropped    map[string]uint64

	// Guest.
	Shutdowns, Resets map[GuestReason]uint64
	Panics            map[[2]string]uint64 // action, info type; see countPanic
	Crashloads        map[string]uint64    // action
	Watchdog          map[string]uint64    // action; see countWatchdog
	MemoryFailures    map[[2]string]uint64 // recipient, action
	RTCOffset         int64                // valid when RTCKnown
	Dumps             [2]uint64            // by DumpResults
	DeviceDeletions   uint64
	Vserports         map[string]bool
	// ownPanics and ownWatchdog: Panics and Watchdog are this VM's own
	// maps, no longer the shared zeroPanics and zeroWatchdog.
	ownPanics, ownWatchdog bool
	RTCKnown               bool
	BalloonOK              bool // Balloon is known
	HVBalloonOK            bool // HVBalloon is known

	// Block devices and their name maps.
	Devices   map[string]*BlockDev
	bbToDev   map[string]string // BlockBackend name → device label
	nodeToDev map[string]string // node name → device label
	Jobs      map[string]*Job
	JobsDone  map[[2]string]uint64 // job type, result (completed, failed, cancelled)
	// endedJob is the id and type of the last job an end event forgot,
	// for the JOB_STATUS_CHANGE that follows it.
	endedJob  [2]string
	JobErrors [2][3]uint64 // by IOOperations × IOActions
	Balloon   uint64       // valid when BalloonOK
	HVBalloon [2]uint64    // committed, available; valid when HVBalloonOK

	Migration     Migration
	MigrationEnds [3]uint64 // by MigrationResults

	VNC, Spice Display

	// OpenStack is what OpenStack Nova wrote of the instance into its
	// libvirt domain's XML; nil for other VMs.
	OpenStack *OpenStackInstance
}

// OpenStackInstance is the instance metadata Nova keeps in a domain's
// XML (<nova:instance>): the names operators know an instance by.
type OpenStackInstance struct {
	Name, Flavor       string
	ProjectID, Project string
	UserID, User       string
}

// SetOpenStack records Nova's metadata of the instance (nil: none), made
// safe as label values.
func (s *State) SetOpenStack(o *OpenStackInstance) {
	if o == nil {
		s.OpenStack = nil
		return
	}
	c := OpenStackInstance{Name: CleanLabel(o.Name), Flavor: CleanLabel(o.Flavor), ProjectID: CleanLabel(o.ProjectID),
		Project: CleanLabel(o.Project), UserID: CleanLabel(o.UserID), User: CleanLabel(o.User)}
	if s.OpenStack == nil || *s.OpenStack != c {
		s.OpenStack = &c
	}
}

// New returns the state of a VM nothing is known about yet. Its
// maps are made on first write (a nil map reads as empty), because most
// VMs never see a panic, a memory failure, a job or a serial port, and
// an idle VM's memory is what a host with thousands of them pays for.
// The panic and watchdog counters that are exported at 0 from the start
// share one read-only map among all VMs until their first write (see
// countPanic and countWatchdog).
func New() State {
	return State{
		Panics:   zeroPanics,
		Watchdog: zeroWatchdog,
		VNC:      Display{Enabled: -1},
		Spice:    Display{Enabled: -1},
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
func (s *State) countPanic(k [2]string) { countShared(&s.Panics, &s.ownPanics, k) }

// countWatchdog counts a watchdog action, within the bound.
func (s *State) countWatchdog(a string) { countShared(&s.Watchdog, &s.ownWatchdog, a) }

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

// Apply folds one event into the state and reports which queries should
// run to confirm what the event implies.
func (s *State) Apply(ev qmp.Event) Need {
	st := s.Events[ev.Name]
	if st == nil {
		if st = s.newEvent(ev.Name); st == nil {
			return 0
		}
	}
	st.Count++
	if !ev.Time.IsZero() {
		st.Last = ev.Time
	}
	h, ok := handlers[ev.Name]
	if !ok {
		return 0
	}
	if !h.fold {
		return h.Need
	}
	var f qmp.Fields
	if len(ev.Data) > 0 {
		if err := qmp.ParseFields(ev.Data, &f); err != nil {
			s.DataErrors++
			return h.Need
		}
	}
	n, ok := s.foldData(ev.Name, &f)
	if !ok {
		s.DataErrors++
	}
	return h.Need | n
}

// newEvent starts counting events named name, or counts the event as
// unlabelled and returns nil if the name is not worth a label value or
// there are too many.
func (s *State) newEvent(name string) *EventStat {
	if len(s.Events) >= maxEventNames || !validEventName(name) {
		s.Unlabelled++
		return nil
	}
	if s.Events == nil {
		s.Events = make(map[string]*EventStat)
	}
	st := &EventStat{}
	s.Events[name] = st
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

// SetStatus records the run state that query-status returned. Unknown
// states from a newer QEMU are kept if they look like a RunState name.
func (s *State) SetStatus(status string) {
	if !knownRunState[status] && !validEnum([]byte(status)) {
		status = ""
	}
	s.Status = status
}

// SetInfo records what the initial sync learned. If the VM on the other
// end is not the one seen before (another name or UUID: a different QEMU
// now listens on the same socket), the state starts again, because it
// describes a different VM. It reports whether that happened.
func (s *State) SetInfo(info Info) (replaced bool) {
	info.Name = CleanLabel(info.Name)
	info.UUID = CleanLabel(info.UUID)
	info.Version = CleanLabel(info.Version)
	info.Package = CleanLabel(info.Package)
	if s.Synced && (s.Info.Name != info.Name || s.Info.UUID != info.UUID) {
		replaced = true
		// The fresh state's CountersSince stays 0: its counters start
		// now, a moment the fold has no clock for, and the session
		// counters carried over started earlier.
		fresh := New()
		fresh.Up, fresh.DownSince, fresh.UpSince, fresh.PID = s.Up, s.DownSince, s.UpSince, s.PID
		fresh.Attempts, fresh.Failures, fresh.ProtocolErrors = s.Attempts, s.Failures, s.ProtocolErrors
		*s = fresh
	}
	s.Info = info
	s.Synced = true
	return replaced
}

// MarkUp records that the VM's session is established and synced.
func (s *State) MarkUp(now time.Time) {
	if !s.Up {
		s.UpSince = now.UnixMilli()
	}
	s.Up = true
	s.DownSince = time.Time{}
}

// MarkDown records that the session is lost at now: Up and the gauges
// that describe the present change; counters stay.
func (s *State) MarkDown(now time.Time) {
	if s.Up {
		s.DownSince = now
	}
	s.Up = false
	s.UpSince = 0
	s.Status = ""
	s.VNC.pending = nil
	s.Spice.pending = nil
	s.Migration.eventsSeen = false
}

// Stale reports whether the VM has been unreachable for longer than
// after, as of now.
func (s *State) Stale(now time.Time, after time.Duration) bool {
	return !s.Up && !s.DownSince.IsZero() && now.Sub(s.DownSince) > after
}

// drop counts a label set that was not created because its kind is full.
func (s *State) drop(kind string) {
	if s.Dropped == nil {
		s.Dropped = make(map[string]uint64)
	}
	s.Dropped[kind]++
}

// CleanLabel makes a VM-supplied string safe as a label value: valid
// UTF-8, no control characters, at most maxLabelBytes.
func CleanLabel(v string) string {
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

// ZeroUUID is what query-uuid returns for a QEMU started without -uuid:
// no identity at all.
const ZeroUUID = "00000000-0000-0000-0000-000000000000"
