package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/hostile"
	"github.com/qmp-exporter/qmp_exporter/internal/source/qmpsock"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// Sizes of the listener chaos test: ten healthy VMs dial in and emit
// 150 events each, 10 per second, for about 15 s, while the hostile
// clients are at it.
const (
	dialInHealthy       = 10
	dialInHealthyEvents = 150
	dialInHealthyRate   = 10.0
	// dialInSwarm is how many silent connections the swarm keeps open:
	// more than the listener's 64 handshake slots.
	dialInSwarm = 100
	// dialInMaxGoroutines and dialInMaxFDs bound the exporter while up to
	// qmpsock.DefaultMaxDialledIn made-up VMs (a goroutine each) are
	// known: generous, the log gives the real figures.
	dialInMaxGoroutines = qmpsock.DefaultMaxDialledIn + 1000
	// dialInMaxVMs is --qmp.listen-max-vms for the test: below the
	// default, so that the bound seen is the flag's.
	dialInMaxVMs = 500
	// dialInMaxLogLines bounds the exporter's log over the whole test.
	dialInMaxLogLines = 300
	// dialInMaxTries bounds the connections a healthy VM needs to get in.
	dialInMaxTries = 10
	dialInMaxFDs   = 500
)

// hostileDialInEnv tells a child test process which hostile client to
// run: "kind:path". See TestHostileDialInHelper.
const hostileDialInEnv = "QMP_EXPORTER_HOSTILE_DIALIN"

// dialInKinds are the hostile clients of the listener chaos test, each run
// in a process of its own, as an attacker or a broken QEMU would be: the
// listener tells processes apart by their pid (SO_PEERCRED).
var dialInKinds = []struct {
	kind string
	// logged is what a warning about the kind's pid must say; "" when the
	// kind is not refused or failed (it answers).
	logged string
}{
	{"never-greet", "waiting for greeting"},
	{"no-caps", "negotiating capabilities"},
	{"garbage", "identifying a dialled-in peer failed"},
	{"huge-line", qmp.ErrMessageTooLarge.Error()},
	{"hang-up-loop", "handshake with a dialled-in peer failed"},
	{"swarm", "too many connections in their handshake from one process"},
	{"new-identity-loop", ""},
	{"invalid-utf8", ""},
}

// TestHostileDialInHelper is not a test: run as a child process by
// TestListenerChaosEndToEnd (with hostileDialInEnv set), it dials the
// exporter's listener as one kind of hostile client until its stdin
// closes, then prints how many connections it made and how many commands
// outside the read-only allow-list it received.
func TestHostileDialInHelper(t *testing.T) {
	spec := os.Getenv(hostileDialInEnv)
	if spec == "" {
		t.Skip("a child process of TestListenerChaosEndToEnd")
	}
	kind, path, _ := strings.Cut(spec, ":")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	n, retry := 1, 200*time.Millisecond
	var b hostile.Behaviour
	switch kind {
	case "never-greet":
		b = hostile.NeverGreet{}
	case "no-caps":
		b = hostile.NoCapabilitiesReply{}
	case "garbage":
		b = hostile.Garbage{}
	case "huge-line":
		b = hostile.HugeLine{}
	case "hang-up-loop":
		b, retry = hostile.HangUp{}, 0
	case "swarm":
		b, n, retry = hostile.NeverGreet{}, dialInSwarm, 20*time.Millisecond
	case "new-identity-loop":
		b, retry = hostile.NewIdentity{Prefix: "made-up"}, 0
	case "invalid-utf8":
		b = hostile.InvalidUTF8{Identity: hostile.Identity{Name: "invalid-utf8", UUID: "d1a11000-0000-4000-8000-0000000000a2"}}
	default:
		t.Fatalf("unknown kind %q", kind)
	}
	var peers []*hostile.Peer
	for range n {
		p, err := hostile.Dial(ctx, path, retry, b)
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, p)
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	cancel()
	conns, disallowed := 0, 0
	for _, p := range peers {
		if err := p.Close(); err != nil {
			t.Errorf("%s: %v", kind, err)
		}
		conns += p.Connections()
		for _, c := range p.Commands() {
			if !qmp.Allowed(c) {
				disallowed++
			}
		}
	}
	fmt.Printf("hostile-result connections=%d disallowed=%d\n", conns, disallowed)
}

