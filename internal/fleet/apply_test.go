package fleet

import (
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/journal"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// TestApplyKeepsTheEventInTheJournal: a source's one call folds the event
// and keeps it, with the VM's name and UUID for the event log.
func TestApplyKeepsTheEventInTheJournal(t *testing.T) {
	var logged []journal.Record
	f := New(Options{Journal: journal.New(journal.Options{Log: func(r journal.Record) { logged = append(logged, r) }})})
	v, err := f.Add("k", Meta{DefaultName: "web", Kind: Listener}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	st := v.Lock()
	v.Apply(qmp.Event{Name: "GUEST_PANICKED", Data: []byte(`{"action":"pause"}`)})
	v.Unlock()
	if st.Events["GUEST_PANICKED"] == nil || st.Events["GUEST_PANICKED"].Count != 1 {
		t.Errorf("the event was not folded")
	}
	got, _ := v.Events().Entries()
	if len(got) != 1 || got[0].Event != "GUEST_PANICKED" || string(got[0].Data) != `{"action":"pause"}` || v.Events().Source() != "listener" {
		t.Errorf("journal holds %+v", got)
	}
	if len(logged) != 1 || logged[0].VM != "web" {
		t.Errorf("log got %+v", logged)
	}
	f.Remove(v)
	if got, _ := v.Events().Entries(); len(got) != 0 {
		t.Errorf("a removed VM's ring still holds %d events", len(got))
	}
}

// BenchmarkApply measures an event's fold with and without the journal:
// the journal's price per event.
func BenchmarkApply(b *testing.B) {
	ev := qmp.Event{Name: "BLOCK_IO_ERROR", Time: time.Now(),
		Data: []byte(`{"device":"disk0","node-name":"n0","operation":"write","action":"report","nospace":false,"reason":"Input/output error"}`)}
	for _, c := range []struct {
		name string
		j    *journal.Journal
	}{{"no-journal", nil}, {"journal", journal.New(journal.Options{})}} {
		b.Run(c.name, func(b *testing.B) {
			f := New(Options{Journal: c.j})
			v, _ := f.Add("k", Meta{DefaultName: "web"}, time.Now())
			b.ReportAllocs()
			for b.Loop() {
				v.Lock()
				v.Apply(ev)
				v.Unlock()
			}
		})
	}
}
