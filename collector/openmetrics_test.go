package collector

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/textparse"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// The Accept headers of real scrapers.
const (
	// Prometheus 2 (2.42 sends this, as TestPrometheusScrapesOpenMetrics
	// logs).
	acceptPrometheus2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
	// Prometheus 3 by default (built from its default scrape_protocols
	// as its scrape package does).
	acceptPrometheus3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.7,application/openmetrics-text;version=0.0.1;q=0.6,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.3"
	// Prometheus 3 with created-timestamp-zero-ingestion or native
	// histograms: protobuf first.
	acceptPrometheus3Proto = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)

func TestNegotiate(t *testing.T) {
	for _, tc := range []struct {
		name, accept string
		want         format
	}{
		{"no header", "", formatText},
		{"curl", "*/*", formatText},
		{"Prometheus 2", acceptPrometheus2, formatOM1},
		{"Prometheus 3", acceptPrometheus3, formatOM1},
		{"Prometheus 3, protobuf first: declined", acceptPrometheus3Proto, formatOM1},
		{"protobuf only: text anyway", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited", formatText},
		{"text asked for", "text/plain;version=0.0.4", formatText},
		{"text without version", "text/plain", formatText},
		{"text 1.0.0 only: 0.0.4, the fallback", "text/plain;version=1.0.0", formatText},
		{"OpenMetrics without version means 0.0.1", "application/openmetrics-text", formatOM0},
		{"OpenMetrics 0.0.1", "application/openmetrics-text; version=0.0.1", formatOM0},
		{"OpenMetrics 2.0.0 is not offered", "application/openmetrics-text;version=2.0.0", formatText},
		{"application/*", "application/*", formatOM1},
		{"higher q wins whatever the order", "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5", formatText},
		{"higher q wins over a more specific range", "application/openmetrics-text;version=1.0.0;q=0.1,*/*;q=0.9", formatText},
		{"the most specific range sets q", "application/openmetrics-text;version=1.0.0;q=0,*/*", formatText},
		{"q=0 is not acceptable", "application/openmetrics-text;version=1.0.0;q=0", formatText},
		{"equal q: the earlier range", "application/openmetrics-text;version=1.0.0, text/plain;version=0.0.4", formatOM1},
		{"equal q, text first", "text/plain, application/openmetrics-text;version=1.0.0", formatText},
		{"case and spaces", " Application/OpenMetrics-Text ; Version=1.0.0 ; Q=0.8 , text/plain;q=0.5", formatOM1},
		{"a malformed range is skipped", "application/openmetrics-text;version=1.0.0;q=x, ;;, text/plain;q=0.2", formatText},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := negotiate(tc.accept); got != tc.want {
				t.Errorf("negotiate(%q) = %q, want %q", tc.accept, got.contentType, tc.want.contentType)
			}
		})
	}
}

func TestAppendMilli(t *testing.T) {
	for ms, want := range map[int64]string{
		946684800000: "946684800", 1777636800250: "1777636800.25", 1777636800123: "1777636800.123",
		1000010: "1000.01", 5: "0.005",
	} {
		if got := string(appendMilli(nil, ms)); got != want {
			t.Errorf("appendMilli(%d) = %q, want %q", ms, got, want)
		}
	}
}

// omSample is a series as Prometheus reads it from OpenMetrics: its
// value, and the start timestamp its _created gave (Unix ms; 0: none).
type omSample struct {
	V  float64
	ST int64
}

// omExposition is an OpenMetrics exposition as Prometheus reads it.
type omExposition struct {
	Families map[string]string   // family name → "type: help"
	Series   map[string]omSample // series (labels.Labels.String()) → sample
}

// parseOpenMetrics parses b with Prometheus's own OpenMetrics parser, as
// a scrape with created-timestamp-zero-ingestion does (each _created
// becomes its counter's start timestamp), and checks the rules that
// parser leaves to the writer: every sample belongs to the family
// declared just before it (a gauge's name, a counter's name with _total
// or _created), and no family is declared twice. The parser itself fails
// on a document that does not end with "# EOF".
func parseOpenMetrics(t testing.TB, b []byte) omExposition {
	t.Helper()
	out := omExposition{Families: map[string]string{}, Series: map[string]omSample{}}
	p := textparse.NewOpenMetricsParser(b, labels.NewSymbolTable(), textparse.WithOMParserSTSeriesSkipped())
	var family string
	var typ model.MetricType
	help := map[string]string{}
	for {
		entry, err := p.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("OpenMetrics does not parse: %v\n%s", err, b)
		}
		switch entry {
		case textparse.EntryHelp:
			name, text := p.Help()
			help[string(name)] = string(text)
		case textparse.EntryType:
			name, mt := p.Type()
			if family = string(name); out.Families[family] != "" {
				t.Errorf("family %s declared twice", family)
			}
			typ = mt
			out.Families[family] = string(mt) + ": " + help[family]
		case textparse.EntrySeries:
			var ls labels.Labels
			p.Labels(&ls)
			name := ls.Get(model.MetricNameLabel)
			if !(typ == model.MetricTypeGauge && name == family ||
				typ == model.MetricTypeCounter && (name == family+"_total" || name == family+"_created")) {
				t.Errorf("sample %s does not belong to the %s family %s before it", ls, typ, family)
			}
			_, _, v := p.Series()
			if _, dup := out.Series[ls.String()]; dup {
				t.Errorf("series %s repeated", ls)
			}
			out.Series[ls.String()] = omSample{V: v, ST: p.StartTimestamp()}
		}
	}
	return out
}

