package libvirtd

import (
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
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
