package libvirtd

import (
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

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

// TestMigrationFollowedThroughEvents: the first migration-iteration of a
// migration starts it (QEMU is in setup at its first pass) and has the
// session poll its job; a save or a migration away that stops the domain
// completes it, counted once however many stopped events say so, a
// domain destroyed completes no migration, and a domain started anew has
// none.
func TestMigrationFollowedThroughEvents(t *testing.T) {
	f := fleet.New(fleet.Options{})
	s := New(f, Options{Socket: "/nonexistent"})
	ses := &session{s: s, version: "7.2.0", wake: make(chan struct{}, 1)}
	dom := libvirt.Domain{Name: "web", UUID: libvirt.UUID{7}}
	stopped := func(detail libvirt.DomainEventStoppedDetailType) any {
		return &libvirt.DomainEventCallbackLifecycleMsg{Msg: libvirt.DomainEventLifecycleMsg{Dom: dom,
			Event: int32(libvirt.DomainEventStopped), Detail: int32(detail)}}
	}
	migration := func() (vmstate.Migration, [3]uint64) {
		d := s.known(dom)
		st := d.vm.LockRead()
		defer d.vm.Unlock()
		return st.Migration, st.MigrationEnds
	}

	for _, detail := range []libvirt.DomainEventStoppedDetailType{libvirt.DomainEventStoppedSaved, libvirt.DomainEventStoppedMigrated} {
		for pass := int32(1); pass <= 2; pass++ {
			ses.handle(&libvirt.DomainEventCallbackMigrationIterationMsg{Dom: dom, Iteration: pass})
		}
		m, ends := migration()
		if m.Status != "setup" || m.Pass != 2 || ses.migrating[uuidString(dom.UUID)] != dom {
			t.Fatalf("after two iterations: status %q, pass %d, polled %v", m.Status, m.Pass, ses.migrating)
		}
		before := ends[0]
		ses.handle(stopped(detail))
		ses.handle(stopped(detail))
		if m, ends := migration(); m.Status != "completed" || ends[0] != before+1 {
			t.Fatalf("stopped (detail %d) twice: status %q, completed %d, want completed once more than %d", detail, m.Status, ends[0], before)
		}
	}

	ses.handle(&libvirt.DomainEventCallbackMigrationIterationMsg{Dom: dom, Iteration: 1})
	ses.handle(stopped(libvirt.DomainEventStoppedDestroyed))
	if m, ends := migration(); m.Status != "setup" || ends != [3]uint64{2, 0, 0} {
		t.Errorf("destroyed during a migration: status %q, ends %v; want the migration's end left to its job", m.Status, ends)
	}
	// Started again: a new QEMU, which has no migration; a save it did
	// not see running counts nothing.
	ses.handle(&libvirt.DomainEventCallbackLifecycleMsg{Msg: libvirt.DomainEventLifecycleMsg{Dom: dom, Event: int32(libvirt.DomainEventStarted)}})
	ses.handle(stopped(libvirt.DomainEventStoppedSaved))
	if m, ends := migration(); m.Status != "none" || ends != [3]uint64{2, 0, 0} {
		t.Errorf("started, then saved unseen: status %q, ends %v; want none, no new end", m.Status, ends)
	}
}