// sameSample compares samples; start timestamps may differ by the
// millisecond the parser's float conversion can lose.
var sameSample = cmp.Comparer(func(a, b omSample) bool {
	st := a.ST - b.ST
	return (a.V == b.V || math.IsNaN(a.V) && math.IsNaN(b.V)) && st >= -1 && st <= 1
})

// openMetricsOf returns what TextWriter writes in OpenMetrics for f's
// VMs, ended as the handler ends it.
func openMetricsOf(t testing.TB, tw *TextWriter, created bool) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := tw.WriteOpenMetricsTo(&b, created); err != nil {
		t.Fatal(err)
	}
	b.WriteString("# EOF\n")
	return b.Bytes()
}

// checkOpenMetricsMatchesCollector fails t unless TextWriter's OpenMetrics
// for f's VMs reads, in Prometheus's parser, exactly as what client_golang's
// own OpenMetrics encoder writes for Collector: the same families, series,
// values and _created.
func checkOpenMetricsMatchesCollector(t testing.TB, f *fleet.Fleet) {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(f))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	enc := expfmt.NewEncoder(&want, expfmt.FmtOpenMetrics_1_0_0, expfmt.WithCreatedLines())
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.(expfmt.Closer).Close(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(parseOpenMetrics(t, want.Bytes()), parseOpenMetrics(t, openMetricsOf(t, NewTextWriter(f), true)), sameSample); diff != "" {
		t.Errorf("TextWriter's OpenMetrics and Collector's differ (-Collector +TextWriter):\n%s", diff)
	}
}

// TestOpenMetricsCreated is the rule for _created: a counter that has
// counted something has one when it started from zero when its VM's
// state did, at the moment its source added the VM (Prometheus reads it
// to the millisecond). Not a counter at 0, which shows its start itself;
// not the gauges; not the per-device counters, whose series start when
// the device is known and again when it is plugged back; and no counter
// at all once a different VM answered on the socket and the state
// started again at a moment the exporter did not record.
func TestOpenMetricsCreated(t *testing.T) {
	f := fleet.New(fleet.Options{})
	added := time.Date(2026, 5, 1, 12, 0, 0, 250e6, time.UTC)
	v, err := f.Add("k", fleet.Meta{DefaultName: "web"}, added)
	if err != nil {
		t.Fatal(err)
	}
	st := v.Lock()
	st.SetInfo(vmstate.Info{Name: "web", UUID: "5c0ffee0-0d15-4a7b-9e3c-000000000001"})
	st.MarkUp(time.Now())
	st.SetBlock([]vmstate.BlockEntry{{Device: "drive0", Qdev: "disk0"}})
	st.Apply(qmp.Event{Name: "STOP"})
	st.Apply(qmp.Event{Name: "BLOCK_IO_ERROR", Data: []byte(`{"device": "drive0", "node-name": "n0", "operation": "read", "action": "report", "nospace": false, "reason": "Input/output error"}`)})
	v.Unlock()
	tw := NewTextWriter(f)

	om := parseOpenMetrics(t, openMetricsOf(t, tw, true))
	withST, deviceCounted := 0, false
	for series, s := range om.Series {
		var m *Metric
		for _, d := range vmMetrics {
			if strings.HasPrefix(series, `{__name__="`+d.Name+`"`) {
				m = d
			}
		}
		if m == nil {
			t.Fatalf("series %s of no metric", series)
		}
		device := strings.Contains(series, `device="`)
		deviceCounted = deviceCounted || device && m.Type == counter && s.V > 0
		want := int64(0)
		if m.Type == counter && !device && s.V > 0 {
			want = added.UnixMilli()
		}
		if s.ST != want {
			t.Errorf("%s: start timestamp %d, want %d", series, s.ST, want)
		}
		if s.ST != 0 {
			withST++
		}
	}
	if withST == 0 || !deviceCounted || len(om.Series) == withST {
		t.Fatalf("the exposition lacks the counters the rule is about:\n%v", om.Series)
	}

	// Without _created, the same series, none with a start timestamp.
	plain := openMetricsOf(t, tw, false)
	if bytes.Contains(plain, []byte("_created")) {
		t.Errorf("_created written though not asked for:\n%s", plain)
	}
	noST := parseOpenMetrics(t, plain)
	if len(noST.Series) != len(om.Series) {
		t.Errorf("%d series without _created, %d with", len(noST.Series), len(om.Series))
	}

	// A different VM on the same socket: its counters start again, when
	// is not known.
	v.Lock().SetInfo(vmstate.Info{Name: "db", UUID: "5c0ffee0-0d15-4a7b-9e3c-000000000002"})
	v.Unlock()
	if b := openMetricsOf(t, tw, true); bytes.Contains(b, []byte("_created")) {
		t.Errorf("_created written for a state whose start is unknown:\n%s", b)
	}
}

