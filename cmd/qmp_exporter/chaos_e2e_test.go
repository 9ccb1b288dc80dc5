package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/hostile"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// Sizes of the chaos test. Twenty healthy fake VMs emit
// chaosHealthyEvents each at chaosHealthyRate per second, 240 events/s in
// all, for about 17 s: slow enough that they are still emitting when the
// last chaos step ends (about 10 s after the start; the log shows how many
// had been sent at each step).
const (
	chaosHealthy       = 20
	chaosHealthyEvents = 200
	chaosHealthyRate   = 12.0
	// chaosTimeout bounds the test once the exporter is built.
	chaosTimeout = 2 * time.Minute
	// chaosFloodFor is how long the flooding peer floods.
	chaosFloodFor = 8 * time.Second
	// chaosScrapeTimeout is the scraper's client timeout: a hang
	// detector, far above any scrape's time, not a performance target
	// (make bench measures the scrape). A scrape that waited on a hung
	// peer would never end, and fails at it; the log gives the real
	// figures.
	chaosScrapeTimeout = 10 * time.Second
	// chaosMaxRSS bounds the exporter's peak resident memory (VmHWM) after
	// a 64 MiB line, a flood and thirty sessions.
	chaosMaxRSS = 200 << 20
	// chaosMaxHugeWrite bounds what the 64 MiB-line peer gets to write
	// in one session: --qmp.max-message-bytes (1 MiB) plus socket buffers.
	chaosMaxHugeWrite = 8 << 20
)

// chaosFlags are the exporter's flags in the chaos test: a hung QEMU is
// detected within seconds (a refresh, then a command timeout) and retried
// at most 2 s apart.
var chaosFlags = []string{
	"--qmp.command-timeout=2s", "--qmp.dial-timeout=2s", "--qmp.max-backoff=2s",
	"--qmp.refresh-interval=2s", "--qmp.max-message-bytes=1048576",
}

