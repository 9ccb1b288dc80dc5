package qmpsock

import (
	"context"
	"fmt"
	"hash/crc32"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/goleak"

	"github.com/qmp-exporter/qmp_exporter/collector"
	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
	"github.com/qmp-exporter/qmp_exporter/qmp"
	"github.com/qmp-exporter/qmp_exporter/qmp/qmptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeQEMU answers the watcher's queries like QEMU 7.2 and lets a test hang
// up the current session, refuse connections, or stop answering.
type fakeQEMU struct {
	t *testing.T

	mu      sync.Mutex
	status  string
	name    string
	refuse  bool
	hang    bool
	current *qmptest.Server
	dials   int
	// extra answers commands before the defaults; nil for none.
	extra func(qmptest.Command) (qmptest.Reply, bool)
	// sameUUID makes every socket answer with the same UUID, as two
	// paths to one VM would.
	sameUUID bool
	// names and pids, when set, give a socket (by address) its own -name
	// and the process the kernel names as its peer (0: unknown).
	names map[string]string
	pids  map[string]int32
	// beforeSync are lines sent right after the qmp_capabilities reply.
	beforeSync []string
}

func (f *fakeQEMU) dial(ctx context.Context, network, address string, opts qmp.Options) (*qmp.Conn, int32, error) {
	f.mu.Lock()
	f.dials++
	if f.refuse {
		f.mu.Unlock()
		return nil, 0, &net.OpError{Op: "dial", Net: network, Err: errRefused}
	}
	pid := f.pids[address]
	f.mu.Unlock()
	f.mu.Lock()
	early := f.beforeSync
	f.mu.Unlock()
	client, srv := qmptest.New(f.t, qmptest.Options{HandleCapabilities: true, Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
		if cmd.Execute == "qmp_capabilities" {
			return qmptest.Raw(fmt.Sprintf(`{"return": {}, "id": %s}`, cmd.ID)).Then(qmptest.Raw(early...)), true
		}
		if cmd.Execute == "query-uuid" && !f.sameUUID {
			// A distinct UUID per socket, as distinct VMs have.
			return qmptest.Return(map[string]string{"UUID": fmt.Sprintf("0b5b6a4e-2f0e-4d59-9d4b-%012x", crc32.ChecksumIEEE([]byte(address)))}), true
		}
		if name, ok := f.names[address]; ok && cmd.Execute == "query-name" {
			return qmptest.Return(map[string]string{"name": name}), true
		}
		return f.handle(cmd)
	}})
	f.mu.Lock()
	f.current = srv
	f.mu.Unlock()
	conn, err := qmp.NewConn(ctx, client, opts)
	return conn, pid, err
}

var errRefused = &refusedError{}

type refusedError struct{}

func (*refusedError) Error() string { return "connection refused" }

func (f *fakeQEMU) handle(cmd qmptest.Command) (qmptest.Reply, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hang {
		return qmptest.NoReply, true
	}
	if f.extra != nil {
		if r, ok := f.extra(cmd); ok {
			return r, true
		}
	}
	switch cmd.Execute {
	case "query-status":
		return qmptest.Return(map[string]any{"status": f.status, "running": f.status == "running", "singlestep": false}), true
	case "query-name":
		return qmptest.Return(map[string]string{"name": f.name}), true
	case "query-uuid":
		return qmptest.Return(map[string]string{"UUID": "0b5b6a4e-2f0e-4d59-9d4b-7c1c7d0e2a11"}), true
	case "query-version":
		return qmptest.ReturnRaw(`{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}`), true
	}
	return qmptest.Reply{}, false
}

func (f *fakeQEMU) server() *qmptest.Server {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.current
}