// dialInChild is a hostile client running in a child process.
type dialInChild struct {
	kind  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   bytes.Buffer
}

func startDialInChild(t *testing.T, ctx context.Context, kind, path string) *dialInChild {
	t.Helper()
	c := &dialInChild{kind: kind}
	c.cmd = exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHostileDialInHelper$", "-test.count=1")
	c.cmd.Env = append(os.Environ(), hostileDialInEnv+"="+kind+":"+path)
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.stop() })
	return c
}

// stop ends the child and returns its connections and the commands
// outside the allow-list it received.
func (c *dialInChild) stop() (conns, disallowed int, err error) {
	if c.stdin != nil {
		c.stdin.Close()
		c.stdin = nil
		err = c.cmd.Wait()
	}
	m := regexp.MustCompile(`hostile-result connections=(\d+) disallowed=(\d+)`).FindStringSubmatch(c.out.String())
	if m == nil {
		return 0, 0, fmt.Errorf("%s: no result (%v):\n%s", c.kind, err, c.out.String())
	}
	conns, _ = strconv.Atoi(m[1])
	disallowed, _ = strconv.Atoi(m[2])
	return conns, disallowed, err
}

// TestListenerChaosEndToEnd points hostile clients at the exporter's
// --qmp.listen socket, each from a process of its own: one that connects
// and never greets, one that greets and never answers qmp_capabilities,
// one that sends garbage, one a 64 MiB line, one with invalid UTF-8 in
// everything it says (it answers, so it is up), one that connects and
// hangs up in a tight loop, one that makes up a new VM on every
// connection in a tight loop, and a swarm that keeps 100 silent
// connections open, more than the listener's handshake slots. While they
// are at it, ten healthy VMs (fake QEMUs in this process) dial in.
//
// It checks that every healthy VM gets in (none is crowded out) and loses
// no event, /metrics answers every scrape (within chaosScrapeTimeout, a
// hang detector) with valid UTF-8, the listener's refusals and failures show in
// qmp_listener_connections_total, a warning names the pid of each broken
// client and says what it did wrong, the listener logs each kind of
// trouble per client at most once per 10 s, the made-up VMs stay under
// qmpsock.DefaultMaxDialledIn, memory, goroutines and file descriptors
// stay bounded, no client received a command outside the allow-list, and
// the exporter exits cleanly on SIGTERM. It takes about 25 s.
func TestListenerChaosEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	bctx, bcancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer bcancel()
	bin := buildExporter(t, bctx)
	ctx, cancel := context.WithTimeout(t.Context(), chaosTimeout)
	defer cancel()
	began := time.Now()
	dir := t.TempDir()
	listenPath := filepath.Join(dir, "listen.sock")

	e := startExporter(t, ctx, bin, append([]string{"--qmp.listen=" + listenPath, "--qmp.listen-max-vms=" + strconv.Itoa(dialInMaxVMs)}, chaosFlags...)...)
	sc := startScraper(ctx, e.exp.Addr, []string{"never-greet", "no-caps", "garbage", "huge-line"})
	defer sc.stop()
	step := func(what string) { t.Logf("%6.1fs  %s", time.Since(began).Seconds(), what) }
	listener := func(result string) string {
		return `qmp_listener_connections_total{listener="` + listenPath + `",result="` + result + `"}`
	}
	up := func(vm string) string { return `qmp_up{vm="` + vm + `"}` }

	// The hostile clients, each in its own process.
	children := map[string]*dialInChild{}
	for _, k := range dialInKinds {
		children[k.kind] = startDialInChild(t, ctx, k.kind, listenPath)
	}
	step("hostile clients started")
	waitUntil(t, ctx, e.exp, "hostile clients refused and failed", func(m exporterproc.Metrics) string {
		var missing []string
		for _, r := range []string{"refused", "failed", "accepted"} {
			if v, _ := m.Value(listener(r)); v < 10 {
				missing = append(missing, fmt.Sprintf("%s %v", r, v))
			}
		}
		return strings.Join(missing, " ")
	})
	step("listener refusing and failing hostile clients")

	// The healthy VMs dial in while the hostile clients are at it, like
	// QEMUs started (or restarted) during an attack.
	var healthy []string
	peers := map[string]*hostile.Peer{}
	for i := range dialInHealthy {
		name := fmt.Sprintf("dialin-%02d", i)
		p, err := hostile.Dial(ctx, listenPath, 200*time.Millisecond, hostile.Healthy{
			Identity: hostile.Identity{Name: name, UUID: fmt.Sprintf("d1a11000-0000-4000-8000-%012d", i)},
			Events:   dialInHealthyEvents, Rate: dialInHealthyRate,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := p.Close(); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
		peers[name] = p
		healthy = append(healthy, name)
	}
	waitUntil(t, ctx, e.exp, "every healthy VM and invalid-utf8 up", func(m exporterproc.Metrics) string {
		var missing []string
		for _, n := range healthy {
			if !m.Has(up(n), 1) {
				missing = append(missing, n)
			}
		}
		if invalidUTF8Up(m) == "" {
			missing = append(missing, "invalid-utf8")
		}
		return strings.Join(missing, " ")
	})
	step("every healthy VM up")

	for _, n := range healthy {
		select {
		case <-peers[n].EventsDone():
		case <-ctx.Done():
			t.Fatalf("%s: still emitting (%d sent): %v", n, peers[n].Sent(), ctx.Err())
		}
	}
	step("healthy VMs done emitting")
	final := waitUntil(t, ctx, e.exp, "every event counted", func(m exporterproc.Metrics) string {
		var lag []string
		for _, n := range healthy {
			if got, sent := eventSum(m, n), peers[n].Sent(); got != float64(sent) {
				lag = append(lag, fmt.Sprintf("%s counted %v of %d", n, got, sent))
			}
		}
		return strings.Join(lag, "; ")
	})
	step("every event counted, hostile clients still at it")
	sc.stop()
	var conns []string
	for _, n := range healthy {
		if !final.Has(up(n), 1) {
			t.Errorf("%s: qmp_up %v at the end", n, final[up(n)])
		}
		if v := final[`qmp_protocol_errors_total{vm="`+n+`"}`]; v != 0 {
			t.Errorf("%s: %v protocol errors from a healthy VM", n, v)
		}
		// Ten VMs dialling in at once from this one process share its
		// maxHandshakesPerPeer slots and may need a few tries; crowded
		// out by the swarm, they needed twenty and more.
		c := peers[n].Connections()
		if c > dialInMaxTries {
			t.Errorf("%s: took %d connections to get in, want at most %d: crowded out", n, c, dialInMaxTries)
		}
		conns = append(conns, strconv.Itoa(c))
	}
	t.Logf("healthy: %d VMs dialled in during the attack, %d events each, all counted; connections each took: %s",
		dialInHealthy, dialInHealthyEvents, strings.Join(conns, " "))
	t.Logf("listener: %s", final.Filter("qmp_listener_connections_total"))
	if s := invalidUTF8Up(final); s == "" {
		t.Errorf("invalid-utf8: not up at the end")
	} else {
		t.Logf("invalid-utf8: %s", s)
	}

	// The made-up VMs are bounded.
	vms := 0
	for s := range final {
		if strings.HasPrefix(s, "qmp_up{") {
			vms++
		}
	}
	t.Logf("VMs known: %d (made-up ones included; bound %d)", vms, dialInMaxVMs)
	if vms > dialInMaxVMs {
		t.Errorf("%d VMs known from dialling in, want at most %d (--qmp.listen-max-vms)", vms, dialInMaxVMs)
	}

	// Stop the hostile clients: what they made and received.
	for _, k := range dialInKinds {
		n, disallowed, err := children[k.kind].stop()
		if err != nil {
			t.Errorf("%s: %v", k.kind, err)
		}
		if disallowed > 0 {
			t.Errorf("%s received %d commands outside the allow-list", k.kind, disallowed)
		}
		t.Logf("%-18s %d connections", k.kind+":", n)
	}
	for _, n := range healthy {
		for _, c := range peers[n].Commands() {
			if !qmp.Allowed(c) {
				t.Errorf("%s received %q, which is not on the allow-list", n, c)
			}
		}
	}

	// Each broken client is named by pid in a warning that says what it
	// did; and the listener's lines are rate-limited per kind and client.
	logs := e.exp.Logs()
	for _, k := range dialInKinds {
		if k.logged == "" {
			continue
		}
		pid := " pid=" + strconv.Itoa(children[k.kind].cmd.Process.Pid) + " "
		var found string
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, "level=warn") && strings.Contains(l, pid) && strings.Contains(l, k.logged) {
				found = l
				break
			}
		}
		if found == "" {
			t.Errorf("%s: no warning with%s saying %q", k.kind, pid, k.logged)
			continue
		}
		t.Logf("%-18s %s", k.kind+":", found)
	}
	lines := map[string]int{}
	for _, l := range strings.Split(logs, "\n") {
		if !strings.Contains(l, `listener=`+listenPath) {
			continue
		}
		lines[logField(l, "msg")+" pid="+logField(l, "pid")]++
	}
	allowed := int(time.Since(began)/(10*time.Second)) + 2
	for _, k := range slices.Sorted(maps.Keys(lines)) {
		if lines[k] > allowed {
			t.Errorf("the listener logged %q %d times in %v, want at most %d (one per 10 s)", k, lines[k], time.Since(began).Round(time.Second), allowed)
		}
	}
	t.Logf("listener log lines: %d kinds; exporter log: %d lines", len(lines), strings.Count(logs, "\n"))
	// Hundreds of thousands of connections and thousands of made-up VMs
	// (each a watcher with its own log lines) make a few dozen lines.
	if n := strings.Count(logs, "\n"); n > dialInMaxLogLines {
		t.Errorf("the exporter logged %d lines, want at most %d; the most frequent:\n%s", n, dialInMaxLogLines, mostFrequent(logs, 5))
	}

	// Scrapes, memory, goroutines, file descriptors.
	r := sc.result
	lat := checkScrapes(t, r)
	t.Logf("scrapes: %d, all 200; latency median %v, max %v; %d-%d series", len(lat),
		lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond), r.minSeries, r.maxSeries)
	rss, hwm := procMemory(t, e.exp.Pid())
	t.Logf("exporter memory: VmRSS %.1f MiB, VmHWM (peak) %.1f MiB; max go_goroutines %v, max process_open_fds %v",
		float64(rss)/(1<<20), float64(hwm)/(1<<20), r.max["go_goroutines"], r.max["process_open_fds"])
	if hwm > chaosMaxRSS {
		t.Errorf("exporter peak RSS %d bytes, want under %d", hwm, chaosMaxRSS)
	}
	if g := r.max["go_goroutines"]; g > dialInMaxGoroutines {
		t.Errorf("exporter had %v goroutines, want at most %d", g, dialInMaxGoroutines)
	}
	if f := r.max["process_open_fds"]; f > dialInMaxFDs {
		t.Errorf("exporter had %v open file descriptors, want at most %d", f, dialInMaxFDs)
	}

	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	err := e.exp.Stop(sctx)
	scancel()
	if err != nil {
		t.Errorf("exporter did not exit cleanly on SIGTERM: %v", err)
	}
	checkLogClean(t, "exporter", e.exp.Logs())
	step("done")
}

