package journal

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

func event(name, data string) Event {
	var d []byte
	if data != "" {
		d = []byte(data)
	}
	return Event{Name: name, Data: d, Time: t0}
}

func names(entries []Entry) string {
	var b strings.Builder
	for i, e := range entries {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(e.Event)
	}
	return b.String()
}

func TestRingKeepsTheNewestKeepEventsAndCountsTheRest(t *testing.T) {
	j := New(Options{Keep: 3})
	r := j.NewRing("socket")
	for i := range 5 {
		r.Add(event(fmt.Sprintf("E%d", i), ""), t0, "vm", "")
	}
	got, dropped := r.Entries()
	if names(got) != "E2 E3 E4" || dropped != 2 {
		t.Fatalf("kept %q, dropped %d; want E2 E3 E4, dropped 2", names(got), dropped)
	}
	if got[0].Seq >= got[1].Seq || got[1].Seq >= got[2].Seq {
		t.Errorf("sequence numbers not increasing: %d %d %d", got[0].Seq, got[1].Seq, got[2].Seq)
	}
	if last, ok := r.Last(); !ok || last.Event != "E4" {
		t.Errorf("Last = %q, %v; want E4", last.Event, ok)
	}
}

func TestRingCopiesData(t *testing.T) {
	j := New(Options{})
	r := j.NewRing("socket")
	buf := []byte(`{"action":"pause"}`)
	r.Add(Event{Name: "GUEST_PANICKED", Data: buf}, t0, "vm", "")
	copy(buf, `{"action":"XXXXX"}`) // the reader reuses its buffer
	got, _ := r.Entries()
	if string(got[0].Data) != `{"action":"pause"}` {
		t.Errorf("data = %s; the ring must keep its own copy", got[0].Data)
	}
}

func TestDataOverTheLimitIsCutAndMarked(t *testing.T) {
	j := New(Options{MaxData: 64})
	r := j.NewRing("socket")
	long := `{"reason":"` + strings.Repeat("é", 100) + `"}`
	r.Add(event("BLOCK_IO_ERROR", long), t0, "vm", "")
	r.Add(event("STOP", `{}`), t0, "vm", "")
	got, _ := r.Entries()
	e := got[0]
	if !e.Truncated || len(e.Data) > 64 {
		t.Fatalf("truncated=%v, %d bytes; want a marked cut of at most 64 bytes", e.Truncated, len(e.Data))
	}
	var s string
	if err := json.Unmarshal(e.Data, &s); err != nil {
		t.Fatalf("a cut event's data is not a JSON string: %v (%s)", err, e.Data)
	}
	if !strings.HasPrefix(long, s) || !utf8.ValidString(s) {
		t.Errorf("cut data %q is not a valid beginning of the original", s)
	}
	if got[1].Truncated || string(got[1].Data) != `{}` {
		t.Errorf("short data changed: %s truncated=%v", got[1].Data, got[1].Truncated)
	}
}

func TestControlCharactersCannotMakeACutDataLonger(t *testing.T) {
	j := New(Options{MaxData: 100})
	r := j.NewRing("socket")
	r.Add(event("X", `{"s":"`+strings.Repeat(`\u0001`, 200)+`"}`), t0, "vm", "")
	got, _ := r.Entries()
	if len(got[0].Data) > 100 || !json.Valid(got[0].Data) {
		t.Errorf("cut data is %d bytes, valid JSON %v; want at most 100, valid", len(got[0].Data), json.Valid(got[0].Data))
	}
}

func TestInvalidUTF8BecomesReplacementCharacters(t *testing.T) {
	j := New(Options{})
	r := j.NewRing("socket")
	r.Add(event("X", "{\"s\":\"a\xffb\"}"), t0, "vm", "")
	got, _ := r.Entries()
	if !utf8.Valid(got[0].Data) || !json.Valid(got[0].Data) || !strings.Contains(string(got[0].Data), "a\uFFFDb") {
		t.Errorf("data = %q; want valid UTF-8 JSON with U+FFFD", got[0].Data)
	}
}

func TestNoDataIsNil(t *testing.T) {
	j := New(Options{})
	r := j.NewRing("socket")
	r.Add(event("STOP", ""), t0, "vm", "")
	got, _ := r.Entries()
	if got[0].Data != nil || got[0].Truncated {
		t.Errorf("data = %q, truncated %v; want nil", got[0].Data, got[0].Truncated)
	}
}

// TestFleetBoundTakesFromTheLargest: over MaxBytes, the VMs holding the
// most lose their oldest events first; a quiet VM keeps its panic.
func TestFleetBoundTakesFromTheLargest(t *testing.T) {
	data := `{"reason":"` + strings.Repeat("x", 900) + `"}`
	j := New(Options{Keep: 1000, MaxBytes: 50 << 10})
	quiet := j.NewRing("socket")
	quiet.Add(event("GUEST_PANICKED", `{"action":"pause"}`), t0, "quiet", "")
	loud := j.NewRing("socket")
	for range 500 {
		loud.Add(event("BLOCK_IO_ERROR", data), t0, "loud", "")
	}
	if j.bytes.Load() > 50<<10 {
		t.Errorf("journal holds %d bytes, more than MaxBytes %d", j.bytes.Load(), 50<<10)
	}
	got, dropped := quiet.Entries()
	if names(got) != "GUEST_PANICKED" || dropped != 0 {
		t.Errorf("quiet VM kept %q, dropped %d; want its panic", names(got), dropped)
	}
	got, dropped = loud.Entries()
	if len(got) == 0 || len(got)+int(dropped) != 500 {
		t.Errorf("loud VM kept %d and dropped %d of 500", len(got), dropped)
	}
	if got[len(got)-1].Seq != j.seq.Load() {
		t.Errorf("the loud VM lost its newest event")
	}
}