func (f *fakeQEMU) set(fn func(*fakeQEMU)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// newTestManager runs a Manager with targets against fake in a synctest
// bubble; the returned stop ends it and waits for every goroutine.
func newTestManager(t *testing.T, fake *fakeQEMU, targets ...Target) (*Source, func()) {
	return startSource(t, fake, Options{DialTimeout: 2 * time.Second, CommandTimeout: time.Second, MaxBackoff: 8 * time.Second, RefreshInterval: 30 * time.Second}, targets...)
}

// startSource is newTestManager with opts.
func startSource(t *testing.T, fake *fakeQEMU, opts Options, targets ...Target) (*Source, func()) {
	m := New(fleet.New(fleet.Options{}), opts)
	m.dial = fake.dial
	m.Sync(targets)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	return m, func() { cancel(); <-done }
}

// scrape renders the named families as the exporter's own (non-pedantic)
// registry would: VMs with configured labels carry them as constant
// labels of descriptors that Describe does not list.
func scrape(t *testing.T, m *Source, names ...string) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector.NewCollector(m.fleet), collector.NewListenerCollector(m.EachListenerCount))
	b, err := testutil.GatherAndFormat(reg, expfmt.TypeTextPlain, names...)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestWatcherLifecycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "demo"}
		target := Target{Network: "unix", Address: "/run/qemu/vm1.qmp"}
		m, stop := newTestManager(t, fake, target)
		defer stop()

		// connect → sync → up.
		synctest.Wait()
		want := `qmp_up{vm="demo"} 1`
		if got := scrape(t, m, "qmp_up"); !strings.Contains(got, want) {
			t.Fatalf("after connect:\n%s\nwant %s", got, want)
		}

		// Events fold in; STOP makes the watcher re-read query-status.
		fake.set(func(f *fakeQEMU) { f.status = "paused" })
		if err := fake.server().Emit("STOP", nil); err != nil {
			t.Fatal(err)
		}
		if err := fake.server().Emit("RESET", map[string]any{"guest": false, "reason": "host-qmp-system-reset"}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		got := scrape(t, m, "qmp_events_total", "qmp_vm_status")
		for _, w := range []string{`qmp_events_total{event="STOP",vm="demo"} 1`, `qmp_events_total{event="RESET",vm="demo"} 1`, `qmp_vm_status{status="paused",vm="demo"} 1`, `qmp_vm_status{status="running",vm="demo"} 0`} {
			if !strings.Contains(got, w) {
				t.Errorf("missing %s in\n%s", w, got)
			}
		}

		// QEMU goes away: up 0, status unknown, counters kept; redial
		// fails while it is gone and backs off.
		fake.set(func(f *fakeQEMU) { f.refuse = true })
		fake.server().Close()
		synctest.Wait()
		got = scrape(t, m, "qmp_up", "qmp_events_total", "qmp_vm_status")
		for _, w := range []string{`qmp_up{vm="demo"} 0`, `qmp_events_total{event="STOP",vm="demo"} 1`, `qmp_vm_status{status="paused",vm="demo"} 0`} {
			if !strings.Contains(got, w) {
				t.Errorf("after hang-up, missing %s in\n%s", w, got)
			}
		}
		fake.mu.Lock()
		before := fake.dials
		fake.mu.Unlock()
		time.Sleep(20 * time.Second) // virtual time: backoff doubles to the 8s cap
		synctest.Wait()
		fake.mu.Lock()
		redials := fake.dials - before
		fake.mu.Unlock()
		// 0.1+0.2+0.4+0.8+1.6+3.2+6.4 ≈ 12.7s, then 8s waits, with jitter in
		// the upper half: at least 6 attempts, never more than 9.
		if redials < 5 || redials > 10 {
			t.Errorf("%d redials in 20s of refused connections; want a capped exponential backoff", redials)
		}

		// QEMU is back: the session returns with the counters intact.
		fake.set(func(f *fakeQEMU) { f.refuse = false; f.status = "running" })
		time.Sleep(9 * time.Second)
		synctest.Wait()
		got = scrape(t, m, "qmp_up", "qmp_events_total", "qmp_connection_failures_total")
		for _, w := range []string{`qmp_up{vm="demo"} 1`, `qmp_events_total{event="STOP",vm="demo"} 1`, `qmp_events_total{event="RESET",vm="demo"} 1`} {
			if !strings.Contains(got, w) {
				t.Errorf("after reconnect, missing %s in\n%s", w, got)
			}
		}
		if !strings.Contains(got, "qmp_connection_failures_total{vm=\"demo\"} ") || strings.Contains(got, "qmp_connection_failures_total{vm=\"demo\"} 0") {
			t.Errorf("refused dials not counted:\n%s", got)
		}
	})
}

