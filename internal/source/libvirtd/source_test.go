package libvirtd

import (
	"fmt"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/go-kit/log"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
)

// TestMaxDomains: at the bound, a new domain takes the place of the one
// stopped longest, and is left out while every kept domain runs.
func TestMaxDomains(t *testing.T) {
	f := fleet.New(fleet.Options{})
	s := New(f, Options{Socket: "/nonexistent", MaxDomains: 2})
	dom := func(name string, b byte) libvirt.Domain { return libvirt.Domain{Name: name, UUID: libvirt.UUID{b}} }
	now := time.Now()
	a, b := s.ensure(dom("a", 1), "7.2.0", now), s.ensure(dom("b", 2), "7.2.0", now)
	for _, d := range []*domain{a, b} {
		d.vm.Lock().MarkUp(time.Now())
		d.vm.Unlock()
	}
	if d := s.ensure(dom("c", 3), "7.2.0", now); d != nil || f.Len() != 2 {
		t.Fatalf("a third domain was kept (%v) while both others run; fleet has %d", d != nil, f.Len())
	}
	a.vm.Lock().MarkDown(now)
	a.vm.Unlock()
	if d := s.ensure(dom("c", 3), "7.2.0", now); d == nil || f.Len() != 2 || s.doms[uuidString(dom("a", 1).UUID)] != nil {
		t.Fatalf("the stopped domain was not replaced: kept=%v, fleet %d", d != nil, f.Len())
	}
	if st := b.vm.LockRead(); st.Info.Name != "b" || st.Info.UUID != uuidString(dom("b", 2).UUID) || st.Info.Version != "7.2.0" {
		t.Errorf("identity %+v", st.Info)
	}
	b.vm.Unlock()
}

// migrationLab is a source with one domain and a session that no
// connection backs: events go through handle, polls through applyJob.
type migrationLab struct {
	t   *testing.T
	ses *session
	dom libvirt.Domain
}

func newMigrationLab(t *testing.T) *migrationLab {
	s := New(fleet.New(fleet.Options{}), Options{Socket: "/nonexistent"})
	return &migrationLab{t: t, ses: &session{s: s, version: "7.2.0", wake: make(chan struct{}, 1)},
		dom: libvirt.Domain{Name: "web", UUID: libvirt.UUID{7}}}
}

func (l *migrationLab) pass(n int32) {
	l.ses.handle(&libvirt.DomainEventCallbackMigrationIterationMsg{Dom: l.dom, Iteration: n})
}

func (l *migrationLab) lifecycle(ev libvirt.DomainEventType, detail int32) {
	l.ses.handle(&libvirt.DomainEventCallbackLifecycleMsg{Msg: libvirt.DomainEventLifecycleMsg{Dom: l.dom, Event: int32(ev), Detail: detail}})
}

// poll applies what a poll read: cur, the running job's statistics, and
// done, the completed job's.
func (l *migrationLab) poll(cur, done jobRead) bool {
	d := l.ses.s.known(l.dom)
	st := d.vm.Lock()
	defer d.vm.Unlock()
	return d.applyJob(st, cur, done, log.NewNopLogger())
}

// migration returns the migration's status and the ends counted
// (completed, failed, cancelled).
func (l *migrationLab) migration() (vmstate.Migration, [3]uint64) {
	d := l.ses.s.known(l.dom)
	st := d.vm.LockRead()
	defer d.vm.Unlock()
	return st.Migration, st.MigrationEnds
}

func (l *migrationLab) want(what, status string, ends [3]uint64) {
	l.t.Helper()
	if m, got := l.migration(); m.Status != status || got != ends {
		l.t.Fatalf("%s: status %q, ends %v; want %q, %v", what, m.Status, got, status, ends)
	}
}

// job makes a jobRead of statistics of type typ with figures.
func job(typ libvirt.DomainJobType, op libvirt.DomainJobOperation, figures map[string]uint64) jobRead {
	params := jobParams(op, figures)
	j := jobRead{key: statsKey(int32(typ), params)}
	j.info, j.migration = migrateInfo(int32(typ), params)
	return j
}

var (
	noJob     = jobRead{}
	running   = job(libvirt.DomainJobUnbounded, libvirt.DomainJobOperationStrDump, map[string]uint64{"memory_total": 1 << 26, "memory_processed": 1 << 20, "memory_iteration": 1})
	dumped    = job(libvirt.DomainJobCompleted, libvirt.DomainJobOperationStrDump, savedFigures)
	dumpedToo = job(libvirt.DomainJobCompleted, libvirt.DomainJobOperationStrDump, map[string]uint64{"time_elapsed": 250, "memory_total": 1 << 26, "memory_processed": 600000, "memory_iteration": 3})
)

