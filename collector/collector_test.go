package collector

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/qmp-exporter/qmp_exporter/qmp"
	"github.com/qmp-exporter/qmp_exporter/qmp/qmptest"
)

var update = flag.Bool("update", false, "rewrite golden files")

const expfmtText = expfmt.TypeTextPlain

// TestGolden replays each transcript recorded from real QEMU 7.2 through a
// real watcher (the greeting and query replies answer its sync, then the
// recorded events are emitted) and compares /metrics with
// testdata/<transcript>.prom.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/transcripts/*.jsonl")
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".jsonl")
		t.Run(name, func(t *testing.T) {
			tr, err := qmptest.LoadTranscript(f)
			if err != nil {
				t.Fatal(err)
			}
			got := replay(t, tr, Target{Network: "unix", Address: "/run/qemu/" + name + ".qmp"})
			golden := filepath.Join("testdata", name+".prom")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("/metrics differs from %s (-want +got):\n%s", golden, diff)
			}
		})
	}
}

func replay(t *testing.T, tr *qmptest.Transcript, target Target) []byte {
	var out []byte
	replayThen(t, tr, target, func(m *Manager) {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(NewCollector(m))
		if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) != 0 {
			t.Errorf("lint: %v %v", problems, err)
		}
		b, err := formatAll(reg)
		if err != nil {
			t.Fatal(err)
		}
		out = b
	})
	return out
}

// replayThen replays tr through a real watcher of target (see TestGolden)
// and calls check with its Manager once every event has been folded.
func replayThen(t *testing.T, tr *qmptest.Transcript, target Target, check func(*Manager)) {
	synctest.Test(t, func(t *testing.T) {
		var srv *qmptest.Server
		m := NewManager(Options{})
		// The golden shows the initial sync plus the pure fold of every
		// recorded event. Follow-up queries are left out: a replay cannot
		// answer them with what QEMU would have said at that moment (the
		// watcher tests and the end-to-end tests cover them).
		m.noFollowUps = true
		m.dial = func(ctx context.Context, network, address string, opts qmp.Options) (*qmp.Conn, error) {
			client, s := qmptest.New(t, qmptest.Options{Transcript: tr})
			srv = s
			return qmp.NewConn(ctx, client, opts)
		}
		m.Sync([]Target{target})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { m.Run(ctx); close(done) }()
		synctest.Wait()
		for i := range tr.Events {
			if err := srv.EmitEvent(tr, i); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
		}
		check(m)
		cancel()
		<-done
	})
}

// formatAll renders every family g gathers in the text format.
// (testutil.GatherAndFormat with no names renders nothing.)
func formatAll(g prometheus.Gatherer) ([]byte, error) {
	mfs, err := g.Gather()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmtText))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return nil, err
		}
	}
	if b.Len() == 0 {
		return nil, errors.New("no metrics gathered")
	}
	return b.Bytes(), nil
}

func TestDescribeCoversCollect(t *testing.T) {
	// A pedantic registry fails Gather if Collect sends a metric whose
	// Desc was not described.
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeQEMU{t: t, status: "running", name: "d"}
		m, stop := newTestManager(t, fake, Target{Network: "unix", Address: "/x/d.sock"})
		defer stop()
		synctest.Wait()
		if err := fake.server().Emit("STOP", nil); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(NewCollector(m))
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
	})
}

// benchManager builds a Manager with n VMs that are up and have seen a few
// kinds of event, without starting any watcher.
func benchManager(n int) *Manager {
	m := NewManager(Options{})
	targets := make([]Target, n)
	for i := range targets {
		targets[i] = Target{Network: "unix", Address: "/run/qemu/vm" + strconv.Itoa(i) + ".qmp"}
	}
	m.Sync(targets)
	i := 0
	for _, mw := range m.watchers {
		w := mw.w
		w.st.setInfo(vmInfo{name: w.target.DefaultName(), uuid: fmt.Sprintf("5c0ffee0-0d15-4a7b-9e3c-%012d", len(m.watchers)+i), version: "7.2.22"})
		i++
		w.st.up = true
		w.st.setStatus("running")
		for _, e := range []string{"STOP", "RESUME", "RESET", "RTC_CHANGE", "VNC_CONNECTED", "VNC_DISCONNECTED"} {
			w.st.apply(ev(e, ""))
		}
	}
	return m
}

func BenchmarkCollect(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(strconv.Itoa(n)+"VMs", func(b *testing.B) {
			c := NewCollector(benchManager(n))
			ch := make(chan prometheus.Metric, 1024)
			done := make(chan int)
			go func() {
				count := 0
				for range ch {
					count++
				}
				done <- count
			}()
			b.ReportAllocs()
			for b.Loop() {
				c.Collect(ch)
			}
			close(ch)
			if <-done == 0 {
				b.Fatal("nothing collected")
			}
		})
	}
}
