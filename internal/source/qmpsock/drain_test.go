package qmpsock

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-kit/log"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/hostile"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
)

// logLines returns the lines of logs that contain msg.
func logLines(logs, msg string) []string {
	var out []string
	for l := range strings.Lines(logs) {
		if strings.Contains(l, msg) {
			out = append(out, l)
		}
	}
	return out
}

// drainMsg is the message of the line that says what a drain read.
const drainMsg = `msg="read what qemu had sent before the session ended"`

// TestPowerOffMidQueryCountsEveryEvent: a QEMU whose guest panics with
// action poweroff sends GUEST_PANICKED, which asks for query-status, then
// its last events and SHUTDOWN, and hangs up, while the watcher writes
// that query. The write fails with a broken pipe; the watcher still folds
// every event QEMU sent before it left, and says so on one line.
//
// The peer stops reading before it writes, so the query's write fails
// whenever it comes; it comes at once, while the reader is still busy
// with the rest: 5,000 events are about 750 KB, more than a unix socket
// buffers, so the peer is still writing them when the watcher reads the
// first.
func TestPowerOffMidQueryCountsEveryEvent(t *testing.T) {
	const n = 5000
	path := filepath.Join(t.TempDir(), "off.qmp")
	now := make(chan struct{})
	p, err := hostile.Serve(t.Context(), path, hostile.PowerOff{
		Identity: hostile.Identity{Name: "off", UUID: "0ff0ff00-0000-4000-8000-000000000001"},
		Events:   n, Now: now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("peer: %v", err)
		}
	})
	var logs syncBuffer
	f := fleet.New(fleet.Options{})
	src := New(f, Options{Logger: log.NewLogfmtLogger(&logs)})
	src.Sync([]Target{{Network: "unix", Address: path}})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { src.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	waitState(t, f, "the session is up", func(st *vmstate.State) bool { return st.Up })
	close(now)
	// Once the watcher dials again, the first session is over, its
	// drain included.
	waitState(t, f, "the watcher dialled again", func(st *vmstate.State) bool { return st.Attempts >= 2 })

	var counted, panics, shutdowns uint64
	f.Visible(time.Now(), func(_ *fleet.VM, _ string, st *vmstate.State) {
		for name, e := range st.Events {
			counted += e.Count
			switch name {
			case "GUEST_PANICKED":
				panics = e.Count
			case "SHUTDOWN":
				shutdowns = e.Count
			}
		}
	})
	if counted != uint64(p.Sent()) || p.Sent() != n || panics != 1 || shutdowns != 1 {
		t.Errorf("counted %d events (GUEST_PANICKED %d, SHUTDOWN %d); the peer sent %d; want all %d, each of the two once",
			counted, panics, shutdowns, p.Sent(), n)
	}
	// QEMU left: the session is lost (info), not dropped (a warning).
	if got := logLines(logs.String(), `msg="qmp session lost"`); len(got) != 1 || !strings.Contains(got[0], "writing query-") || !strings.Contains(got[0], "broken pipe") {
		t.Errorf("want the session lost on a query's failed write, on one line; got %q", got)
	}
	if got := logLines(logs.String(), "level=warn"); len(got) != 0 {
		t.Errorf("warnings about a VM that powered off: %q", got)
	}
	if got := logLines(logs.String(), drainMsg); len(got) != 1 || !strings.Contains(got[0], "level=info") || !strings.Contains(got[0], "complete=true") {
		t.Errorf("want one info line saying the drain read everything; got %q", got)
	}
	for _, c := range p.Commands() {
		if c != "qmp_capabilities" && !strings.HasPrefix(c, "query-") {
			t.Errorf("the peer received %q", c)
		}
	}
}

// waitState waits (bounded) until cond holds for the fleet's only VM.
func waitState(t *testing.T, f *fleet.Fleet, what string, cond func(*vmstate.State) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok := false
		f.Visible(time.Now(), func(_ *fleet.VM, _ string, st *vmstate.State) { ok = cond(st) })
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTimedOutSessionFoldsWhatFollows: when QEMU does not answer a query
// in time, the session ends with a drain: an event QEMU sends meanwhile
// is still counted, the drain ends once QEMU has been silent for a
// while, and one line says what it read and that it could not read to
// QEMU's end.
func TestTimedOutSessionFoldsWhatFollows(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs syncBuffer
		fake := &fakeQEMU{t: t, status: "running", name: "slow"}
		m, stop := startSource(t, fake, Options{CommandTimeout: time.Second, Logger: log.NewLogfmtLogger(&logs)}, Target{Network: "unix", Address: "/x/slow.sock"})
		defer stop()
		synctest.Wait()
		fake.set(func(f *fakeQEMU) { f.hang = true })
		srv := fake.server()
		if err := srv.Emit("STOP", nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // query-status times out: the drain begins
		synctest.Wait()
		if err := srv.Emit("RESUME", nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // 250 ms of silence end it
		synctest.Wait()
		got := scrape(t, m, "qmp_up", "qmp_events_total", "qmp_command_timeouts_total", "qmp_protocol_errors_total")
		for _, w := range []string{`qmp_up{vm="slow"} 0`, `qmp_events_total{event="RESUME",vm="slow"} 1`,
			`qmp_command_timeouts_total{vm="slow"} 1`, `qmp_protocol_errors_total{vm="slow"} 0`} {
			if !strings.Contains(got, w) {
				t.Errorf("missing %s in\n%s", w, got)
			}
		}
		lines := logLines(logs.String(), drainMsg)
		if len(lines) != 1 || !strings.Contains(lines[0], "level=warn") || !strings.Contains(lines[0], "events=1 ") ||
			!strings.Contains(lines[0], "complete=false") || !strings.Contains(lines[0], `end="nothing more within 250ms"`) {
			t.Errorf("want one warning saying the drain read one event and stopped on silence; got %q", lines)
		}
	})
}

// TestQEMUGoneMidQueryIsASessionLost: QEMU that exits while a query
// waits for its reply, between two messages or in the middle of one
// (killed while writing), ends a session that is lost, logged as info
// like any QEMU exit, not dropped with a warning.
func TestQEMUGoneMidQueryIsASessionLost(t *testing.T) {
	for _, tc := range []struct {
		name string
		last string // written before the hang-up
	}{
		{"between messages", ""},
		{"in the middle of one", `{"event": "RES`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var logs syncBuffer
				fake := &fakeQEMU{t: t, status: "running", name: "gone"}
				_, stop := startSource(t, fake, Options{CommandTimeout: time.Minute, Logger: log.NewLogfmtLogger(&logs)}, Target{Network: "unix", Address: "/x/gone.sock"})
				defer stop()
				synctest.Wait()
				fake.set(func(f *fakeQEMU) { f.hang = true; f.refuse = true })
				srv := fake.server()
				if err := srv.Emit("STOP", nil); err != nil { // asks for query-status
					t.Fatal(err)
				}
				synctest.Wait()
				if tc.last != "" {
					if err := srv.WriteRaw([]byte(tc.last)); err != nil {
						t.Fatal(err)
					}
				}
				srv.Close()
				synctest.Wait()
				if got := logLines(logs.String(), `msg="qmp session lost"`); len(got) != 1 || !strings.Contains(got[0], "level=info") {
					t.Errorf("want one info line saying the session was lost; got %q", got)
				}
				if got := logLines(logs.String(), `msg="dropping qmp session"`); len(got) != 0 {
					t.Errorf("QEMU's exit logged as a dropped session: %q", got)
				}
			})
		})
	}
}