// TestMigrationFollowedThroughEvents: the first pass of a migration
// starts it (QEMU is in setup at its first pass) and has the session poll
// its job; a save or a migration away that stops the domain completes it,
// counted once however many stopped events say so; a domain destroyed
// completes no migration, and a domain started anew has none.
func TestMigrationFollowedThroughEvents(t *testing.T) {
	l := newMigrationLab(t)
	for i, detail := range []libvirt.DomainEventStoppedDetailType{libvirt.DomainEventStoppedSaved, libvirt.DomainEventStoppedMigrated} {
		l.pass(1)
		l.pass(2)
		if m, _ := l.migration(); m.Status != "setup" || m.Pass != 2 || l.ses.migrating[uuidString(l.dom.UUID)].dom != l.dom {
			t.Fatalf("after two passes: status %q, pass %d, polled %v", m.Status, m.Pass, l.ses.migrating)
		}
		l.lifecycle(libvirt.DomainEventStopped, int32(detail))
		l.lifecycle(libvirt.DomainEventStopped, int32(detail))
		l.want(fmt.Sprintf("stopped (detail %d) twice", detail), "completed", [3]uint64{uint64(i + 1), 0, 0})
	}
	l.pass(1)
	l.lifecycle(libvirt.DomainEventStopped, int32(libvirt.DomainEventStoppedDestroyed))
	l.want("destroyed during a migration", "setup", [3]uint64{2, 0, 0})
	l.lifecycle(libvirt.DomainEventStarted, 0)
	l.lifecycle(libvirt.DomainEventStopped, int32(libvirt.DomainEventStoppedSaved))
	l.want("started anew, then saved unseen", "none", [3]uint64{2, 0, 0})
}

// TestMigrationEndFromCompletedJob: polls show a running migration's
// figures; at its end, statistics of the completed job other than those
// read before are its own (completed, counted once), while the same ones
// are an earlier job's: libvirt keeps a failed or cancelled job's not,
// so how it ended is not known, and nothing is counted.
func TestMigrationEndFromCompletedJob(t *testing.T) {
	l := newMigrationLab(t)
	l.pass(1)
	if again := l.poll(running, noJob); !again {
		t.Fatal("a running migration's poll said to stop polling")
	}
	if m, _ := l.migration(); m.Status != "active" || m.Transferred != 1<<20 || !m.HaveRAM {
		t.Fatalf("running: %+v", m)
	}
	if again := l.poll(noJob, dumped); again {
		t.Fatal("an ended migration's poll said to poll again")
	}
	l.want("ended with new statistics", "completed", [3]uint64{1, 0, 0})

	// A second dump, aborted: the completed job's statistics are still
	// the first's.
	l.pass(1)
	l.poll(running, noJob)
	l.poll(noJob, dumped)
	l.want("ended with the earlier job's statistics", "", [3]uint64{1, 0, 0})
	if m, _ := l.migration(); m.Known || m.InProgress() {
		t.Errorf("an end not known: known %v, in progress %v; want neither", m.Known, m.InProgress())
	}

	// A third, fast: it ended before any poll saw it run.
	l.pass(1)
	l.poll(noJob, dumpedToo)
	l.want("a fast one with new statistics", "completed", [3]uint64{2, 0, 0})
}

// TestLatePassStartsNothing: the passes come on their own subscription,
// so the last one may be folded after the poll applied the end. It is
// counted as an event, but starts no migration, and a poll after it
// reads the same completed statistics without counting them again.
func TestLatePassStartsNothing(t *testing.T) {
	l := newMigrationLab(t)
	l.pass(1)
	l.pass(2)
	l.poll(noJob, dumped)
	l.pass(3)
	l.want("a late pass", "completed", [3]uint64{1, 0, 0})
	if again := l.poll(noJob, dumped); again {
		t.Error("polled again after the end")
	}
	l.want("polled after a late pass", "completed", [3]uint64{1, 0, 0})

	// Nor does a late pass after a stopped-saved end.
	l.pass(1)
	l.lifecycle(libvirt.DomainEventStopped, int32(libvirt.DomainEventStoppedSaved))
	l.pass(2)
	l.poll(noJob, dumped)
	l.want("a late pass after saved", "completed", [3]uint64{2, 0, 0})
}

// TestReadPollsAMigrationLeftRunning: a read that finds no migration
// running while the VM has one running (it ended while the exporter was
// not connected) has it polled, so that its end is read.
func TestReadPollsAMigrationLeftRunning(t *testing.T) {
	l := newMigrationLab(t)
	l.pass(1)
	d := l.ses.s.known(l.dom)
	st := d.vm.Lock()
	poll := l.ses.apply(d, st, domainRead{status: "running", active: true}, time.Now())
	d.vm.Unlock()
	if !poll {
		t.Error("a read without a running job left the VM's running migration unpolled")
	}
	st = d.vm.Lock()
	d.applyJob(st, noJob, dumped, log.NewNopLogger())
	poll = l.ses.apply(d, st, domainRead{status: "running", active: true, completedKey: dumped.key}, time.Now())
	d.vm.Unlock()
	if poll || d.completedKey != dumped.key {
		t.Errorf("a read after the end: poll %v, completed key %q", poll, d.completedKey)
	}
}

