package collector

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/source/qmpsock"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
	"github.com/qmp-exporter/qmp_exporter/qmp"
	"github.com/qmp-exporter/qmp_exporter/qmp/qmptest"
)

var update = flag.Bool("update", false, "rewrite golden files")

const expfmtText = expfmt.TypeTextPlain

// TestGolden replays each transcript recorded from real QEMU (7.2 and
// 10.0) through a real watcher (the greeting and query replies answer its
// sync, then the recorded events are emitted) and compares /metrics with
// testdata/<transcript>.prom (the text format) and
// testdata/<transcript>.openmetrics (OpenMetrics, as Prometheus gets it;
// the VM was added at the start of the test's synctest bubble,
// 2000-01-01T00:00:00Z, its counters' _created).
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
			text, om := replay(t, tr, qmpsock.Target{Network: "unix", Address: "/run/qemu/" + name + ".qmp"})
			checkGolden(t, filepath.Join("testdata", name+".prom"), text)
			checkGolden(t, filepath.Join("testdata", name+".openmetrics"), om)
		})
	}
}

// checkGolden compares got with the golden file, which -update rewrites.
func checkGolden(t *testing.T, golden string, got []byte) {
	t.Helper()
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
}

// replay returns the text format through Collector and a registry, and
// the OpenMetrics the handler serves a Prometheus.
func replay(t *testing.T, tr *qmptest.Transcript, target qmpsock.Target) (text, om []byte) {
	replayThen(t, tr, target, func(f *fleet.Fleet) {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(NewCollector(f))
		if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) != 0 {
			t.Errorf("lint: %v %v", problems, err)
		}
		b, err := formatAll(reg)
		if err != nil {
			t.Fatal(err)
		}
		text = b
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Header.Set("Accept", acceptPrometheus3)
		rec := httptest.NewRecorder()
		NewHandler(NewTextWriter(f), prometheus.NewRegistry(), HandlerOpts{}).ServeHTTP(rec, req)
		if ct := rec.Header().Get("Content-Type"); ct != formatOM1.contentType {
			t.Fatalf("Content-Type %q for Prometheus' Accept", ct)
		}
		om = rec.Body.Bytes()
	})
	return text, om
}

// replayThen replays tr through a real QMP-socket source watching target
// (see TestGolden) and calls check with its fleet once every event has
// been folded.
func replayThen(t *testing.T, tr *qmptest.Transcript, target qmpsock.Target, check func(*fleet.Fleet)) {
	synctest.Test(t, func(t *testing.T) {
		var srv *qmptest.Server
		f := fleet.New(fleet.Options{})
		src := qmpsock.New(f, qmpsock.Options{
			// The golden shows the initial sync plus the pure fold of
			// every recorded event. Follow-up queries are left out: a
			// replay cannot answer them with what QEMU would have said at
			// that moment (the source's tests and the end-to-end tests
			// cover them).
			NoFollowUps: true,
			Dial: func(ctx context.Context, network, address string, opts qmp.Options) (*qmp.Conn, error) {
				client, s := qmptest.New(t, qmptest.Options{Transcript: tr})
				srv = s
				return qmp.NewConn(ctx, client, opts)
			},
		})
		src.Sync([]qmpsock.Target{target})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { src.Run(ctx); close(done) }()
		synctest.Wait()
		for i := range tr.Events {
			if err := srv.EmitEvent(tr, i); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
		}
		check(f)
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
	f := benchFleet(3)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(f))
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

// benchFleet builds a fleet of n VMs that are up and have seen a few
// kinds of event, as a source would have left them.
func benchFleet(n int) *fleet.Fleet {
	f := fleet.New(fleet.Options{})
	for i := range n {
		name := "vm" + strconv.Itoa(i)
		v, err := f.Add(name, fleet.Meta{DefaultName: name, Address: "/run/qemu/" + name + ".qmp"}, time.Now())
		if err != nil {
			panic(err)
		}
		st := v.Lock()
		st.SetInfo(vmstate.Info{Name: name, UUID: fmt.Sprintf("5c0ffee0-0d15-4a7b-9e3c-%012d", n+i), Version: "7.2.22"})
		st.MarkUp(time.Now())
		st.SetStatus("running")
		for _, e := range []string{"STOP", "RESUME", "RESET", "RTC_CHANGE", "VNC_CONNECTED", "VNC_DISCONNECTED"} {
			st.Apply(qmp.Event{Name: e, Time: time.Unix(1700000000, 5000)})
		}
		v.Unlock()
	}
	return f
}

func BenchmarkCollect(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(strconv.Itoa(n)+"VMs", func(b *testing.B) {
			c := NewCollector(benchFleet(n))
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