func TestWatcherDropsHungPeer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "hung"}
		m, stop := newTestManager(t, fake, Target{Network: "unix", Address: "/x/hung.sock"})
		defer stop()
		synctest.Wait()
		fake.set(func(f *fakeQEMU) { f.hang = true })
		// The periodic refresh (30 s) finds the peer silent (1 s) and
		// drops the session once a drain has read for 250 ms that it has
		// nothing more to say.
		time.Sleep(32 * time.Second)
		synctest.Wait()
		got := scrape(t, m, "qmp_up", "qmp_command_timeouts_total")
		if !strings.Contains(got, `qmp_up{vm="hung"} 0`) || !strings.Contains(got, `qmp_command_timeouts_total{vm="hung"} 1`) {
			t.Errorf("hung peer still up, or its timeout not counted:\n%s", got)
		}
	})
}

func TestManagerSyncRemovesSeries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running"}
		a := Target{Name: "a", Network: "unix", Address: "/x/a.sock"}
		b := Target{Name: "b", Network: "unix", Address: "/x/b.sock"}
		m, stop := newTestManager(t, fake, a, b)
		synctest.Wait()
		got := scrape(t, m, "qmp_up")
		if !strings.Contains(got, `qmp_up{vm="a"} 1`) || !strings.Contains(got, `qmp_up{vm="b"} 1`) {
			t.Fatalf("both VMs should be up:\n%s", got)
		}
		m.Sync([]Target{a})
		synctest.Wait()
		got = scrape(t, m, "qmp_up")
		if strings.Contains(got, `vm="b"`) {
			t.Errorf("removed VM still exported:\n%s", got)
		}
		stop()
		// synctest.Test fails if any goroutine of the bubble is left.
	})
}

func TestDuplicateQEMUNamesStayUnique(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "same"}
		m, stop := newTestManager(t, fake,
			Target{Network: "unix", Address: "/x/one.qmp"},
			Target{Network: "unix", Address: "/x/two.qmp"})
		defer stop()
		synctest.Wait()
		if problems, err := testutil.CollectAndLint(collector.NewCollector(m.fleet)); err != nil || len(problems) > 0 {
			t.Fatalf("lint: %v %v", problems, err)
		}
		got := scrape(t, m, "qmp_up")
		if !strings.Contains(got, `qmp_up{vm="same"} 1`) || !strings.Contains(got, `qmp_up{vm="two"} 1`) {
			t.Errorf("want one VM named after QEMU and the other after its socket:\n%s", got)
		}
	})
}

// TestMigrationPolledWithoutEvents: with the events capability off (the
// exporter must not turn it on), a migration that starts and ends is seen
// by polling query-migrate every second while it is in progress.
// migrateScript answers a fakeQEMU's query-migrate from a script: the
// replies given to set in turn, the last one from then on. It counts the
// polls.
type migrateScript struct {
	mu      sync.Mutex
	replies []string
	polls   int
}

func newMigrateScript(fake *fakeQEMU, replies ...string) *migrateScript {
	m := &migrateScript{replies: replies}
	fake.extra = func(cmd qmptest.Command) (qmptest.Reply, bool) {
		if cmd.Execute != "query-migrate" {
			return qmptest.Reply{}, false
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		m.polls++
		r := m.replies[0]
		if len(m.replies) > 1 {
			m.replies = m.replies[1:]
		}
		return qmptest.ReturnRaw(r), true
	}
	return m
}

func (m *migrateScript) set(replies ...string) {
	m.mu.Lock()
	m.replies = replies
	m.mu.Unlock()
}

func (m *migrateScript) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.polls
}

func TestMigrationPolledWithoutEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "mig"}
		migrating := func(status string) string {
			return `{"status": "` + status + `", "ram": {"transferred": 1000, "remaining": 500, "total": 2000, "dirty-pages-rate": 12, "dirty-sync-count": 3}, "total-time": 1500, "expected-downtime": 300}`
		}
		script := newMigrateScript(fake, `{}`)
		m, stop := newTestManager(t, fake, Target{Network: "unix", Address: "/x/mig.sock"})
		defer stop()
		synctest.Wait()
		// A management tool starts a migration. No event reaches the
		// exporter; the next periodic refresh (30 s) sees it...
		script.set(migrating("active"))
		time.Sleep(31 * time.Second)
		synctest.Wait()
		got := scrape(t, m, "qmp_migration_status", "qmp_migration_transferred_bytes", "qmp_migration_pass")
		for _, w := range []string{`qmp_migration_status{status="active",vm="mig"} 1`, `qmp_migration_transferred_bytes{vm="mig"} 1000`, `qmp_migration_pass{vm="mig"} 3`} {
			if !strings.Contains(got, w) {
				t.Errorf("missing %s in\n%s", w, got)
			}
		}
		// ...and from then on it is polled every second, so an end that
		// lasts only until the next refresh is not missed.
		before := script.count()
		script.set(migrating("completed"))
		time.Sleep(1500 * time.Millisecond)
		synctest.Wait()
		if script.count()-before < 1 {
			t.Errorf("query-migrate not polled while the migration ran")
		}
		got = scrape(t, m, "qmp_migrations_total", "qmp_migration_status")
		if !strings.Contains(got, `qmp_migrations_total{result="completed",vm="mig"} 1`) || !strings.Contains(got, `qmp_migration_status{status="completed",vm="mig"} 1`) {
			t.Errorf("completed migration not seen by polling:\n%s", got)
		}
		// Once it has ended, polling stops.
		before = script.count()
		time.Sleep(20 * time.Second)
		synctest.Wait()
		if n := script.count() - before; n != 0 {
			t.Errorf("%d polls after the migration ended", n)
		}
	})
}

// TestMigrationUnfinalCompletedPolledAgain: QEMU 7.2 can answer
// completed before it has measured total-time and downtime (both 0). The
// watcher polls once more for the final figures, and counts the end once.
func TestMigrationUnfinalCompletedPolledAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "mig"}
		script := newMigrateScript(fake, `{}`, `{"status": "active", "total-time": 800, "setup-time": 4, "ram": {"transferred": 1000}}`)
		m, stop := newTestManager(t, fake, Target{Network: "unix", Address: "/x/mig.sock"})
		defer stop()
		synctest.Wait()
		time.Sleep(31 * time.Second) // the refresh sees it active
		synctest.Wait()
		script.set(
			`{"status": "completed", "total-time": 0, "downtime": 0, "setup-time": 4, "ram": {"transferred": 2000}}`,
			`{"status": "completed", "total-time": 1500, "downtime": 12, "setup-time": 4, "ram": {"transferred": 2000}}`,
		)
		time.Sleep(1500 * time.Millisecond) // a poll: completed, times unknown
		synctest.Wait()
		got := scrape(t, m, "qmp_migrations_total", "qmp_migration_total_time_seconds")
		if !strings.Contains(got, `qmp_migrations_total{result="completed",vm="mig"} 1`) || strings.Contains(got, "qmp_migration_total_time_seconds{") {
			t.Errorf("after the unfinal reply, want the end counted and no total time:\n%s", got)
		}
		time.Sleep(time.Second) // the next poll: final figures, same end
		synctest.Wait()
		got = scrape(t, m, "qmp_migrations_total", "qmp_migration_total_time_seconds", "qmp_migration_downtime_seconds")
		for _, w := range []string{`qmp_migrations_total{result="completed",vm="mig"} 1`, `qmp_migration_total_time_seconds{vm="mig"} 1.5`, `qmp_migration_downtime_seconds{vm="mig"} 0.012`} {
			if !strings.Contains(got, w) {
				t.Errorf("missing %s in\n%s", w, got)
			}
		}
	})
}