// TestIOStatusKnownOnlyFromThisSession: a domain read running has its
// disks ok; paused on an error, it keeps what this session's events said,
// unless no disk holds an error (a resume folded after the error that
// followed it); found paused by a new session, its disks' statuses are
// not known.
func TestIOStatusKnownOnlyFromThisSession(t *testing.T) {
	l := newMigrationLab(t)
	d := l.ses.s.ensure(l.dom, "7.2.0", time.Now())
	read := func(ses *session, status string) string {
		st := d.vm.Lock()
		defer d.vm.Unlock()
		ses.apply(d, st, domainRead{status: status, active: true, x: &domainXML{Disks: []xmlDisk{
			{Device: "disk", Target: xmlTarget{Bus: "ide"}, Alias: xmlAlias{Name: "ide0-0-0"}}}}}, time.Now())
		return st.Devices["ide0-0-0"].IOStatus
	}
	ioError := func(action string) {
		l.ses.handle(&libvirt.DomainEventCallbackIOErrorReasonMsg{Msg: libvirt.DomainEventIOErrorReasonMsg{Dom: l.dom, DevAlias: "ide0-0-0",
			Action: int32(map[string]libvirt.DomainEventIOErrorAction{"pause": libvirt.DomainEventIoErrorPause}[action]), Reason: "enospc"}})
	}
	if got := read(l.ses, "running"); got != "ok" {
		t.Fatalf("running: %q, want ok", got)
	}
	ioError("pause")
	if got := read(l.ses, "io-error"); got != "nospace" {
		t.Fatalf("paused on the error this session saw: %q, want nospace", got)
	}
	// The resume folded after the error it was followed by.
	l.lifecycle(libvirt.DomainEventResumed, 0)
	if got := read(l.ses, "io-error"); got != "" {
		t.Errorf("paused on an error no disk holds: %q, want unknown", got)
	}
	if got := read(l.ses, "running"); got != "ok" {
		t.Fatalf("running again: %q, want ok", got)
	}
	ioError("pause")
	other := &session{s: l.ses.s, version: "7.2.0", wake: make(chan struct{}, 1)}
	if got := read(other, "io-error"); got != "" {
		t.Errorf("found paused on an error by a new session: %q, want unknown", got)
	}
}

// TestPollingStopsAtTheEnd: a migration whose poll says it ended is no
// longer polled, unless a new one registered it during that poll.
func TestPollingStopsAtTheEnd(t *testing.T) {
	l := newMigrationLab(t)
	uuid := uuidString(l.dom.UUID)
	l.ses.pollMigration(l.dom)
	registerAgain := true
	err := l.ses.pollMigrations(func(libvirt.Domain) (bool, error) {
		if registerAgain {
			l.ses.pollMigration(l.dom) // a new migration's first pass
		}
		return false, nil
	})
	if _, polled := l.ses.migrating[uuid]; err != nil || !polled {
		t.Fatalf("registered again during its last poll: polled %v, err %v", polled, err)
	}
	registerAgain = false
	if err := l.ses.pollMigrations(func(libvirt.Domain) (bool, error) { return false, nil }); err != nil {
		t.Fatal(err)
	}
	if _, polled := l.ses.migrating[uuid]; polled {
		t.Error("an ended migration still polled")
	}
}

// TestStaleReadLeavesTheEvents: a read during which an event was folded
// is not applied (the event is newer) and the domain is read again, at
// most maxRereads times in a row; a fresh read is applied.
func TestStaleReadLeavesTheEvents(t *testing.T) {
	l := newMigrationLab(t)
	d := l.ses.s.ensure(l.dom, "7.2.0", time.Now())
	status := func() string {
		st := d.vm.LockRead()
		defer d.vm.Unlock()
		return st.Status
	}
	for i := range maxRereads + 1 {
		applied := d.applied
		l.lifecycle(libvirt.DomainEventSuspended, 0) // paused while the read ran
		l.ses.pending = nil
		l.ses.settle(d, l.dom, applied, domainRead{status: "running", active: true})
		_, again := l.ses.pending[uuidString(l.dom.UUID)]
		if status() != "paused" || again != (i < maxRereads) {
			t.Fatalf("stale read %d: status %q, read again %v; want paused, again %v", i+1, status(), again, i < maxRereads)
		}
	}
	l.ses.settle(d, l.dom, d.applied, domainRead{status: "running", active: true})
	if status() != "running" || d.rereads != 0 {
		t.Errorf("a fresh read: status %q, rereads %d; want running, 0", status(), d.rereads)
	}
}