// TestTextWriterVariantsCachedApart: scrapes in the two formats keep a
// rendering each, so alternating formats renders nothing again, and a
// change shows in both.
func TestTextWriterVariantsCachedApart(t *testing.T) {
	f := benchFleet(1)
	tw := NewTextWriter(f)
	var v *fleet.VM
	f.Visible(time.Now(), func(vm *fleet.VM, _ string, _ *vmstate.State) { v = vm })
	rendered := func() [variants]*renderedVM {
		tw.mu.Lock()
		defer tw.mu.Unlock()
		return tw.cache[v].r
	}
	text := func() string {
		var b bytes.Buffer
		if _, err := tw.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	text()
	openMetricsOf(t, tw, true)
	first := rendered()
	text()
	openMetricsOf(t, tw, true)
	if again := rendered(); again != first || first[textVariant] == nil || first[omVariant] == nil {
		t.Fatalf("alternating formats rendered again: %v then %v", first, again)
	}
	v.Lock().Apply(qmp.Event{Name: "POWERDOWN"})
	v.Unlock()
	if !strings.Contains(text(), `qmp_events_total{event="POWERDOWN",vm="vm0"} 1`) ||
		!bytes.Contains(openMetricsOf(t, tw, true), []byte(`qmp_events_total{event="POWERDOWN",vm="vm0"} 1`)) {
		t.Error("a change did not show in both formats")
	}
}

// TestHandlerOpenMetrics checks /metrics as Prometheus scrapes it:
// OpenMetrics, gzipped, the registry's families after the VMs', the
// registry's counters with their _created too, and "# EOF" last; with
// NoCreated, no _created anywhere.
func TestHandlerOpenMetrics(t *testing.T) {
	f := benchFleet(3)
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewListenerCollector(func(fn func(listener, result string, n uint64)) { fn("l", "accepted", 1) }))
	requests := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_requests_total", Help: "A counter of the registry's."})
	requests.Inc()
	reg.MustRegister(requests)
	for _, noCreated := range []bool{false, true} {
		h := NewHandler(NewTextWriter(f), reg, HandlerOpts{NoCreated: noCreated})
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Header.Set("Accept", acceptPrometheus2)
		req.Header.Set("Accept-Encoding", "gzip")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != formatOM1.contentType || rec.Header().Get("Content-Encoding") != "gzip" {
			t.Fatalf("status %d, headers %v", rec.Code, rec.Header())
		}
		if vary := rec.Header().Values("Vary"); !strings.Contains(strings.Join(vary, ","), "Accept") {
			t.Errorf("Vary %q does not name Accept", vary)
		}
		zr, err := gzip.NewReader(rec.Body)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasSuffix(body, []byte("\n# EOF\n")) {
			t.Errorf("the body does not end with # EOF:\n%s", body)
		}
		om := parseOpenMetrics(t, body)
		for _, family := range []string{"qmp_up", "qmp_events", "qmp_listener_connections", "test_requests"} {
			if om.Families[family] == "" {
				t.Errorf("family %s missing:\n%s", family, body)
			}
		}
		wantST := !noCreated
		for series, s := range om.Series {
			if strings.Contains(series, "test_requests_total") || strings.Contains(series, `"qmp_events_total"`) {
				if (s.ST != 0) != wantST {
					t.Errorf("NoCreated=%v: %s has start timestamp %d", noCreated, series, s.ST)
				}
			}
		}
		if noCreated && bytes.Contains(body, []byte("_created")) {
			t.Errorf("NoCreated, yet _created written:\n%s", body)
		}
	}
}

// TestOpenMetricsGoldens parses every golden OpenMetrics exposition
// (testdata/*.openmetrics, what /metrics serves for the recorded QEMU 7.2
// transcripts) with Prometheus's OpenMetrics parser, and checks which
// series carry a start timestamp (see Metric.countsFromStart). `make checkmetrics` runs it, as
// promtool (which reads only the text format) checks the *.prom files.
func TestOpenMetricsGoldens(t *testing.T) {
	files, err := filepath.Glob("testdata/*.openmetrics")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/*.openmetrics: %v", err)
	}
	fromStart := map[string]bool{}
	for _, m := range vmMetrics {
		fromStart[m.Name] = m.countsFromStart()
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			om := parseOpenMetrics(t, b)
			if len(om.Series) == 0 {
				t.Fatal("no series")
			}
			for series, s := range om.Series {
				name, _, _ := strings.Cut(strings.TrimPrefix(series, `{__name__="`), `"`)
				if want := fromStart[name] && s.V != 0; (s.ST > 0) != want {
					t.Errorf("%s: start timestamp %d, want one: %v", series, s.ST, want)
				}
			}
		})
	}
}