func TestCloseGivesTheBytesBack(t *testing.T) {
	j := New(Options{})
	r := j.NewRing("libvirt")
	r.Add(event("STOP", `{"a":1}`), t0, "vm", "")
	r.Close()
	if j.bytes.Load() != 0 || len(j.rings) != 0 {
		t.Errorf("after Close the journal holds %d bytes in %d rings", j.bytes.Load(), len(j.rings))
	}
}

func TestLogSeesEveryEventInOrderWithItsVM(t *testing.T) {
	var got []Record
	j := New(Options{Keep: 2, Log: func(r Record) { got = append(got, r) }})
	r := j.NewRing("listener")
	for i := range 4 {
		r.Add(event(fmt.Sprintf("E%d", i), `{}`), t0, "web", "u-1")
	}
	if len(got) != 4 {
		t.Fatalf("log got %d records; want every one of 4 events, kept or not", len(got))
	}
	for i, rec := range got {
		if rec.Event != fmt.Sprintf("E%d", i) || rec.VM != "web" || rec.UUID != "u-1" || rec.Source != "listener" {
			t.Errorf("record %d = %+v", i, rec)
		}
	}
}

func TestWaterLevel(t *testing.T) {
	for _, c := range []struct {
		sizes  []int
		target int
		want   int
	}{
		{[]int{100, 10, 10}, 60, 40},
		{[]int{30, 20, 10}, 60, 30},
		{[]int{50, 50}, 60, 30},
		{[]int{100}, 0, 0},
	} {
		if got := waterLevel(c.sizes, c.target); got != c.want {
			t.Errorf("waterLevel(%v, %d) = %d; want %d", c.sizes, c.target, got, c.want)
		}
	}
}

// TestReusedSlotsDoNotLeakIntoCopies: once the ring is full, a new event
// takes the oldest slot's buffer; what Entries, Last and the log were
// given before must not change.
func TestReusedSlotsDoNotLeakIntoCopies(t *testing.T) {
	var logged []Record
	j := New(Options{Keep: 2, Log: func(r Record) { logged = append(logged, r) }})
	r := j.NewRing("socket")
	r.Add(event("A", `{"n":"aaaa"}`), t0, "vm", "")
	r.Add(event("B", `{"n":"bbbb"}`), t0, "vm", "")
	before, _ := r.Entries()
	last, _ := r.Last()
	r.Add(event("C", `{"n":"cccc"}`), t0, "vm", "") // reuses A's buffer
	if string(before[0].Data) != `{"n":"aaaa"}` || string(last.Data) != `{"n":"bbbb"}` || string(logged[0].Data) != `{"n":"aaaa"}` {
		t.Errorf("copies changed by a later event: entries %s, last %s, log %s", before[0].Data, last.Data, logged[0].Data)
	}
	now, _ := r.Entries()
	if names(now) != "B C" || string(now[1].Data) != `{"n":"cccc"}` {
		t.Errorf("ring holds %q %s", names(now), now[1].Data)
	}
}

// TestSteadyStreamAllocatesNothing: a full ring takes a new event into the
// oldest slot's buffer (the fold's per-event path allocates nothing, see
// CONTRIBUTING.md).
func TestSteadyStreamAllocatesNothing(t *testing.T) {
	j := New(Options{Keep: 4})
	r := j.NewRing("socket")
	ev := event("BLOCK_IO_ERROR", `{"device":"disk0","operation":"write","action":"report","reason":"Input/output error"}`)
	for range 4 {
		r.Add(ev, t0, "vm", "")
	}
	if n := testing.AllocsPerRun(100, func() { r.Add(ev, t0, "vm", "") }); n != 0 {
		t.Errorf("a full ring's Add allocates %v times; want 0", n)
	}
}

// TestConcurrentRingsAndShrink: VMs adding at once, past the fleet-wide
// bound, with pages reading: the race detector's test of the locks, and
// the bound holds afterwards.
func TestConcurrentRingsAndShrink(t *testing.T) {
	j := New(Options{Keep: 50, MaxBytes: 64 << 10})
	data := `{"reason":"` + strings.Repeat("y", 400) + `"}`
	var wg sync.WaitGroup
	for i := range 8 {
		r := j.NewRing("socket")
		wg.Go(func() {
			for k := range 500 {
				r.Add(event(fmt.Sprintf("E%d", k), data), t0, fmt.Sprintf("vm%d", i), "")
				if k%50 == 0 {
					r.Entries()
					r.Last()
				}
			}
		})
	}
	wg.Wait()
	j.shrink() // the last Adds may have left it to a shrink already running
	if b := j.bytes.Load(); b > 64<<10 {
		t.Errorf("journal holds %d bytes after the adds, more than MaxBytes", b)
	}
	var sum int64
	for r := range j.rings {
		sum += int64(r.bytes)
	}
	if sum != j.bytes.Load() {
		t.Errorf("rings hold %d bytes, the journal counts %d", sum, j.bytes.Load())
	}
}
