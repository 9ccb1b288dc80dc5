package vmstate

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// ev builds an event as the qmp reader would deliver it.
func ev(name, data string) qmp.Event {
	e := qmp.Event{Name: name, Time: time.Unix(1700000000, 5000)}
	if data != "" {
		e.Data = json.RawMessage(data)
	}
	return e
}

// foldView is the comparable part of a State.
type foldView struct {
	Status     string
	Counts     map[string]uint64
	Unlabelled uint64
	Rechecks   int
}

func view(s *State, rechecks int) foldView {
	v := foldView{Status: s.Status, Counts: map[string]uint64{}, Unlabelled: s.Unlabelled, Rechecks: rechecks}
	for n, e := range s.Events {
		v.Counts[n] = e.Count
	}
	return v
}

func TestApply(t *testing.T) {
	manyNames := make([]qmp.Event, 0, maxEventNames+3)
	for i := range maxEventNames + 3 {
		manyNames = append(manyNames, ev("X_"+strings.Repeat("A", i%60)+string(rune('A'+i/60)), ""))
	}
	tests := []struct {
		name   string
		status string
		events []qmp.Event
		want   foldView
	}{
		{
			name:   "stop then resume, as the control monitor's stop and cont produce",
			status: "running",
			events: []qmp.Event{ev("STOP", ""), ev("RESUME", "")},
			want:   foldView{Status: "running", Counts: map[string]uint64{"STOP": 1, "RESUME": 1}, Rechecks: 1},
		},
		{
			name:   "stop leaves a paused hint until query-status says more",
			status: "running",
			events: []qmp.Event{ev("STOP", "")},
			want:   foldView{Status: "paused", Counts: map[string]uint64{"STOP": 1}, Rechecks: 1},
		},
		{
			name:   "a reset leaves a running VM running: no recheck",
			status: "running",
			events: []qmp.Event{ev("RESET", `{"guest": false, "reason": "host-qmp-system-reset"}`), ev("RESET", `{"guest": true, "reason": "guest-reset"}`)},
			want:   foldView{Status: "running", Counts: map[string]uint64{"RESET": 2}},
		},
		{
			name:   "a reset of a VM in shutdown (it goes to prelaunch) asks for a recheck",
			status: "shutdown",
			events: []qmp.Event{ev("RESET", `{"guest": false, "reason": "host-qmp-system-reset"}`)},
			want:   foldView{Status: "shutdown", Counts: map[string]uint64{"RESET": 1}, Rechecks: 1},
		},
		{
			name:   "shutdown with -no-shutdown",
			status: "running",
			events: []qmp.Event{ev("SHUTDOWN", `{"guest": false, "reason": "host-qmp-quit"}`)},
			want:   foldView{Status: "shutdown", Counts: map[string]uint64{"SHUTDOWN": 1}, Rechecks: 1},
		},
		{
			name:   "suspend and wakeup",
			status: "running",
			events: []qmp.Event{ev("SUSPEND", ""), ev("WAKEUP", "")},
			want:   foldView{Status: "running", Counts: map[string]uint64{"SUSPEND": 1, "WAKEUP": 1}, Rechecks: 2},
		},
		{
			name:   "events that do not touch the run state",
			status: "running",
			events: []qmp.Event{ev("VNC_CONNECTED", `{}`), ev("DEVICE_TRAY_MOVED", `{"device": "", "tray-open": true, "id": "mycd"}`), ev("BALLOON_CHANGE", `{"actual": 1}`)},
			want:   foldView{Status: "running", Counts: map[string]uint64{"VNC_CONNECTED": 1, "DEVICE_TRAY_MOVED": 1, "BALLOON_CHANGE": 1}},
		},
		{
			name:   "unknown but well-formed names are counted by name",
			status: "running",
			events: []qmp.Event{ev("SOME_FUTURE_EVENT", `{"x": 1}`)},
			want:   foldView{Status: "running", Counts: map[string]uint64{"SOME_FUTURE_EVENT": 1}},
		},
		{
			name:   "malformed names are not label values",
			status: "running",
			events: []qmp.Event{ev("lower", ""), ev("WITH SPACE", ""), ev("\xff", ""), ev(strings.Repeat("A", 65), "")},
			want:   foldView{Status: "running", Counts: map[string]uint64{}, Unlabelled: 4},
		},
		{
			name:   "distinct names are capped",
			events: manyNames,
			want: func() foldView {
				v := foldView{Counts: map[string]uint64{}, Unlabelled: 3}
				for _, e := range manyNames[:maxEventNames] {
					v.Counts[e.Name] = 1
				}
				return v
			}(),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New()
			s.Status = tc.status
			rechecks := 0
			for _, e := range tc.events {
				if s.Apply(e)&NeedStatus != 0 {
					rechecks++
				}
			}
			if diff := cmp.Diff(tc.want, view(&s, rechecks)); diff != "" {
				t.Errorf("state (-want +got):\n%s", diff)
			}
		})
	}
}

