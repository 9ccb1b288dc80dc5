// Command bench measures qmp_exporter as a whole process against
// qmp-loadgen, the figures of docs/performance.md: CPU time per event under
// a flood and at a steady rate, memory per idle VM, events lost, /metrics
// latency at 1,000 and 10,000 VMs with and without a hung VM, and the time
// to reconnect 1,000 VMs that restart at once.
//
// Run it from the repository with `make bench`, or
//
//	go run ./internal/bench [-out DIR] [-only NAMES] [-perf] [-quick] [-exporter-env GOMAXPROCS=1]
//
// It builds both binaries, runs every scenario (about 7 minutes on two
// cores), prints the tables and writes DIR/results.md, DIR/results.json and
// DIR/cost.svg (default DIR: .build/bench). The machine should be
// otherwise idle: the exporter and the load generator share its cores, as
// they would share a hypervisor's.
//
// How the figures are taken. CPU time is the exporter's utime+stime from
// /proc/PID/stat, read when the load generators are told to start sending
// (SIGUSR1) and again once the exporter is idle after they stopped;
// events are the sum of qmp_events_total over every VM, read before and
// after (scraping until the sum stops changing). CPU-µs per event is the
// one divided by the other, so it includes everything the process does
// meanwhile: reading, parsing, folding, the follow-up queries some events
// cause, timers, the garbage collector. Memory is VmRSS from
// /proc/PID/status. Events lost are what the load generators wrote
// (counted at exit) minus what the exporter counted at the end.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	out         string
	window      time.Duration // sending window of the main runs
	sweepWindow time.Duration // sending window of the sweep runs
	only        map[string]bool
	perf        bool
	gobench     bool
	restartGap  time.Duration
	perProc     int // VMs per load generator process
	big         int // VMs of the memory and large-scrape run
	mid         int // VMs of the steady-rate, scrape and restart run
	scrapes     int
	burst       int
}

// benchPackages hold the Go benchmarks of the hot paths: the protocol
// reader, the fold, and the exposition.
var benchPackages = []string{"./qmp/", "./internal/vmstate/", "./collector/"}