// TestMigrationUnfinalPollsBounded: a peer that never gives the final
// figures of a completed migration is not polled for them for ever.
func TestMigrationUnfinalPollsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "mig"}
		script := newMigrateScript(fake, `{"status": "active", "total-time": 800}`)
		_, stop := newTestManager(t, fake, Target{Network: "unix", Address: "/x/mig.sock"})
		defer stop()
		synctest.Wait()
		script.set(`{"status": "completed", "total-time": 0, "downtime": 0}`)
		time.Sleep(1500 * time.Millisecond) // the poll of the active migration
		synctest.Wait()
		before := script.count()
		time.Sleep(25 * time.Second) // before the next refresh
		synctest.Wait()
		if n := script.count() - before; n < 1 || n > vmstate.MaxUnfinalPolls {
			t.Errorf("%d polls for the final figures, want 1 to %d", n, vmstate.MaxUnfinalPolls)
		}
	})
}

// TestReplyThenEventInOneWrite: QEMU answers query-status "paused" and
// then, in the same write, RESUME. The reply must not be applied after the
// event: the VM is running.
func TestReplyThenEventInOneWrite(t *testing.T) {
	// One P: the reader goes on to the RESUME before the goroutine that
	// sent the query runs again, as on a busy host.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "order"}
		m, stop := newTestManager(t, fake, Target{Network: "unix", Address: "/x/order.sock"})
		defer stop()
		synctest.Wait()
		fake.set(func(f *fakeQEMU) {
			f.extra = func(cmd qmptest.Command) (qmptest.Reply, bool) {
				if cmd.Execute != "query-status" {
					return qmptest.Reply{}, false
				}
				// Both lines in one write, so one read gets both.
				return qmptest.Raw(`{"return": {"status": "paused", "running": false}, "id": ` + string(cmd.ID) + "}\r\n" +
					`{"event": "RESUME", "timestamp": {"seconds": 9, "microseconds": 0}}`), true
			}
		})
		// The STOP makes the watcher ask query-status.
		if err := fake.server().Emit("STOP", nil); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		got := scrape(t, m, "qmp_vm_status")
		if !strings.Contains(got, `qmp_vm_status{status="running",vm="order"} 1`) {
			t.Errorf("a reply applied after the event QEMU sent after it:\n%s", got)
		}
	})
}

// TestSharedUUIDOverSockets: two sockets whose QEMUs report one UUID are
// one VM only when they are provably one QEMU: the same -name and, when
// the kernel names the process serving each socket, the same process.
// Otherwise both are shown (the second under its socket's name when the
// names collide), and counted as a conflict.
func TestSharedUUIDOverSockets(t *testing.T) {
	for _, tc := range []struct {
		name      string
		names     map[string]string
		pids      map[string]int32
		want      []string
		conflicts uint64
	}{
		{"same name, no process known (two paths to one VM)", nil, nil,
			[]string{`qmp_up{vm="one"} 1`}, 0},
		{"same name, same process (two monitors of one QEMU)", nil, map[string]int32{"/x/a.qmp": 7, "/x/bb.qmp": 7},
			[]string{`qmp_up{vm="one"} 1`}, 0},
		{"same name, two processes", nil, map[string]int32{"/x/a.qmp": 7, "/x/bb.qmp": 8},
			[]string{`qmp_up{vm="one"} 1`, `qmp_up{vm="bb"} 1`}, 1},
		{"two names (clones), no process known", map[string]string{"/x/bb.qmp": "two"}, nil,
			[]string{`qmp_up{vm="one"} 1`, `qmp_up{vm="two"} 1`}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fake := &fakeQEMU{t: t, status: "running", name: "one", sameUUID: true, names: tc.names, pids: tc.pids}
				m, stop := newTestManager(t, fake,
					Target{Network: "unix", Address: "/x/a.qmp"},
					Target{Network: "unix", Address: "/x/bb.qmp"})
				defer stop()
				synctest.Wait()
				got := scrape(t, m, "qmp_up")
				for _, w := range tc.want {
					if !strings.Contains(got, w) {
						t.Errorf("missing %s in\n%s", w, got)
					}
				}
				if n := strings.Count(got, "qmp_up{"); n != len(tc.want) {
					t.Errorf("%d VMs shown, want %d:\n%s", n, len(tc.want), got)
				}
				if n := m.fleet.UUIDConflicts(); n != tc.conflicts {
					t.Errorf("UUIDConflicts() = %d, want %d", n, tc.conflicts)
				}
			})
		})
	}
}