// TestChaosEndToEnd runs one exporter against everything at once: twenty
// healthy fake VMs that keep emitting events, eight hostile fake monitors
// (never greets, never finishes the handshake, garbage, invalid UTF-8,
// replies with unknown ids, a 64 MiB line, half a line then silence, an
// event flood) and two real QEMUs. While the healthy VMs emit, QEMU #1 is
// SIGKILLed and started again on the same socket, QEMU #2 is SIGSTOPped
// (a hung peer) and SIGCONTed, and a second exporter is pointed at QEMU
// #1's socket. /metrics is scraped every 200 ms throughout.
//
// It checks that the healthy VMs lose no event, every scrape succeeds
// (none waits on a hung peer: chaosScrapeTimeout), each broken peer shows qmp_up 0 (never 1) and a
// warning naming it, the peers that misbehave without being broken stay
// up with their anomalies counted, the second exporter waits without
// stealing the session or crashing, no peer received a command outside
// the allow-list, the exporter's peak RSS, goroutines and file
// descriptors stay bounded, and it still exits promptly on SIGTERM. It
// takes about 20 s, and at most chaosTimeout after the build.
func TestChaosEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	qemulab.RequireQEMU(t)
	bctx, bcancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer bcancel()
	bin := buildExporter(t, bctx)
	ctx, cancel := context.WithTimeout(t.Context(), chaosTimeout)
	defer cancel()
	began := time.Now()
	dir := t.TempDir()
	sock := func(name string) string { return filepath.Join(dir, name+".qmp") }

	// The fake peers.
	peers := map[string]*hostile.Peer{}
	var names []string // every VM of the configuration, in order
	serve := func(name string, b hostile.Behaviour) *hostile.Peer {
		t.Helper()
		p, err := hostile.Serve(ctx, sock(name), b)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := p.Close(); err != nil {
				t.Errorf("peer %s: %v", name, err)
			}
		})
		peers[name] = p
		names = append(names, name)
		return p
	}
	var healthy []string
	for i := range chaosHealthy {
		name := fmt.Sprintf("healthy-%02d", i)
		serve(name, hostile.Healthy{
			Identity: hostile.Identity{Name: name, UUID: fmt.Sprintf("c4a05000-0000-4000-8000-%012d", i)},
			Events:   chaosHealthyEvents, Rate: chaosHealthyRate,
		})
		healthy = append(healthy, name)
	}
	// Broken peers: never up.
	broken := []struct {
		name string
		b    hostile.Behaviour
		// logged is what the warning about the VM must say.
		logged string
	}{
		{"never-greet", hostile.NeverGreet{}, "waiting for greeting"},
		{"no-caps", hostile.NoCapabilitiesReply{}, "negotiating capabilities"},
		{"garbage", hostile.Garbage{}, "protocol error"},
		{"huge-line", hostile.HugeLine{}, qmp.ErrMessageTooLarge.Error()},
		{"half-line", hostile.HalfLineThenHang{}, "did not answer"},
	}
	for _, b := range broken {
		serve(b.name, b.b)
	}
	// Peers that misbehave but answer: up, with the anomalies counted.
	serve("unknown-id", hostile.UnknownID{Identity: hostile.Identity{Name: "unknown-id", UUID: "c4a05000-0000-4000-8000-0000000000a1"}})
	serve("invalid-utf8", hostile.InvalidUTF8{Identity: hostile.Identity{Name: "invalid-utf8", UUID: "c4a05000-0000-4000-8000-0000000000a2"}})
	flood := serve("flood", hostile.Flood{Identity: hostile.Identity{Name: "flood", UUID: "c4a05000-0000-4000-8000-0000000000a3"}, For: chaosFloodFor})

	// The real QEMUs.
	qemuOpts := func(n int) qemulab.Options {
		name := fmt.Sprintf("qemu-%d", n)
		return qemulab.Options{Dir: filepath.Join(dir, "vm-"+name), Name: name,
			UUID: fmt.Sprintf("c4a05000-0000-4000-8000-0000000000b%d", n), ExporterSocket: sock(name)}
	}
	startQEMU := func(n int) *qemulab.VM {
		t.Helper()
		vm, err := qemulab.Start(ctx, qemuOpts(n))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { vm.Close() })
		return vm
	}
	qemu1, qemu2 := startQEMU(1), startQEMU(2)
	names = append(names, "qemu-1", "qemu-2")
	ctl := func(vm *qemulab.VM, cmd string) {
		t.Helper()
		if _, err := vm.Ctl.Execute(ctx, cmd, nil); err != nil {
			t.Fatalf("%s on the control monitor: %v", cmd, err)
		}
	}

	var cfg strings.Builder
	cfg.WriteString("vms:\n")
	for _, n := range names {
		fmt.Fprintf(&cfg, "  - name: %s\n    socket: %q\n", n, sock(n))
	}
	cfgPath := filepath.Join(dir, "chaos.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	e := startExporter(t, ctx, bin, append([]string{"--config.file=" + cfgPath}, chaosFlags...)...)
	watch := []string{"qemu-1", "qemu-2"}
	for _, b := range broken {
		watch = append(watch, b.name)
	}
	sc := startScraper(ctx, e.exp.Addr, watch)
	defer sc.stop()

	healthySent := func() int {
		n := 0
		for _, h := range healthy {
			n += peers[h].Sent()
		}
		return n
	}
	step := func(what string) {
		t.Logf("%6.1fs  %-58s healthy events sent %4d/%d, flood %d", time.Since(began).Seconds(), what,
			healthySent(), chaosHealthy*chaosHealthyEvents, flood.Sent())
	}
	up := func(vm string) string { return `qmp_up{vm="` + vm + `"}` }
	counter := func(name, vm string) string { return name + `{vm="` + vm + `"}` }
	status := func(vm, s string) string { return `qmp_vm_status{status="` + s + `",vm="` + vm + `"}` }
	event := func(vm, ev string) string { return `qmp_events_total{event="` + ev + `",vm="` + vm + `"}` }

	step("exporter started")
	waitUntil(t, ctx, e.exp, "every answering VM up", func(m exporterproc.Metrics) string {
		var missing []string
		for _, n := range append(slices.Clone(healthy), "unknown-id", "invalid-utf8", "flood", "qemu-1", "qemu-2") {
			if !m.Has(up(n), 1) {
				missing = append(missing, n)
			}
		}
		return strings.Join(missing, " ")
	})
	step("every answering VM up")

	baseline := scrapeNow(t, ctx, e.exp)

	// 1. QEMU #1 is SIGKILLed mid-stream, while its control monitor makes
	// it emit RESETs back to back. QEMU answers system_reset once it has
	// requested the reset, and its main loop then resets and emits RESET
	// to every monitor; so at the SIGKILL the last answered reset may not
	// have happened yet, and one more may have happened unanswered. The
	// exporter must count every RESET QEMU emitted: the answered ones, give
	// or take that one. A new QEMU then starts on the same socket, and the
	// counter continues.
	var resets atomic.Int64
	resetsDone := make(chan struct{})
	go func(vm *qemulab.VM) {
		defer close(resetsDone)
		for {
			if _, err := vm.Ctl.Execute(ctx, "system_reset", nil); err != nil {
				return
			}
			resets.Add(1)
		}
	}(qemu1)
	e.wait("qemu-1 RESETs flowing", func(m exporterproc.Metrics) bool {
		v, _ := m.Value(event("qemu-1", "RESET"))
		return v >= 20
	})
	if err := qemu1.Kill(); err != nil {
		t.Fatal(err)
	}
	<-resetsDone
	step(fmt.Sprintf("qemu-1 SIGKILLed after %d answered system_resets", resets.Load()))
	m := e.wait("qemu-1 down after SIGKILL", func(m exporterproc.Metrics) bool { return m.Has(up("qemu-1"), 0) })
	killedResets := m[event("qemu-1", "RESET")]
	if n := float64(resets.Load()); killedResets < n-1 || killedResets > n+1 {
		t.Errorf("qemu-1: %v RESETs counted, %v system_resets answered before SIGKILL: want that many, give or take one", killedResets, n)
	}
	qemu1 = startQEMU(1)
	step("qemu-1 restarted on the same socket")
	e.wait("qemu-1 up again", func(m exporterproc.Metrics) bool {
		return m.Has(up("qemu-1"), 1) && m.Has(status("qemu-1", "running"), 1)
	})
	ctl(qemu1, "system_reset")
	e.wait("qemu-1 RESET counted on the new session, after the first ones", func(m exporterproc.Metrics) bool {
		return m.Has(event("qemu-1", "RESET"), killedResets+1)
	})
	step(fmt.Sprintf("qemu-1 back, %v RESETs counted", killedResets+1))

	// 2. QEMU #2 is SIGSTOPped: a hung peer. The next refresh times out,
	// the session is dropped and retried; scrapes go on (the scraper
	// checks them).
	if err := syscall.Kill(qemu2.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(qemu2.Pid, syscall.SIGCONT) })
	step("qemu-2 SIGSTOPped")
	m = e.wait("qemu-2 down with a command timeout", func(m exporterproc.Metrics) bool {
		v, _ := m.Value(counter("qmp_command_timeouts_total", "qemu-2"))
		return m.Has(up("qemu-2"), 0) && v > 0
	})
	v, _ := m.Value(counter("qmp_command_timeouts_total", "qemu-2"))
	step(fmt.Sprintf("qemu-2 down, %v command timeout(s)", v))
	if err := syscall.Kill(qemu2.Pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	e.wait("qemu-2 up again after SIGCONT", func(m exporterproc.Metrics) bool {
		return m.Has(up("qemu-2"), 1) && m.Has(status("qemu-2", "running"), 1)
	})
	step("qemu-2 SIGCONTed and back")

	// 3. A second exporter on QEMU #1's socket waits: QEMU serves one
	// client at a time. The first keeps its session (no new attempt), the
	// second shows 0 and keeps retrying without crashing.
	m1 := scrapeNow(t, ctx, e.exp)
	attempts1, _ := m1.Value(counter("qmp_connection_attempts_total", "qemu-1"))
	second := startExporter(t, ctx, bin, append([]string{"--qmp.socket=" + sock("qemu-1")}, chaosFlags...)...)
	step("second exporter started on qemu-1's socket")
	second.wait("second exporter waiting: qemu-1 down, attempts failed", func(m exporterproc.Metrics) bool {
		f, _ := m.Value(counter("qmp_connection_failures_total", "qemu-1"))
		return m.Has(up("qemu-1"), 0) && f >= 2
	})
	m1 = scrapeNow(t, ctx, e.exp)
	if a, _ := m1.Value(counter("qmp_connection_attempts_total", "qemu-1")); !m1.Has(up("qemu-1"), 1) || a != attempts1 {
		t.Errorf("first exporter lost qemu-1 to the second: qmp_up %v, attempts %v -> %v", m1[up("qemu-1")], attempts1, a)
	}
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	err := second.exp.Stop(sctx)
	scancel()
	if err != nil {
		t.Errorf("second exporter did not exit cleanly: %v\n%s", err, second.exp.Logs())
	}
	step("second exporter stopped")
	leftAfterChaos := chaosHealthy*chaosHealthyEvents - healthySent()
	checkLogClean(t, "second exporter", second.exp.Logs())
	if ls := warnLines(second.exp.Logs(), "qemu-1"); len(ls) == 0 {
		t.Errorf("second exporter logged no warning about qemu-1:\n%s", second.exp.Logs())
	} else {
		t.Logf("second exporter: %s", ls[0])
	}

	// 4. The healthy peers and the flood finish; the exporter must have
	// counted every event they sent.
	for _, n := range append(slices.Clone(healthy), "flood") {
		select {
		case <-peers[n].EventsDone():
		case <-ctx.Done():
			t.Fatalf("%s: still emitting (%d sent): %v", n, peers[n].Sent(), ctx.Err())
		}
	}
	step("healthy peers and flood done emitting")
	final := waitUntil(t, ctx, e.exp, "every event counted", func(m exporterproc.Metrics) string {
		var lag []string
		for _, n := range append(slices.Clone(healthy), "flood") {
			if got, sent := eventSum(m, n), peers[n].Sent(); got != float64(sent) {
				lag = append(lag, fmt.Sprintf("%s counted %v of %d", n, got, sent))
			}
		}
		return strings.Join(lag, "; ")
	})
	step("every event counted")
	sc.stop()
	if leftAfterChaos == 0 {
		t.Logf("note: the healthy peers had sent all their events before the chaos steps ended; lower chaosHealthyRate")
	}

	// Healthy VMs: up, every event counted (waitUntil), no anomaly.
	var attempts []string
	for _, n := range healthy {
		if !final.Has(up(n), 1) {
			t.Errorf("%s: qmp_up %v at the end", n, final[up(n)])
		}
		if v := final[counter("qmp_protocol_errors_total", n)]; v != 0 {
			t.Errorf("%s: %v protocol errors from a healthy peer", n, v)
		}
		if a := final[counter("qmp_connection_attempts_total", n)]; a != 1 {
			attempts = append(attempts, fmt.Sprintf("%s:%v", n, a))
		}
	}
	t.Logf("healthy: %d VMs, %d events each, all counted; sessions re-established: %v", chaosHealthy, chaosHealthyEvents, attempts)

	// Broken peers: never up, retried, and a warning names each one.
	logs := e.exp.Logs()
	// Scraped after the logs were read: a session is counted when it
	// starts and logs when it ends, so every session that logged is
	// counted here.
	afterLogs := scrapeNow(t, ctx, e.exp)
	for _, b := range broken {
		n := b.name
		if !final.Has(up(n), 0) || sc.result.everUp[n] {
			t.Errorf("%s: qmp_up %v at the end, up in some scrape: %v", n, final[up(n)], sc.result.everUp[n])
		}
		if f := final[counter("qmp_connection_failures_total", n)]; f < 2 {
			t.Errorf("%s: %v connection failures, want at least 2 (retried)", n, f)
		}
		ls := warnLines(logs, n)
		i := slices.IndexFunc(ls, func(l string) bool { return strings.Contains(l, b.logged) })
		if i < 0 {
			t.Errorf("%s: no warning saying %q; its warnings:\n%s", n, b.logged, strings.Join(ls, "\n"))
			continue
		}
		t.Logf("%-12s %s", n+":", ls[i])
		// However much it misbehaves within a session (the garbage peer
		// sends a dozen bad lines per session), a broken peer costs at
		// most a warning per session, and sessions are paced by the
		// backoff: no log flood.
		if a := afterLogs[counter("qmp_connection_attempts_total", n)]; float64(len(ls)) > a+1 {
			t.Errorf("%s: %d warnings over %v sessions, want at most one per session:\n%s", n, len(ls), a, strings.Join(ls, "\n"))
		} else {
			t.Logf("%-12s %d warnings over %v sessions", n+":", len(ls), a)
		}
	}
	for _, n := range []string{"garbage", "unknown-id"} {
		if v := final[counter("qmp_protocol_errors_total", n)]; v == 0 {
			t.Errorf("%s: no protocol error counted", n)
		}
	}
	for _, n := range []string{"garbage", "half-line"} {
		if v := final[counter("qmp_command_timeouts_total", n)]; v == 0 {
			t.Errorf("%s: no command timeout counted", n)
		}
	}
	hw := peers["huge-line"].PayloadWritten()
	if len(hw) == 0 {
		t.Error("huge-line: no session wrote its line")
	}
	for _, w := range hw {
		if w > chaosMaxHugeWrite {
			t.Errorf("huge-line: a session took %d bytes of the line before the exporter hung up, want at most %d", w, chaosMaxHugeWrite)
		}
	}
	t.Logf("huge-line: %d sessions, bytes of the 64 MiB line written per session: %v", len(hw), hw)

	// Misbehaving but answering: up all along, anomalies counted.
	for _, n := range []string{"unknown-id", "invalid-utf8", "flood"} {
		if !final.Has(up(n), 1) || final[counter("qmp_connection_attempts_total", n)] != 1 {
			t.Errorf("%s: qmp_up %v, %v attempts; want up on its first session", n, final[up(n)], final[counter("qmp_connection_attempts_total", n)])
		}
	}
	if ls := warnLines(logs, "unknown-id"); len(ls) == 0 || !strings.Contains(ls[0], "unknown id") {
		t.Errorf("unknown-id: no warning about unknown ids: %q", ls)
	} else {
		t.Logf("%-12s %s", "unknown-id:", ls[0])
	}
	inv := peers["invalid-utf8"].Sent()
	named, unlabelled := eventSum(final, "invalid-utf8"), final[counter("qmp_events_unlabelled_total", "invalid-utf8")]
	if named != hostile.InvalidUTF8ValidNames || int(named+unlabelled) != inv {
		t.Errorf("invalid-utf8: %v events counted by name and %v unlabelled, want %d and %d", named, unlabelled, hostile.InvalidUTF8ValidNames, inv-hostile.InvalidUTF8ValidNames)
	}
	for _, d := range []string{hostile.InvalidUTF8TrayDevice, hostile.InvalidUTF8EscapedDevice} {
		if _, ok := final.Value(`qmp_tray_open{device="` + d + `",vm="invalid-utf8"}`); !ok {
			t.Errorf("invalid-utf8: no tray series for device %q:\n%s", d, filterVM(final, "qmp_tray_open", "invalid-utf8"))
		}
	}
	t.Logf("invalid-utf8: %s", filterVM(final, "qmp_vm_info", "invalid-utf8"))
	t.Logf("flood: %d events in %v (%.0f/s), all counted", flood.Sent(), chaosFloodFor, float64(flood.Sent())/chaosFloodFor.Seconds())

	// Nothing outside the allow-list reached any monitor.
	for _, n := range slices.Sorted(maps.Keys(peers)) {
		for _, c := range peers[n].Commands() {
			if !qmp.Allowed(c) {
				t.Errorf("%s received %q, which is not on the allow-list", n, c)
			}
		}
	}

	// Scrapes: every one succeeded, none slow; the body was always valid
	// UTF-8.
	r := sc.result
	lat := checkScrapes(t, r)
	t.Logf("scrapes: %d, all 200; latency median %v, p99 %v, max %v; %d-%d series",
		len(lat), lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond),
		lat[len(lat)-1].Round(time.Microsecond), r.minSeries, r.maxSeries)

	// Memory: the peak, not only the present, stays bounded.
	rss, hwm := procMemory(t, e.exp.Pid())
	t.Logf("exporter memory: VmRSS %.1f MiB, VmHWM (peak) %.1f MiB; largest process_resident_memory_bytes scraped %.1f MiB",
		float64(rss)/(1<<20), float64(hwm)/(1<<20), r.maxRSS/(1<<20))
	if hwm > chaosMaxRSS {
		t.Errorf("exporter peak RSS %d bytes, want under %d", hwm, chaosMaxRSS)
	}
	// Goroutines and file descriptors: the broken peers' failed sessions
	// (dozens by now) leave nothing behind. Both vary with the sessions in
	// progress, hence the slack.
	end := scrapeNow(t, ctx, e.exp)
	for _, g := range []struct {
		series string
		slack  float64
	}{{"go_goroutines", 20}, {"process_open_fds", 20}} {
		b, f := baseline[g.series], end[g.series]
		t.Logf("%s: %v with every VM up, %v at the end (max scraped %v)", g.series, b, f, r.max[g.series])
		if f > b+g.slack {
			t.Errorf("%s grew from %v to %v while the broken peers were retried", g.series, b, f)
		}
	}

	// SIGTERM with every hostile peer still there: a clean, prompt exit.
	stopAt := time.Now()
	sctx, scancel = context.WithTimeout(ctx, 10*time.Second)
	err = e.exp.Stop(sctx)
	scancel()
	if err != nil {
		t.Errorf("exporter did not exit cleanly on SIGTERM: %v", err)
	}
	t.Logf("exporter exited %v after SIGTERM", time.Since(stopAt).Round(time.Millisecond))
	logs = e.exp.Logs()
	checkLogClean(t, "exporter", logs)
	step("done")
}

