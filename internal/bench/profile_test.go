package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/qmp-exporter/qmp_exporter/collector"
	vmfleet "github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/source/qmpsock"
)

// TestInProcessProfile runs the exporter's collector in this process,
// wired as cmd/qmp_exporter wires it, against qmp-loadgen, and writes
// pprof profiles: the heap and goroutines of idle VMs, CPU during scrapes,
// CPU during a sending window at 10 events/s per VM. The exporter has no
// pprof endpoint; this is where docs/performance.md's profiles come from.
// It is skipped unless QMP_BENCH_PROFILE names an output directory:
//
//	QMP_BENCH_PROFILE=/tmp/prof QMP_BENCH_PROFILE_VMS=10000 \
//	    go test -run TestInProcessProfile -timeout 30m -v ./internal/bench/
//	go tool pprof -top -sample_index=inuse_space /tmp/prof/heap-idle.pb.gz
//	go tool pprof -top /tmp/prof/cpu-scrape.pb.gz
func TestInProcessProfile(t *testing.T) {
	out := os.Getenv("QMP_BENCH_PROFILE")
	if out == "" {
		t.Skip("set QMP_BENCH_PROFILE to an output directory to profile the collector in process")
	}
	n := 1000
	if v := os.Getenv("QMP_BENCH_PROFILE_VMS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	// QMP_BENCH_PROFILE_MEMRATE=1 records every allocation, so that the
	// heap profile accounts for each VM's bytes exactly (and makes the CPU
	// profiles meaningless).
	if v := os.Getenv("QMP_BENCH_PROFILE_MEMRATE"); v != "" {
		rate, err := strconv.Atoi(v)
		if err != nil {
			t.Fatal(err)
		}
		runtime.MemProfileRate = rate
	}
	raiseFileLimit()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	tmp, err := os.MkdirTemp("", "qmpprof")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	lgBin := filepath.Join(tmp, "qmp-loadgen")
	build := exec.Command("go", "build", "-o", lgBin, "./internal/cmd/qmp-loadgen")
	build.Dir = root
	if out, berr := build.CombinedOutput(); berr != nil {
		t.Fatalf("go build: %v\n%s", berr, out)
	}
	b := &bench{opts: options{perProc: 2500, burst: 16}, tmp: tmp, loadgenBin: lgBin, log: io.Discard}
	s, err := b.newStage("profile", n, 10, "full", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.cleanup()
	if s.fl, err = s.startFleet(ctx, s.genArgs); err != nil {
		t.Fatal(err)
	}

	var ms0 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	g0 := runtime.NumGoroutine()

	vms := vmfleet.New(vmfleet.Options{})
	m := qmpsock.New(vms, qmpsock.Options{})
	var targets []qmpsock.Target
	for i := range n {
		targets = append(targets, qmpsock.Target{Network: "unix", Address: socketPath(s.dir, i)})
	}
	m.Sync(targets)
	mctx, stopManager := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(mctx) }()
	defer func() { stopManager(); <-done }()
	reg := prometheus.NewRegistry()
	reg.MustRegister(versioncollector.NewCollector("qmp_exporter"), collector.NewCollector(vms))
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 40}))
	defer srv.Close()
	host := srv.Listener.Addr().String()
	ex := &exporter{proc: &proc{name: "in-process", cmd: &exec.Cmd{Process: &os.Process{Pid: os.Getpid()}}, done: make(chan struct{}), stderr: &tailBuffer{max: 1}},
		addr: host, client: &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{DisableCompression: true}}}
	if _, err = s.fl.waitLine(ctx, "negotiated", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	// Wait for the initial syncs to end without scraping: they end when
	// this process goes idle.
	ex.waitIdle(ctx, idleShare(n), 2*time.Minute)
	time.Sleep(2 * time.Second)

	// Memory of the idle VMs: live heap after a GC, stacks, goroutines.
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	rssBefore, _ := rss(os.Getpid())
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	g1 := runtime.NumGoroutine()
	per := func(a, b uint64) string { return humanBytes(float64(int64(b)-int64(a)) / float64(n)) }
	t.Logf("%d idle VMs: RSS %s before GC; per VM: live heap %s (HeapAlloc), heap in use %s, stacks %s, goroutines %.1f, other runtime %s",
		n, humanBytes(float64(rssBefore)), per(ms0.HeapAlloc, ms1.HeapAlloc), per(ms0.HeapInuse, ms1.HeapInuse), per(ms0.StackInuse, ms1.StackInuse),
		float64(g1-g0)/float64(n), per(ms0.Sys-ms0.HeapSys-ms0.StackSys, ms1.Sys-ms1.HeapSys-ms1.StackSys))
	writeProfile(t, filepath.Join(out, "heap-idle.pb.gz"), "heap")
	writeProfile(t, filepath.Join(out, "goroutine-idle.txt"), "goroutine")

	// CPU of scrapes.
	profile(t, filepath.Join(out, "cpu-scrape.pb.gz"), func() {
		st, lerr := ex.latencies(ctx, 5, time.Hour)
		if lerr != nil {
			t.Fatal(lerr)
		}
		t.Logf("%d VMs: 5 scrapes in process: %s", n, st)
	})
	sm, _, err := ex.sums(ctx)
	if err != nil || int(sm.up) != n {
		t.Fatalf("up %v of %d: %v", sm.up, n, err)
	}
	var ms2 runtime.MemStats
	runtime.ReadMemStats(&ms2)
	t.Logf("after the scrapes: heap in use %s, heap objects %d, total allocated during 6 scrapes %s",
		humanBytes(float64(ms2.HeapInuse)), ms2.HeapObjects, humanBytes(float64(ms2.TotalAlloc-ms1.TotalAlloc)))

	// CPU of a sending window at 10 events/s per VM.
	ex.waitIdle(ctx, idleShare(n), time.Minute)
	profile(t, filepath.Join(out, "cpu-rate.pb.gz"), func() {
		c0 := ex.cpu()
		s.fl.signal(syscall.SIGUSR1)
		if _, err := s.fl.waitLine(ctx, "sent", 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		ex.waitIdle(ctx, idleShare(n)/2, time.Minute)
		t.Logf("sending window: this process used %s", ex.cpu()-c0)
	})
	fmt.Fprintln(os.Stderr, "profiles in", out)
}

func writeProfile(t *testing.T, path, name string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	debug := 0
	if filepath.Ext(path) == ".txt" {
		debug = 1
	}
	if err := pprof.Lookup(name).WriteTo(f, debug); err != nil {
		t.Fatal(err)
	}
}

func profile(t *testing.T, path string, f func()) {
	t.Helper()
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := pprof.StartCPUProfile(out); err != nil {
		t.Fatal(err)
	}
	defer pprof.StopCPUProfile()
	f()
}