func main() {
	var o options
	var only, env string
	var quick bool
	flag.StringVar(&o.out, "out", ".build/bench", "directory for results.md, results.json, cost.svg (and perf profiles)")
	flag.StringVar(&only, "only", "", "comma-separated scenarios to run (flood-1, flood-100, rate-1000, idle-10000, sweep); default all")
	flag.BoolVar(&o.perf, "perf", false, "record a perf profile of the exporter during each sending window (needs perf)")
	flag.BoolVar(&o.gobench, "gobench", true, "also run the Go benchmarks of the hot paths (benchPackages)")
	flag.BoolVar(&quick, "quick", false, "short windows and fewer VMs, to check the bench itself")
	flag.StringVar(&env, "exporter-env", "", "comma-separated NAME=VALUE added to the exporter's environment, e.g. GOMAXPROCS=1,GOGC=50")
	flag.Parse()
	if env != "" {
		exporterEnv = strings.Split(env, ",")
	}
	o.window, o.sweepWindow = 10*time.Second, 5*time.Second
	o.restartGap, o.perProc, o.big, o.mid, o.scrapes, o.burst = time.Second, 2500, 10000, 1000, 20, 16
	if quick {
		o.window, o.sweepWindow, o.big, o.mid, o.scrapes = 2*time.Second, time.Second, 2000, 200, 5
	}
	if only != "" {
		o.only = map[string]bool{}
		for n := range strings.SplitSeq(only, ",") {
			o.only[strings.TrimSpace(n)] = true
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, strings.TrimSpace("go run ./internal/bench "+strings.Join(os.Args[1:], " "))); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// bench holds what every scenario needs.
type bench struct {
	opts        options
	root, tmp   string
	exporterBin string
	loadgenBin  string
	machine     machineInfo
	runs        []*result
	log         io.Writer
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (b *bench) wants(name string) bool { return b.opts.only == nil || b.opts.only[name] }

func run(ctx context.Context, o options, cmdline string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	raiseFileLimit()
	tmp, err := os.MkdirTemp("", "qmpbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b := &bench{opts: o, root: root, tmp: tmp, log: os.Stderr}
	b.machine = readMachine()
	if out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output(); err == nil {
		b.machine.Revision = strings.TrimSpace(string(out))
	}
	b.logf("building qmp_exporter and qmp-loadgen")
	for _, t := range []struct{ pkg, bin string }{{"./cmd/qmp_exporter", "qmp_exporter"}, {"./internal/cmd/qmp-loadgen", "qmp-loadgen"}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(tmp, t.bin), t.pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", t.pkg, err, out)
		}
	}
	b.exporterBin, b.loadgenBin = filepath.Join(tmp, "qmp_exporter"), filepath.Join(tmp, "qmp-loadgen")
	outDir := o.out
	if !filepath.IsAbs(outDir) {
		outDir = filepath.Join(root, outDir)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	b.opts.out = outDir

	start := time.Now()
	var errs []error
	step := func(name string, f func(context.Context) error) {
		if !b.wants(name) || ctx.Err() != nil {
			return
		}
		if err := f(ctx); err != nil {
			b.logf("%s FAILED: %v", name, err)
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	step("flood-1", func(ctx context.Context) error { return b.eventRun(ctx, "flood-1", 1, 0, "full", o.window, nil) })
	step("flood-100", func(ctx context.Context) error { return b.eventRun(ctx, "flood-100", 100, 0, "full", o.window, nil) })
	step("rate-1000", func(ctx context.Context) error {
		return b.eventRun(ctx, fmt.Sprintf("rate-%dx10", o.mid), o.mid, 10, "full", o.window, b.scrapeHangRestart)
	})
	step("idle-10000", b.idleRun)
	step("sweep", b.sweep)
	var gobench string
	if o.gobench && o.only == nil && ctx.Err() == nil {
		b.logf("go test -bench %s", strings.Join(benchPackages, " "))
		cmd := exec.CommandContext(ctx, "go", append([]string{"test", "-run=^$", "-bench=.", "-benchmem"}, benchPackages...)...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		gobench = string(out)
		if err != nil {
			errs = append(errs, fmt.Errorf("go test -bench: %v", err))
		}
	}
	rep := report{machine: b.machine, runs: b.runs, cmdline: cmdline, took: time.Since(start), gobench: gobench, opts: b.opts}
	md := rep.markdown()
	fmt.Println(md)
	if err := os.WriteFile(filepath.Join(outDir, "results.md"), []byte(md), 0o644); err != nil {
		errs = append(errs, err)
	}
	if js, err := json.MarshalIndent(rep.jsonRuns(), "", "  "); err == nil {
		errs = append(errs, os.WriteFile(filepath.Join(outDir, "results.json"), js, 0o644))
	}
	if svg := costPlot(b.runs); svg != "" {
		errs = append(errs, os.WriteFile(filepath.Join(outDir, "cost.svg"), []byte(svg), 0o644))
	}
	b.logf("done in %s; results in %s", time.Since(start).Round(time.Second), outDir)
	return errors.Join(errs...)
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run the bench from inside the qmp_exporter module")
	}
	return filepath.Dir(gomod), nil
}

// raiseFileLimit lifts the soft open-file limit to the hard one for the
// children (10,000 VMs need 10,000 descriptors in the exporter).
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// machineInfo describes where the figures were taken.
type machineInfo struct {
	CPU, Kernel, Go string
	Revision        string // git describe of the tree measured
	Cores           int
	MemGiB          float64
	FileLimit       uint64
}

func readMachine() machineInfo {
	m := machineInfo{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %f kB", &kb); err == nil {
			m.MemGiB = kb / (1 << 20)
		}
	}
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil {
		m.FileLimit = l.Cur
	}
	return m
}

// result is what one scenario measured.
type result struct {
	Name   string
	VMs    int
	Rate   float64 // events per second per VM; 0 floods
	Mix    string  // qmp-loadgen's -mix
	Window time.Duration

	// The sending window.
	Counted  float64       // events the exporter counted during the window
	CPU      time.Duration // exporter CPU time over the window
	Busy     time.Duration // from the start of sending until the exporter was idle again
	SendWall time.Duration // from the start of sending until the load generators stopped

	// Totals of the whole run.
	Sent, Final, Lost int64
	Extra             int64 // counted beyond what a VM sent
	Refused, Unknown  int64
	Commands          int64 // commands the load generators received

	// Extras of some runs.
	Scrapes, ScrapesHung *latencyStats
	Series, BodyBytes    int
	RSS0, RSSIdle        int64
	RSSAfterScrapes      int64
	IdleCPUShare         float64
	Reconnect            *reconnectStats
	Perf                 string
}

func (r *result) cpuPerEvent() float64 {
	if r.Counted <= 0 {
		return 0
	}
	return float64(r.CPU.Microseconds()) / r.Counted
}

func (r *result) eventsPerSecond() float64 {
	if r.SendWall <= 0 {
		return 0
	}
	return r.Counted / r.SendWall.Seconds()
}

// stage is one exporter process and its load generators.
type stage struct {
	b       *bench
	r       *result
	dir     string // the VMs' sockets
	cfg     string // the exporter's configuration file
	genArgs []string
	ex      *exporter
	fl      fleet
	hung    fleet
	stopped genTotals // totals of load generators already stopped
}

func (b *bench) newStage(name string, n int, rate float64, mix string, window time.Duration) (*stage, error) {
	dir := filepath.Join(b.tmp, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &stage{b: b, r: &result{Name: name, VMs: n, Rate: rate, Mix: mix, Window: window}, dir: dir, cfg: filepath.Join(b.tmp, name+".yml")}
	s.genArgs = []string{"-rate", fmt.Sprint(rate), "-mix", mix, "-duration", window.String(), "-burst", fmt.Sprint(b.opts.burst), "-wait-signal"}
	return s, s.writeConfig(nil)
}

func socketPath(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("vm-%05d.qmp", i)) }

// writeConfig lists the stage's VMs, and extra sockets, for the exporter.
func (s *stage) writeConfig(extra []string) error {
	var sb strings.Builder
	sb.WriteString("vms:\n")
	for i := range s.r.VMs {
		fmt.Fprintf(&sb, "  - socket: %s\n", socketPath(s.dir, i))
	}
	for _, e := range extra {
		fmt.Fprintf(&sb, "  - socket: %s\n", e)
	}
	if s.r.VMs == 0 && len(extra) == 0 {
		sb.Reset()
		sb.WriteString("vms: []\n")
	}
	return os.WriteFile(s.cfg, []byte(sb.String()), 0o644)
}

// startFleet starts the load generators, perProc VMs each.
func (s *stage) startFleet(ctx context.Context, args []string) (fleet, error) {
	var fl fleet
	for first := 0; first < s.r.VMs; first += s.b.opts.perProc {
		n := min(s.b.opts.perProc, s.r.VMs-first)
		a := append([]string{"-dir", s.dir, "-n", fmt.Sprint(n), "-first", fmt.Sprint(first)}, args...)
		l, err := startLoadgen(s.b.loadgenBin, a)
		if err != nil {
			_, _ = fl.stop()
			return nil, err
		}
		fl = append(fl, l)
	}
	if _, err := fl.waitLine(ctx, "listening", time.Minute); err != nil {
		_, _ = fl.stop()
		return nil, err
	}
	return fl, nil
}

// up starts the load generators and the exporter and waits until every VM
// is connected and synced.
func (s *stage) up(ctx context.Context) error {
	fl, err := s.startFleet(ctx, s.genArgs)
	if err != nil {
		return err
	}
	s.fl = fl
	if s.ex, err = startExporter(ctx, s.b.exporterBin, s.cfg); err != nil {
		return err
	}
	if _, err = s.fl.waitLine(ctx, "negotiated", 3*time.Minute); err != nil {
		return err
	}
	m, err := s.ex.waitUp(ctx, s.r.VMs, 3*time.Minute)
	s.r.Series, s.r.BodyBytes = m.series, m.bytes
	return err
}

// idleShare is the CPU share of one core below which the exporter counts
// as idle: its background work (a refresh of every VM each 30 s) grows
// with the VMs.
func idleShare(vms int) float64 { return 0.05 + 0.25*float64(vms)/10000 }

// window opens the load generators' sending window and measures the
// exporter's CPU time per event counted.
func (s *stage) window(ctx context.Context) error {
	ex, r := s.ex, s.r
	ex.waitIdle(ctx, idleShare(r.VMs), 30*time.Second)
	m0, err := ex.settledEvents(ctx, 30*time.Second)
	if err != nil {
		return err
	}
	base := m0.events
	var perfDone chan error
	if s.b.opts.perf {
		perfDone = s.startPerf(ctx)
	}
	cpu0, t0 := ex.cpu(), time.Now()
	s.fl.signal(syscall.SIGUSR1)
	tSent, err := s.fl.waitLine(ctx, "sent", r.Window+2*time.Minute)
	if err != nil {
		return err
	}
	tIdle := ex.waitIdle(ctx, idleShare(r.VMs)/2, time.Minute)
	cpu1 := ex.cpu()
	if perfDone != nil {
		if perr := <-perfDone; perr != nil {
			s.b.logf("perf: %v", perr)
		}
	}
	m1, err := ex.settledEvents(ctx, 30*time.Second)
	if err != nil {
		return err
	}
	counted := m1.events
	r.Counted, r.CPU, r.Busy, r.SendWall = counted-base, cpu1-cpu0, tIdle.Sub(t0), tSent.Sub(t0)
	s.b.logf("%s: %s events in %s, exporter CPU %s: %.2f CPU-µs/event", r.Name, thousands(int64(r.Counted)),
		r.SendWall.Round(time.Millisecond), r.CPU, r.cpuPerEvent())
	return nil
}

// startPerf records the exporter for the length of the window.
func (s *stage) startPerf(ctx context.Context) chan error {
	done := make(chan error, 1)
	data := filepath.Join(s.b.opts.out, "perf-"+s.r.Name+".data")
	secs := fmt.Sprintf("%.1f", s.r.Window.Seconds())
	cmd := exec.CommandContext(ctx, "perf", "record", "-F", "499", "-g", "-p", fmt.Sprint(s.ex.pid()), "-o", data, "--", "sleep", secs)
	if err := cmd.Start(); err != nil {
		done <- err
		return done
	}
	go func() {
		err := cmd.Wait()
		if err == nil {
			txt := filepath.Join(s.b.opts.out, "perf-"+s.r.Name+".txt")
			rep := exec.Command("sh", "-c", fmt.Sprintf(
				"perf report -i %[1]s --stdio --no-children --sort symbol --percent-limit 1 -g none > %[2]s 2>/dev/null; "+
					"perf report -i %[1]s --stdio --children --sort symbol --percent-limit 4 -g none >> %[2]s 2>/dev/null", data, txt))
			err = rep.Run()
			s.r.Perf = txt
		}
		done <- err
	}()
	return done
}

// finish stops the load generators, waits for the exporter's count to
// settle, computes the loss and stops the exporter.
func (s *stage) finish(ctx context.Context) error {
	var errs []error
	for _, fl := range []fleet{s.hung, s.fl} {
		if fl == nil {
			continue
		}
		t, err := fl.stop()
		s.stopped.add(t)
		errs = append(errs, err)
	}
	s.fl, s.hung = nil, nil
	if s.ex != nil {
		final, err := s.ex.settledEvents(ctx, 30*time.Second)
		errs = append(errs, err)
		r := s.r
		r.Sent, r.Final, r.Refused, r.Unknown, r.Commands = s.stopped.sent, int64(final.events), s.stopped.refused, s.stopped.unknown, s.stopped.commands
		r.Lost, r.Extra = compareVMs(s.stopped.perVM, final.perVM)
		if r.Lost == 0 && r.Extra == 0 && r.Sent != r.Final {
			r.Lost = r.Sent - r.Final // per-VM lines missing
		}
		s.b.logf("%s: sent %s, counted %s, lost %d (VM by VM), counted but not sent %d, refused %d",
			r.Name, thousands(r.Sent), thousands(r.Final), r.Lost, r.Extra, r.Refused)
		if err := s.ex.stop(10 * time.Second); err != nil && !isSignalExit(err) {
			errs = append(errs, fmt.Errorf("exporter: %w\n%s", err, s.ex.stderr))
		}
		if logs := strings.TrimSpace(s.ex.stderr.String()); logs != "" {
			s.b.logf("%s: the exporter logged (warn and above; %d lines kept):\n%s", r.Name, strings.Count(logs, "\n")+1, tail(logs, 3))
		}
	}
	return errors.Join(errs...)
}

// compareVMs compares, VM by VM, the events the load generators sent with
// those the exporter counted: lost adds up the shortfalls, extra the
// surpluses (which a total alone would let cancel out).
func compareVMs(sent map[string]int64, counted map[string]float64) (lost, extra int64) {
	for vm, n := range sent {
		if d := n - int64(counted[vm]); d > 0 {
			lost += d
		} else {
			extra -= d
		}
	}
	for vm, c := range counted {
		if _, ok := sent[vm]; !ok {
			extra += int64(c)
		}
	}
	return lost, extra
}

func isSignalExit(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && !ee.Exited()
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = append([]string{fmt.Sprintf("[... %d lines]", len(l)-lines)}, l[len(l)-lines:]...)
	}
	return strings.Join(l, "\n")
}

// cleanup stops whatever is still running after a failure.
func (s *stage) cleanup() {
	for _, fl := range []fleet{s.hung, s.fl} {
		_, _ = fl.stop()
	}
	if s.ex != nil && !s.ex.exited() {
		_ = s.ex.stop(10 * time.Second)
	}
}

// eventRun is a sending window of n VMs at rate (0: flood), with optional
// extra measurements after it.
func (b *bench) eventRun(ctx context.Context, name string, n int, rate float64, mix string, window time.Duration, extra func(context.Context, *stage) error) error {
	b.logf("%s: %d VMs, %s, %s mix", name, n, rateString(rate), mix)
	s, err := b.newStage(name, n, rate, mix, window)
	if err != nil {
		return err
	}
	defer s.cleanup()
	b.runs = append(b.runs, s.r)
	if err := s.up(ctx); err != nil {
		return err
	}
	if err := s.window(ctx); err != nil {
		return err
	}
	if extra != nil {
		if err := extra(ctx, s); err != nil {
			return err
		}
	}
	return s.finish(ctx)
}

func rateString(rate float64) string {
	if rate <= 0 {
		return "flood"
	}
	return fmt.Sprintf("%g/s per VM", rate)
}

// scrapeHangRestart measures /metrics, then /metrics with a hung VM, then
// restarts every VM at once.
func (b *bench) scrapeHangRestart(ctx context.Context, s *stage) error {
	if err := s.measureScrapes(ctx); err != nil {
		return err
	}
	return s.restart(ctx)
}

// scrapeBudget bounds a series of timed scrapes, so that a slow /metrics
// cannot stretch the bench: 20 scrapes, or as many as fit.
const scrapeBudget = time.Minute

// measureScrapes times scrapes, then adds a VM that hangs and times them
// again.
func (s *stage) measureScrapes(ctx context.Context) error {
	st, err := s.ex.latencies(ctx, s.b.opts.scrapes, scrapeBudget)
	if err != nil {
		return err
	}
	s.r.Scrapes = &st
	s.b.logf("%s: /metrics %s (%s gzip)", s.r.Name, st, humanBytes(float64(st.Wire)))

	hungDir := filepath.Join(s.b.tmp, s.r.Name+"-hung")
	l, err := startLoadgen(s.b.loadgenBin, []string{"-dir", hungDir, "-n", "1", "-first", "99999", "-hang", "1", "-burst", "0", "-duration", "0", "-wait-signal"})
	if err != nil {
		return err
	}
	s.hung = fleet{l}
	if _, err = s.hung.waitLine(ctx, "listening", 30*time.Second); err != nil {
		return err
	}
	if err = s.writeConfig([]string{socketPath(hungDir, 99999)}); err != nil {
		return err
	}
	if err = s.ex.reload(ctx); err != nil {
		return err
	}
	// The hung VM takes the exporter's session, then stops answering.
	if _, err = s.hung.waitLine(ctx, "negotiated", 30*time.Second); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	hst, err := s.ex.latencies(ctx, s.b.opts.scrapes, scrapeBudget)
	if err != nil {
		return err
	}
	s.r.ScrapesHung = &hst
	s.b.logf("%s: /metrics with a hung VM %s", s.r.Name, hst)
	return nil
}

// reconnectStats describe a restart of every VM at once.
type reconnectStats struct {
	Gap        time.Duration // sockets gone
	Negotiated time.Duration // from the sockets' return until every VM negotiated
	AllUp      time.Duration // from the sockets' return until qmp_up was 1 for all
	CPU        time.Duration // exporter CPU from the restart until all up
	PeakShare  float64       // highest CPU share of one core over 500 ms
	Scrapes    latencyStats  // scrapes taken meanwhile
}

// restart stops every VM (their sockets close and vanish), waits the
// restart gap, starts them again and times the exporter's reconnection.
func (s *stage) restart(ctx context.Context) error {
	ex, n := s.ex, s.r.VMs
	b := s.b
	cpuKill, tKill := ex.cpu(), time.Now()
	t, err := s.fl.stop()
	s.stopped.add(t)
	s.fl = nil
	if err != nil {
		return err
	}
	time.Sleep(time.Until(tKill.Add(b.opts.restartGap)))
	args := slices.Clone(s.genArgs)
	for i, a := range args {
		if a == "-duration" {
			args[i+1] = "0"
		}
	}
	tStart := time.Now()
	fl, err := s.startFleet(ctx, args)
	if err != nil {
		return err
	}
	s.fl = fl
	tBack, _ := fl.waitLine(ctx, "listening", 0)
	if tBack.IsZero() {
		tBack = tStart
	}
	// Sample CPU every 100 ms and scrape every 200 ms until all are up.
	type sample struct {
		at  time.Time
		cpu time.Duration
	}
	samples := []sample{{tKill, cpuKill}}
	var lats []time.Duration
	deadline := time.Now().Add(2 * time.Minute)
	var tAll time.Time
	for tAll.IsZero() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("not every VM reconnected within 2 minutes")
		}
		samples = append(samples, sample{time.Now(), ex.cpu()})
		m, sc, err := ex.sums(ctx)
		if err == nil {
			lats = append(lats, sc.latency)
			if int(m.up) >= n {
				tAll = time.Now()
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
		samples = append(samples, sample{time.Now(), ex.cpu()})
		time.Sleep(100 * time.Millisecond)
	}
	cpuAll := ex.cpu()
	rs := &reconnectStats{Gap: tBack.Sub(tKill), AllUp: tAll.Sub(tBack), CPU: cpuAll - cpuKill, Scrapes: newLatencyStats(lats)}
	if at, err := fl.waitLine(ctx, "negotiated", 0); err == nil {
		rs.Negotiated = at.Sub(tBack)
	}
	for i := range samples {
		for j := i + 1; j < len(samples); j++ {
			if d := samples[j].at.Sub(samples[i].at); d >= 500*time.Millisecond {
				rs.PeakShare = max(rs.PeakShare, (samples[j].cpu-samples[i].cpu).Seconds()/d.Seconds())
				break
			}
		}
	}
	s.r.Reconnect = rs
	b.logf("%s: restart: all %d VMs up %s after their sockets came back (gap %s), exporter CPU %s, peak %.0f%% of a core, scrapes meanwhile %s",
		s.r.Name, n, rs.AllUp.Round(time.Millisecond), rs.Gap.Round(time.Millisecond), rs.CPU, 100*rs.PeakShare, rs.Scrapes)
	return nil
}

// idleRun measures memory per idle VM at the large count, /metrics there
// with and without a hung VM, the idle CPU, and a window at 1 event/s.
func (b *bench) idleRun(ctx context.Context) error {
	n := b.opts.big
	// The exporter with no VM: the base of the memory figure.
	b.logf("idle-%d: baseline with 0 VMs", n)
	s0, err := b.newStage("rss-0", 0, 0, "full", 0)
	if err != nil {
		return err
	}
	ex0, err := startExporter(ctx, b.exporterBin, s0.cfg)
	if err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	for range 3 {
		if _, err = ex0.scrape(ctx); err != nil {
			_ = ex0.stop(5 * time.Second)
			return err
		}
	}
	time.Sleep(3 * time.Second)
	rss0 := ex0.rss()
	_ = ex0.stop(10 * time.Second)

	name := fmt.Sprintf("idle-%d", n)
	b.logf("%s: %d VMs, 1/s per VM", name, n)
	s, err := b.newStage(name, n, 1, "full", b.opts.window)
	if err != nil {
		return err
	}
	defer s.cleanup()
	b.runs = append(b.runs, s.r)
	s.r.RSS0 = rss0
	if s.fl, err = s.startFleet(ctx, s.genArgs); err != nil {
		return err
	}
	if s.ex, err = startExporter(ctx, b.exporterBin, s.cfg); err != nil {
		return err
	}
	if _, err = s.fl.waitLine(ctx, "negotiated", 5*time.Minute); err != nil {
		return err
	}
	for deadline := time.Now().Add(2 * time.Minute); openFDs(s.ex.pid()) < n && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	s.ex.waitIdle(ctx, idleShare(n), 2*time.Minute)
	time.Sleep(3 * time.Second)
	s.r.RSSIdle = s.ex.rss()
	c0, t0 := s.ex.cpu(), time.Now()
	time.Sleep(10 * time.Second)
	s.r.IdleCPUShare = (s.ex.cpu() - c0).Seconds() / time.Since(t0).Seconds()
	b.logf("%s: RSS %s with 0 VMs, %s with %d idle VMs (before any scrape): %s per VM; idle CPU %.1f%% of a core",
		name, humanBytes(float64(rss0)), humanBytes(float64(s.r.RSSIdle)), n, humanBytes(float64(s.r.RSSIdle-rss0)/float64(n)), 100*s.r.IdleCPUShare)
	m, err := s.ex.waitUp(ctx, n, 3*time.Minute)
	if err != nil {
		return err
	}
	s.r.Series, s.r.BodyBytes = m.series, m.bytes
	if err := s.measureScrapes(ctx); err != nil {
		return err
	}
	time.Sleep(5 * time.Second)
	s.r.RSSAfterScrapes = s.ex.rss()
	b.logf("%s: RSS after %d scrapes: %s", name, 2*b.opts.scrapes, humanBytes(float64(s.r.RSSAfterScrapes)))
	if err := s.window(ctx); err != nil {
		return err
	}
	return s.finish(ctx)
}

// sweep runs more windows, for the plot of cost against VMs and rate.
func (b *bench) sweep(ctx context.Context) error {
	points := []struct {
		n    int
		rate float64
		mix  string
	}{
		{1, 1000, "full"}, {1, 10000, "full"},
		{100, 10, "full"}, {100, 100, "full"}, {100, 1000, "full"},
		{b.opts.mid, 1, "full"}, {b.opts.mid, 100, "full"},
		{b.opts.mid, 10, "quiet"}, {1, 0, "quiet"},
	}
	var errs []error
	for _, p := range points {
		if ctx.Err() != nil {
			break
		}
		name := fmt.Sprintf("sweep-%dx%g", p.n, p.rate)
		if p.rate == 0 {
			name = fmt.Sprintf("sweep-%d-flood", p.n)
		}
		if p.mix != "full" {
			name += "-" + p.mix
		}
		if err := b.eventRun(ctx, name, p.n, p.rate, p.mix, b.opts.sweepWindow, nil); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