func TestApplyKeepsQEMUTimestamp(t *testing.T) {
	s := New()
	s.Apply(ev("STOP", ""))
	s.Apply(qmp.Event{Name: "STOP"}) // clock failure: -1/-1 decodes to the zero Time
	if got, want := s.Events["STOP"].Last, time.Unix(1700000000, 5000); !got.Equal(want) {
		t.Errorf("last = %v, want %v (a zero timestamp must not overwrite a real one)", got, want)
	}
}

// TestSetInfoReplacedVM: a reconnect to the same VM keeps its counters
// and when they started; a different VM answering on the socket starts
// them again, at a moment the state cannot tell (CountersSince 0), while
// the session counters, which belong to the socket, carry on.
func TestSetInfoReplacedVM(t *testing.T) {
	s := New()
	s.CountersSince = 946684800000
	s.SetInfo(Info{Name: "a", UUID: "u1"})
	s.Apply(ev("STOP", ""))
	s.Attempts = 2
	if s.SetInfo(Info{Name: "a", UUID: "u1", Version: "7.2.22"}) {
		t.Error("same VM reported as replaced")
	}
	if s.Events["STOP"].Count != 1 || s.CountersSince != 946684800000 {
		t.Errorf("counters lost on a reconnect to the same VM (STOP %d, since %d)", s.Events["STOP"].Count, s.CountersSince)
	}
	s.PID = 4242 // the source read the new session's process before its sync
	if !s.SetInfo(Info{Name: "b", UUID: "u2"}) {
		t.Error("a different VM on the socket was not noticed")
	}
	if len(s.Events) != 0 {
		t.Error("counters of the previous VM kept for a different one")
	}
	if s.PID != 4242 {
		t.Errorf("PID = %d after the state started again, want the session's 4242 kept", s.PID)
	}
	if s.CountersSince != 0 || s.Attempts != 2 {
		t.Errorf("after a replacement: CountersSince %d (want 0, unknown), Attempts %d (want 2, kept)", s.CountersSince, s.Attempts)
	}
}

func TestSetStatus(t *testing.T) {
	for in, want := range map[string]string{
		"running": "running", "io-error": "io-error", "some-new-state": "some-new-state",
		"Bad State": "", "x\xff": "", strings.Repeat("a", 33): "",
	} {
		s := New()
		s.SetStatus(in)
		if s.Status != want {
			t.Errorf("setStatus(%q) = %q, want %q", in, s.Status, want)
		}
	}
}

