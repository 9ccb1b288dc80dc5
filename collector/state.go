package collector

import (
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

var knownRunState = func() map[string]bool {
	m := make(map[string]bool, len(runStates))
	for _, s := range runStates {
		m[s] = true
	}
	return m
}()

const (
	// maxEventNames bounds the distinct event names one VM can put into
	// qmp_events_total; QEMU has fewer than 64. A peer that invents more
	// has the rest counted in qmp_events_unlabelled_total.
	maxEventNames = 128
	// maxLabelBytes bounds label values that come from the VM.
	maxLabelBytes = 128
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

// vmState is everything known about one VM. It is folded from events and
// query replies by pure methods with no I/O and no locking; the watcher
// holds the lock.
type vmState struct {
	up     bool
	status string // current RunState; "" while unknown
	info   vmInfo
	synced bool // info is valid

	events     map[string]*eventStat
	unlabelled uint64

	attempts, failures uint64
	protocolErrors     uint64
}

func newVMState() vmState {
	return vmState{events: make(map[string]*eventStat)}
}

// statusHint is the run state an event implies, before query-status
// confirms it. The watcher re-reads query-status after each of these, since
// the event alone cannot tell, say, paused from io-error.
var statusHint = map[string]string{
	"STOP":           "paused",
	"RESUME":         "running",
	"SHUTDOWN":       "shutdown",
	"SUSPEND":        "suspended",
	"WAKEUP":         "running",
	"GUEST_PANICKED": "",
	"WATCHDOG":       "",
	"BLOCK_IO_ERROR": "",
	"RESET":          "",
	"MIGRATION":      "",
}

// apply folds one event into the state. It reports whether the run state
// should be re-read with query-status.
func (s *vmState) apply(ev qmp.Event) (recheckStatus bool) {
	st, ok := s.events[ev.Name]
	if !ok {
		if len(s.events) >= maxEventNames || !validEventName(ev.Name) {
			s.unlabelled++
			return false
		}
		st = &eventStat{}
		s.events[ev.Name] = st
	}
	st.count++
	if !ev.Time.IsZero() {
		st.last = ev.Time
	}
	hint, recheck := statusHint[ev.Name]
	if hint != "" {
		s.status = hint
	}
	return recheck
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

// setStatus records the run state that query-status returned. Unknown
// states from a newer QEMU are kept if they look like a RunState name.
func (s *vmState) setStatus(status string) {
	if !knownRunState[status] && !validStatusName(status) {
		status = ""
	}
	s.status = status
}

func validStatusName(n string) bool {
	if n == "" || len(n) > 32 {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// setInfo records what the initial sync learned. If the VM on the other
// end is not the one seen before (another name or UUID: a different QEMU
// now listens on the same socket), the counters start again, because they
// describe a different VM. It reports whether that happened.
func (s *vmState) setInfo(info vmInfo) (replaced bool) {
	info.name = cleanLabel(info.name)
	info.uuid = cleanLabel(info.uuid)
	info.version = cleanLabel(info.version)
	info.pkg = cleanLabel(info.pkg)
	if s.synced && (s.info.name != info.name || s.info.uuid != info.uuid) {
		replaced = true
		s.events = make(map[string]*eventStat)
		s.unlabelled = 0
	}
	s.info = info
	s.synced = true
	return replaced
}

// disconnected marks the session lost: up and the run state change,
// counters stay.
func (s *vmState) disconnected() {
	s.up = false
	s.status = ""
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