// waitUntil scrapes until missing returns "" (it says what is still
// missing otherwise), for at most 30 s; on timeout the test fails with
// the last answer of missing and the tail of the exporter's log.
func waitUntil(t *testing.T, ctx context.Context, exp *exporterproc.Process, what string, missing func(exporterproc.Metrics) string) exporterproc.Metrics {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last string
	m, err := exp.WaitFor(wctx, what, func(m exporterproc.Metrics) bool {
		last = missing(m)
		return last == ""
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v\nstill missing: %s\nexporter log (tail):\n%s", what, wctx.Err(), last, tail(exp.Logs(), 40))
	}
	return m
}

// scrapeNow scrapes once, failing the test on error.
func scrapeNow(t *testing.T, ctx context.Context, exp *exporterproc.Process) exporterproc.Metrics {
	t.Helper()
	m, _, err := exp.Scrape(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// eventSum is qmp_events_total of vm summed over event names.
func eventSum(m exporterproc.Metrics, vm string) float64 {
	var sum float64
	for s, v := range m {
		if strings.HasPrefix(s, "qmp_events_total{") && strings.HasSuffix(s, `,vm="`+vm+`"}`) {
			sum += v
		}
	}
	return sum
}

// filterVM returns the series of metric name for vm, for messages.
func filterVM(m exporterproc.Metrics, name, vm string) string {
	var out []string
	for _, l := range strings.Split(m.Filter(name+"{"), "\n") {
		if strings.Contains(l, `vm="`+vm+`"`) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// warnLines returns the exporter's warnings about vm.
func warnLines(logs, vm string) []string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "level=warn") && strings.Contains(l, " vm="+vm+" ") && strings.Contains(l, "qmp") {
			out = append(out, l)
		}
	}
	return out
}

// checkLogClean fails the test on an error-level log line or a panic.
func checkLogClean(t *testing.T, who, logs string) {
	t.Helper()
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "level=error") || strings.HasPrefix(l, "panic:") || strings.Contains(l, "fatal error:") {
			t.Errorf("%s logged: %s", who, l)
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// procMemory reads a process's current and peak resident set size.
func procMemory(t *testing.T, pid int) (rss, hwm int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 || f[2] != "kB" {
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss = v << 10
		case "VmHWM:":
			hwm = v << 10
		}
	}
	if rss == 0 || hwm == 0 {
		t.Fatalf("no VmRSS/VmHWM in /proc/%d/status", pid)
	}
	return rss, hwm
}

// scraper fetches /metrics every 200 ms until stopped, and records how
// long each scrape took and what it showed.
type scraper struct {
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
	result scrapeResult // read only after stop
}

type scrapeResult struct {
	latencies            []time.Duration // of the successful scrapes
	failed               int
	firstErr             error
	invalidUTF8          int
	everUp               map[string]bool    // watched VMs seen with qmp_up 1
	maxRSS               float64            // largest process_resident_memory_bytes
	max                  map[string]float64 // largest go_goroutines, process_open_fds
	minSeries, maxSeries int
}

func startScraper(ctx context.Context, addr string, watch []string) *scraper {
	ctx, cancel := context.WithCancel(ctx)
	s := &scraper{cancel: cancel, done: make(chan struct{})}
	s.result.everUp = map[string]bool{}
	s.result.max = map[string]float64{}
	client := &http.Client{Timeout: chaosScrapeTimeout}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			start := time.Now()
			body, err := get(ctx, client, "http://"+addr+"/metrics")
			took := time.Since(start)
			if ctx.Err() != nil {
				return
			}
			r := &s.result
			if err == nil {
				var m exporterproc.Metrics
				if m, err = exporterproc.Parse(body); err == nil {
					r.latencies = append(r.latencies, took)
					if !utf8.Valid(body) {
						r.invalidUTF8++
					}
					for _, vm := range watch {
						if m.Has(`qmp_up{vm="`+vm+`"}`, 1) {
							r.everUp[vm] = true
						}
					}
					r.maxRSS = max(r.maxRSS, m["process_resident_memory_bytes"])
					for _, g := range []string{"go_goroutines", "process_open_fds"} {
						r.max[g] = max(r.max[g], m[g])
					}
					if r.minSeries == 0 || len(m) < r.minSeries {
						r.minSeries = len(m)
					}
					r.maxSeries = max(r.maxSeries, len(m))
				}
			}
			if err != nil {
				r.failed++
				if r.firstErr == nil {
					r.firstErr = fmt.Errorf("after %v: %w", took, err)
				}
			}
		}
	}()
	return s
}

// checkScrapes fails t unless every scrape in r succeeded (within
// chaosScrapeTimeout) with valid UTF-8 and at least 20 were taken; it
// returns the latencies sorted, for the log.
func checkScrapes(t *testing.T, r scrapeResult) []time.Duration {
	t.Helper()
	if r.failed > 0 {
		t.Errorf("%d of %d scrapes failed; first: %v", r.failed, len(r.latencies)+r.failed, r.firstErr)
	}
	if r.invalidUTF8 > 0 {
		t.Errorf("%d scrapes returned invalid UTF-8", r.invalidUTF8)
	}
	lat := slices.Sorted(slices.Values(r.latencies))
	if len(lat) < 20 {
		t.Fatalf("only %d scrapes", len(lat))
	}
	return lat
}

// stop stops the scraper and waits for it; s.result is then final.
func (s *scraper) stop() {
	s.once.Do(func() {
		s.cancel()
		<-s.done
	})
}

// get fetches url and insists on 200.
func get(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}