func TestCleanLabel(t *testing.T) {
	for in, want := range map[string]string{
		"demo":                        "demo",
		"caf\u00e9":                   "caf\u00e9",
		"bad\xffutf8":                 "bad_utf8",
		"tab\there":                   "tab_here",
		strings.Repeat("x", 200):      strings.Repeat("x", maxLabelBytes),
		strings.Repeat("\u00e9", 100): strings.Repeat("\u00e9", maxLabelBytes/2),
	} {
		if got := CleanLabel(in); got != want {
			t.Errorf("CleanLabel(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkApply(b *testing.B) {
	for _, name := range []string{"RTC_CHANGE", "BLOCK_IO_ERROR", "STOP", "VNC_CONNECTED"} {
		b.Run(name, func(b *testing.B) {
			s := New()
			e := ev(name, `{"offset": 1}`)
			b.ReportAllocs()
			for b.Loop() {
				s.Apply(e)
			}
		})
	}
}

// TestFollowUpQueries checks which queries each event asks for: only
// those that tell something the event does not.
func TestFollowUpQueries(t *testing.T) {
	type step struct {
		ev   qmp.Event
		want Need
	}
	migration := func(status string) qmp.Event { return ev("MIGRATION", `{"status": "`+status+`"}`) }
	job := func(status string) qmp.Event {
		return ev("JOB_STATUS_CHANGE", `{"status": "`+status+`", "id": "backup0"}`)
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "stop and resume re-read query-migrate while migrations may go unannounced",
			steps: []step{
				{ev("STOP", ""), NeedStatus | NeedMigrate},
				{ev("RESUME", ""), NeedMigrate},
			},
		},
		{
			name: "once MIGRATION events flow, stop and resume of an idle VM read only what they must",
			steps: []step{
				{migration("setup"), NeedMigrate},
				{migration("active"), 0},
				{migration("cancelling"), 0},
				{migration("cancelled"), NeedMigrate | NeedStatus},
				{ev("STOP", ""), NeedStatus},
				{ev("RESUME", ""), 0},
			},
		},
		{
			name: "a stop during a migration re-reads it",
			steps: []step{
				{migration("setup"), NeedMigrate},
				{ev("STOP", ""), NeedStatus | NeedMigrate},
				{migration("completed"), NeedMigrate | NeedStatus},
			},
		},
		{
			name: "a migration first seen past its setup is read",
			steps: []step{
				{migration("active"), NeedMigrate},
				{migration("failed"), NeedMigrate | NeedStatus},
			},
		},
		{
			name: "a watchdog action brings its own events",
			steps: []step{
				{ev("WATCHDOG", `{"action": "reset"}`), 0},
				{ev("WATCHDOG", `{"action": "pause"}`), 0},
			},
		},
		{
			name: "a job's end and its concluded status Need no query",
			steps: []step{
				{job("created"), NeedJobs},
				{job("running"), 0},
				{ev("BLOCK_JOB_COMPLETED", `{"device": "backup0", "len": 10, "offset": 10, "speed": 0, "type": "backup"}`), 0},
				{job("concluded"), 0},
				{job("null"), 0},
			},
		},
		{
			name: "ready and pending carry what query-jobs would say",
			steps: []step{
				{ev("BLOCK_JOB_READY", `{"device": "m0", "len": 10, "offset": 10, "speed": 0, "type": "mirror"}`), 0},
				{ev("BLOCK_JOB_PENDING", `{"type": "mirror", "id": "m0"}`), 0},
				{ev("BLOCK_JOB_CANCELLED", `{"device": "m0", "len": 10, "offset": 10, "speed": 0, "type": "mirror"}`), 0},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New()
			s.SetStatus("running")
			s.SetMigrate(MigrateInfo{}) // the sync's query-migrate: none
			for i, st := range tc.steps {
				if got := s.Apply(st.ev); got != st.want {
					t.Errorf("step %d (%s): Need %07b, want %07b", i, st.ev.Name, got, st.want)
				}
			}
		})
	}
}

func TestFollowUpQueriesAfterReconnect(t *testing.T) {
	s := New()
	s.SetMigrate(MigrateInfo{})
	s.Apply(ev("MIGRATION", `{"status": "cancelled"}`))
	s.MarkDown(time.Time{})
	s.SetMigrate(MigrateInfo{})
	// The capability may have been turned off while the exporter was away.
	if got := s.Apply(ev("STOP", "")); got&NeedMigrate == 0 {
		t.Errorf("STOP after a reconnect: Need %07b, want query-migrate", got)
	}
}

func TestConcludedJobKeepsType(t *testing.T) {
	s := New()
	s.Apply(ev("BLOCK_JOB_COMPLETED", `{"device": "backup0", "len": 10, "offset": 10, "speed": 0, "type": "backup"}`))
	s.Apply(ev("JOB_STATUS_CHANGE", `{"status": "concluded", "id": "backup0"}`))
	want(t, "job", &Job{Type: "backup", Status: "concluded"}, s.Jobs["backup0"])
	want(t, "jobs done", map[[2]string]uint64{{"backup", "completed"}: 1}, s.JobsDone)
}

// TestNewVMStateIsLazy: a VM that has seen nothing costs no map, and the
// counters exported at 0 from the start are shared until written.
func TestNewVMStateIsLazy(t *testing.T) {
	if n := testing.AllocsPerRun(10, func() { _ = New() }); n != 0 {
		t.Errorf("New allocates %v times, want 0", n)
	}
	a, b := New(), New()
	a.Apply(ev("GUEST_PANICKED", `{"action": "pause"}`))
	a.Apply(ev("WATCHDOG", `{"action": "reset"}`))
	want(t, "a's panics", uint64(1), a.Panics[[2]string{"pause", "none"}])
	want(t, "a's watchdog", uint64(1), a.Watchdog["reset"])
	want(t, "b's panics", uint64(0), b.Panics[[2]string{"pause", "none"}])
	want(t, "b's watchdog", uint64(0), b.Watchdog["reset"])
	want(t, "shared panics", uint64(0), zeroPanics[[2]string{"pause", "none"}])
	want(t, "shared watchdog", uint64(0), zeroWatchdog["reset"])
	want(t, "b's panic series", len(panicActions), len(b.Panics))
	want(t, "b's watchdog series", len(watchdogActions), len(b.Watchdog))

	// Every other kind of write works on the nil maps.
	s := New()
	for _, e := range []qmp.Event{
		ev("SHUTDOWN", `{"guest": true, "reason": "guest-shutdown"}`),
		ev("RESET", `{"guest": true, "reason": "guest-reset"}`),
		ev("GUEST_CRASHLOADED", `{"action": "run"}`),
		ev("MEMORY_FAILURE", `{"recipient": "guest", "action": "inject", "flags": {"action-required": false, "recursive": false}}`),
		ev("VSERPORT_CHANGE", `{"id": "channel0", "open": true}`),
		ev("BLOCK_IO_ERROR", `{"device": "ide0-hd1", "operation": "write", "action": "report"}`),
		ev("JOB_STATUS_CHANGE", `{"status": "created", "id": "j0"}`),
		ev("BLOCK_JOB_COMPLETED", `{"device": "j0", "len": 1, "offset": 1, "speed": 0, "type": "mirror"}`),
		ev("VNC_CONNECTED", `{"server": {}, "client": {"host": "h", "service": "1"}}`),
	} {
		s.Apply(e)
	}
	s.drop("device")
	want(t, "dataErrors", uint64(0), s.DataErrors)
	for what, n := range map[string]int{
		"shutdowns": len(s.Shutdowns), "resets": len(s.Resets), "crashloads": len(s.Crashloads),
		"memoryFailures": len(s.MemoryFailures), "vserports": len(s.Vserports), "devices": len(s.Devices),
		"jobsDone": len(s.JobsDone), "vnc pending": len(s.VNC.pending), "dropped": len(s.Dropped),
	} {
		if n != 1 {
			t.Errorf("%s: %d entries, want 1", what, n)
		}
	}
}