// TestReplacedVMKeepsItsFirstEvents: when a different VM (another UUID)
// answers on a socket, its state starts from zero, but the events it sent
// before the sync identified it are kept.
func TestReplacedVMKeepsItsFirstEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "a"}
		m, stop := newTestManager(t, fake, Target{Network: "unix", Address: "/x/r.qmp"})
		defer stop()
		synctest.Wait()
		if err := fake.server().Emit("RESET", nil); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		// Another VM now answers on the socket; it sends a STOP right
		// after the handshake, before the exporter has read its UUID.
		fake.set(func(f *fakeQEMU) {
			f.sameUUID = true // the fixed UUID differs from the per-socket one
			f.beforeSync = []string{`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}`}
		})
		fake.server().Close()
		time.Sleep(time.Second)
		synctest.Wait()
		got := scrape(t, m, "qmp_events_total", "qmp_up")
		if !strings.Contains(got, `qmp_events_total{event="STOP",vm="a"} 1`) || strings.Contains(got, `event="RESET"`) {
			t.Errorf("want the new VM's STOP kept and the old VM's RESET gone:\n%s", got)
		}
	})
}

// TestQueryTimeoutLogsOneLine: a query QEMU does not answer ends the
// session with an error that names it, on one log line.
func TestQueryTimeoutLogsOneLine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs syncBuffer
		fake := &fakeQEMU{t: t, status: "running", name: "hung"}
		m, stop := startSource(t, fake, Options{CommandTimeout: time.Second, Logger: log.NewLogfmtLogger(&logs)}, Target{Network: "unix", Address: "/x/hung.sock"})
		defer stop()
		synctest.Wait()
		fake.set(func(f *fakeQEMU) { f.hang = true })
		if err := fake.server().Emit("STOP", nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		synctest.Wait()
		var line string
		for l := range strings.Lines(logs.String()) {
			if strings.Contains(l, "dropping qmp session") {
				line = l
			}
		}
		if want := `err="qemu did not answer query-status within 1s"`; !strings.Contains(line, want) {
			t.Errorf("log line %q lacks %s", line, want)
		}
		got := scrape(t, m, "qmp_up", "qmp_command_timeouts_total")
		if !strings.Contains(got, `qmp_up{vm="hung"} 0`) || !strings.Contains(got, `qmp_command_timeouts_total{vm="hung"} 1`) {
			t.Errorf("hung query not counted as a timeout:\n%s", got)
		}
	})
}

// TestStopEndsHungQuery: stopping a watcher whose query QEMU does not
// answer returns at once, without waiting for the query's timeout.
func TestStopEndsHungQuery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "hung"}
		_, stop := newTestManager(t, fake, Target{Network: "unix", Address: "/x/hung.sock"})
		synctest.Wait()
		fake.set(func(f *fakeQEMU) { f.hang = true })
		if err := fake.server().Emit("STOP", nil); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		before := time.Now()
		stop()
		if waited := time.Since(before); waited != 0 {
			t.Errorf("stopping took %v of virtual time; want no wait for the query's timeout", waited)
		}
	})
}

