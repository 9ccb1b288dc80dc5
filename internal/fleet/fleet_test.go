package fleet

import (
	"testing"
	"time"
)

// TestAddStartsCounters: a VM's counters start from zero when its source
// adds it, and the state says when (its OpenMetrics _created), to the
// millisecond.
func TestAddStartsCounters(t *testing.T) {
	f := New(Options{})
	at := time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC)
	v, err := f.Add("k", Meta{DefaultName: "k"}, at)
	if err != nil {
		t.Fatal(err)
	}
	st := v.LockRead()
	defer v.Unlock()
	if want := int64(1777636800123); st.CountersSince != want || !st.DownSince.Equal(at) {
		t.Errorf("CountersSince %d, DownSince %v; want %d and %v", st.CountersSince, st.DownSince, want, at)
	}
}