// invalidUTF8Up returns the series of the invalid-utf8 client's VM if it
// is up: its vm label is its name with the bytes that are not UTF-8
// replaced.
func invalidUTF8Up(m exporterproc.Metrics) string {
	for s, v := range m {
		if strings.HasPrefix(s, `qmp_up{vm="invalid-utf8`) && v == 1 {
			return s
		}
	}
	return ""
}

// mostFrequent returns the n most frequent messages of logs, with counts.
func mostFrequent(logs string, n int) string {
	counts := map[string]int{}
	for _, l := range strings.Split(logs, "\n") {
		counts[logField(l, "msg")]++
	}
	msgs := slices.SortedFunc(maps.Keys(counts), func(a, b string) int { return counts[b] - counts[a] })
	var out []string
	for _, m := range msgs[:min(n, len(msgs))] {
		out = append(out, fmt.Sprintf("%6d %s", counts[m], m))
	}
	return strings.Join(out, "\n")
}

// logField returns the value of key in a logfmt line ("" if absent).
func logField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		if !strings.HasPrefix(line, key+"=") {
			return ""
		}
		i = -1
	}
	rest := line[i+len(key)+2:]
	if strings.HasPrefix(rest, `"`) {
		if v, err := strconv.QuotedPrefix(rest); err == nil {
			u, _ := strconv.Unquote(v)
			return u
		}
	}
	v, _, _ := strings.Cut(rest, " ")
	return v
}