// TestMigrationInProgressAtConnectIsPolled: a migration that is already
// running when the session starts is polled from then on.
func TestMigrationInProgressAtConnectIsPolled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "mig"}
		script := newMigrateScript(fake, `{"status": "active"}`)
		_, stop := newTestManager(t, fake, Target{Network: "unix", Address: "/x/mig.sock"})
		defer stop()
		synctest.Wait()
		time.Sleep(5500 * time.Millisecond)
		synctest.Wait()
		if polls := script.count(); polls < 5 {
			t.Errorf("query-migrate read %d times in the first 5.5 s of a migration in progress, want the sync's and one a second", polls)
		}
	})
}

// opaqueContext hides its parent's cancelCtx, so that the context package
// watches it with a goroutine per child: a child context that is never
// cancelled shows up as a goroutine left behind.
type opaqueContext struct{ context.Context }

func (opaqueContext) Value(any) any { return nil }

// TestSessionsLeaveNoContexts: each session cancels every context it
// derives from the watcher's, so reconnecting does not pile them up.
func TestSessionsLeaveNoContexts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "flappy"}
		opts := Options{CommandTimeout: time.Second, MaxBackoff: time.Second}
		opts.setDefaults()
		t0 := Target{Network: "unix", Address: "/x/flappy.sock"}
		vm, err := fleet.New(fleet.Options{}).Add(t0.key(), t0.meta(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		w := newWatcher(t0, vm, opts, fake.dial)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { w.run(opaqueContext{ctx}); close(done) }()
		defer func() { cancel(); <-done }()
		synctest.Wait()
		// Only goroutines that watch a context count: other tests'
		// goroutines ending meanwhile must not hide a leak.
		watching := func() int { return goroutinesIn("context.") }
		base := watching()
		for range 5 {
			fake.server().Close()
			time.Sleep(time.Second)
			synctest.Wait()
		}
		if n := watching() - base; n != 0 {
			t.Errorf("%d goroutines more watch a context after 5 reconnects: contexts left registered", n)
		}
	})
}

// goroutinesIn counts the goroutines whose stack mentions any of funcs.
func goroutinesIn(funcs ...string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	k := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		for _, f := range funcs {
			if strings.Contains(g, f) {
				k++
				break
			}
		}
	}
	return k
}

// TestIdleVMHasOneGoroutine: a connected VM with nothing to do costs one
// goroutine, its connection's reader; a worker exists only while there are
// queries to run.
func TestIdleVMHasOneGoroutine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "idle"}
		const n = 3
		var targets []Target
		for i := range n {
			targets = append(targets, Target{Network: "unix", Address: fmt.Sprintf("/x/idle%d.sock", i)})
		}
		m, stop := newTestManager(t, fake, targets...)
		defer stop()
		synctest.Wait()
		count := func() int { return goroutinesIn("collector.(*watcher)", "qmp.(*Conn)") }
		if got := count(); got != n {
			t.Errorf("%d goroutines for %d idle VMs, want one each", got, n)
		}
		// Events that ask for queries are served, and the worker goes.
		fake.set(func(f *fakeQEMU) { f.status = "paused" })
		if err := fake.server().Emit("STOP", nil); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		paused := 0
		got := scrape(t, m, "qmp_vm_status")
		for l := range strings.Lines(got) {
			if strings.HasPrefix(l, `qmp_vm_status{status="paused",`) && strings.HasSuffix(l, "} 1\n") {
				paused++
			}
		}
		if paused != 1 {
			t.Errorf("query-status after STOP not applied:\n%s", got)
		}
		if got := count(); got != n {
			t.Errorf("%d goroutines for %d VMs after a round of queries, want one each", got, n)
		}
	})
}
