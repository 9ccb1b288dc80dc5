package journal

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-kit/log"
)

func record(name string, seq uint64) Record {
	return Record{Entry: Entry{Seq: seq, Time: t0.Add(time.Duration(seq) * time.Microsecond), Received: t0.Add(time.Second), Event: name,
		Data: json.RawMessage(`{"action":"pause"}`)}, VM: "web", UUID: "u-1", Source: "socket"}
}

func readLines(t *testing.T, path string) []LogLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []LogLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l LogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

// runLog starts l's writer; the returned stop writes what is queued and
// waits for it.
func runLog(l *LogFile) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	return func() { cancel(); <-done }
}

func TestLogWritesOneJSONObjectPerEvent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.log")
	l, err := OpenLog(path, 0, log.NewNopLogger())
	if err != nil {
		t.Fatal(err)
	}
	stop := runLog(l)
	l.Send(record("GUEST_PANICKED", 1))
	noTime := record("STOP", 2)
	noTime.Time = time.Time{}
	l.Send(noTime)
	stop()
	lines := readLines(t, path)
	if len(lines) != 2 {
		t.Fatalf("%d lines; want 2", len(lines))
	}
	want := LogLine{Time: "2026-12-02T10:00:00.000001Z", VM: "web", UUID: "u-1", Event: "GUEST_PANICKED",
		Data: json.RawMessage(`{"action":"pause"}`), Source: "socket", Received: "2026-12-02T10:00:01.000000Z"}
	if got := lines[0]; got.Time != want.Time || got.VM != want.VM || got.UUID != want.UUID || got.Event != want.Event ||
		string(got.Data) != string(want.Data) || got.Source != want.Source || got.Received != want.Received {
		t.Errorf("line = %+v\nwant   %+v", got, want)
	}
	if lines[1].Time != lines[1].Received {
		t.Errorf("an event without QEMU's time is logged at %s; want when it was received, %s", lines[1].Time, lines[1].Received)
	}
}

func TestLogReopensForLogrotate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.log")
	l, err := OpenLog(path, 0, log.NewNopLogger())
	if err != nil {
		t.Fatal(err)
	}
	stop := runLog(l)
	l.Send(record("A", 1))
	waitFor(t, func() bool { return len(readLines(t, path)) == 1 })
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	l.Reopen()
	waitFor(t, func() bool { _, err := os.Stat(path); return err == nil })
	l.Send(record("B", 2))
	stop()
	if old, cur := readLines(t, path+".1"), readLines(t, path); len(old) != 1 || old[0].Event != "A" || len(cur) != 1 || cur[0].Event != "B" {
		t.Errorf("rotated file has %+v, new file %+v; want A, then B", old, cur)
	}
}

func TestLogDropsAndCountsWhenTheQueueIsFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.log")
	l, err := OpenLog(path, 2, log.NewNopLogger())
	if err != nil {
		t.Fatal(err)
	}
	// The writer is not running: the queue of 2 fills, and Send must not block.
	for i := range 5 {
		l.Send(record("E", uint64(i)))
	}
	if l.Dropped() != 3 {
		t.Errorf("dropped %d; want 3", l.Dropped())
	}
	runLog(l)()
	if n := len(readLines(t, path)); n != 2 {
		t.Errorf("%d lines written; want the 2 queued", n)
	}
}

// waitFor polls cond, for what another goroutine does at its own pace.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met in 10s")
}
