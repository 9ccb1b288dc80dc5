package journal

import (
	"encoding/json"
	"fmt"
	"strings"
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
	if j.bytes > 50<<10 {
		t.Errorf("journal holds %d bytes, more than MaxBytes %d", j.bytes, 50<<10)
	}
	got, dropped := quiet.Entries()
	if names(got) != "GUEST_PANICKED" || dropped != 0 {
		t.Errorf("quiet VM kept %q, dropped %d; want its panic", names(got), dropped)
	}
	got, dropped = loud.Entries()
	if len(got) == 0 || len(got)+int(dropped) != 500 {
		t.Errorf("loud VM kept %d and dropped %d of 500", len(got), dropped)
	}
	if got[len(got)-1].Seq != j.seq {
		t.Errorf("the loud VM lost its newest event")
	}
}

func TestCloseGivesTheBytesBack(t *testing.T) {
	j := New(Options{})
	r := j.NewRing("libvirt")
	r.Add(event("STOP", `{"a":1}`), t0, "vm", "")
	r.Close()
	if j.bytes != 0 || len(j.rings) != 0 {
		t.Errorf("after Close the journal holds %d bytes in %d rings", j.bytes, len(j.rings))
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
	mk := func(sizes ...int) []*Ring {
		var rs []*Ring
		for _, s := range sizes {
			rs = append(rs, &Ring{bytes: s})
		}
		return rs
	}
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
		if got := waterLevel(mk(c.sizes...), c.target); got != c.want {
			t.Errorf("waterLevel(%v, %d) = %d; want %d", c.sizes, c.target, got, c.want)
		}
	}
}
