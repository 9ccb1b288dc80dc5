package collector

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/source/qmpsock"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
	"github.com/qmp-exporter/qmp_exporter/qmp"
	"github.com/qmp-exporter/qmp_exporter/qmp/qmptest"
)

// canonical renders metric families as sorted lines, one per series
// ("name type {label=value,...} value", labels sorted), plus one per
// family for its HELP, so that two expositions with the same content in
// a different order compare equal.
func canonical(mfs map[string]*dto.MetricFamily) string {
	var lines []string
	for name, mf := range mfs {
		if len(mf.GetMetric()) == 0 {
			continue
		}
		lines = append(lines, fmt.Sprintf("%s HELP %q", name, mf.GetHelp()))
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
			}
			slices.Sort(labels)
			var v float64
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				v = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				v = m.GetGauge().GetValue()
			default:
				v = m.GetUntyped().GetValue()
			}
			lines = append(lines, fmt.Sprintf("%s %s {%s} %s", name, mf.GetType(), strings.Join(labels, ","), strconv.FormatFloat(v, 'g', -1, 64)))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func parseText(t testing.TB, b []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("TextWriter output does not parse: %v\n%s", err, b)
	}
	return mfs
}

// viaRegistry gathers f's VM series through Collector and a registry.
func viaRegistry(t testing.TB, f *fleet.Fleet) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewRegistry() // as the exporter's: extra labels are not described
	reg.MustRegister(NewCollector(f))
	got, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	mfs := make(map[string]*dto.MetricFamily)
	for _, mf := range got {
		mfs[mf.GetName()] = mf
	}
	return mfs
}

// checkTextMatchesCollector fails t unless TextWriter writes exactly the
// series Collector sends for f's VMs, in valid text format, and in
// OpenMetrics what client_golang's encoder writes for them.
func checkTextMatchesCollector(t testing.TB, f *fleet.Fleet) {
	t.Helper()
	var b bytes.Buffer
	if _, err := NewTextWriter(f).WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	want := canonical(viaRegistry(t, f))
	if want == "" {
		t.Fatal("Collector sent nothing; the comparison would prove nothing")
	}
	if diff := cmp.Diff(want, canonical(parseText(t, b.Bytes()))); diff != "" {
		t.Errorf("TextWriter and Collector differ (-Collector +TextWriter):\n%s", diff)
	}
	checkOpenMetricsMatchesCollector(t, f)
}

// TestTextWriterMatchesCollector replays the real QEMU transcripts, with
// awkward vm names and configured labels (one of them named like a label
// the metrics already use), and compares the two ways of exposing them.
func TestTextWriterMatchesCollector(t *testing.T) {
	tr, err := qmptest.LoadTranscript("testdata/transcripts/qemu72-events.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []qmpsock.Target{
		{Network: "unix", Address: "/run/qemu/plain.qmp"},
		{Network: "unix", Address: "/run/qemu/odd.qmp", Name: "a \"quoted\\\" vm\nwith newline",
			Labels: map[string]string{"rack": "r\"1\\", "device": "shadowed", "vm": "ignored", "zone": "ünïcode"}},
	} {
		t.Run(target.Address, func(t *testing.T) {
			replayThen(t, tr, target, func(f *fleet.Fleet) { checkTextMatchesCollector(t, f) })
		})
	}
	for _, f := range []string{"qemu72-basic", "qemu72-jobs"} {
		t.Run(f, func(t *testing.T) {
			tr, err := qmptest.LoadTranscript("testdata/transcripts/" + f + ".jsonl")
			if err != nil {
				t.Fatal(err)
			}
			replayThen(t, tr, qmpsock.Target{Network: "unix", Address: "/run/qemu/" + f + ".qmp"}, func(f *fleet.Fleet) { checkTextMatchesCollector(t, f) })
		})
	}
}

// TestTextWriterMatchesCollectorFleet compares the two on many VMs at once
// (label collisions, one VM reached twice, clones sharing a UUID, VMs
// down), which is where the order and uniqueness of series across VMs
// matter.
func TestTextWriterMatchesCollectorFleet(t *testing.T) {
	f := benchFleet(50)
	i := 0
	f.Visible(time.Now(), func(v *fleet.VM, _ string, st *vmstate.State) {
		switch i % 5 {
		case 1:
			st.Info.Name = "same-name" // vm label collision: falls back to the default name
		case 2:
			st.MarkDown(time.Now())
		case 3:
			// Same UUID and name, no process known: one QEMU, shown once.
			st.Info.Name, st.Info.UUID = "twin", "5c0ffee0-0d15-4a7b-9e3c-000000000000"
		case 4:
			// Same UUID, own names: clones, all shown.
			st.Info.UUID = "5c0ffee0-0d15-4a7b-9e3c-0000000000c1"
		}
		i++
	})
	// A VM seen through libvirt, without the QMP-only metrics.
	v, err := f.Add("libvirt\x00lv", fleet.Meta{DefaultName: "lv", Kind: fleet.Libvirt}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	st := v.Lock()
	st.MarkUp(time.Now())
	st.Apply(qmp.Event{Name: "STOP"})
	st.SetOpenStack(&vmstate.OpenStackInstance{Name: "web \"1\"", Flavor: "m1.small", Project: "shop", User: "alice"})
	v.Unlock()
	checkTextMatchesCollector(t, f)
	var b bytes.Buffer
	if _, err := NewTextWriter(f).WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `qmp_events_total{event="STOP",vm="lv"} 1`) || strings.Contains(b.String(), `qmp_connection_attempts_total{vm="lv"}`) {
		t.Errorf("the libvirt VM's series are wrong:\n%s", b.String())
	}
}

// TestTextWriterRendersOnlyChangedVMs checks the cache: a VM whose state
// did not change is not rendered again, one that changed is, and so is
// one whose vm label changed; a VM the fleet no longer has is forgotten.
func TestTextWriterRendersOnlyChangedVMs(t *testing.T) {
	f := fleet.New(fleet.Options{})
	v, err := f.Add("cached", fleet.Meta{DefaultName: "cached"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	v.Lock().MarkUp(time.Now())
	v.Unlock()
	tw := NewTextWriter(f)
	scrape := func() (string, *renderedVM) {
		var b bytes.Buffer
		if _, err := tw.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		tw.mu.Lock()
		defer tw.mu.Unlock()
		if c := tw.cache[v]; c != nil {
			return b.String(), c.r[textVariant]
		}
		return b.String(), nil
	}
	first, r1 := scrape()
	again, r2 := scrape()
	if r1 == nil || r1 != r2 || first != again {
		t.Fatalf("an unchanged VM was rendered again (%p, %p)", r1, r2)
	}
	v.Lock().Apply(qmp.Event{Name: "STOP"})
	v.Unlock()
	after, r3 := scrape()
	if r3 == r2 {
		t.Fatal("a VM that saw an event was not rendered again")
	}
	if !strings.Contains(after, `qmp_events_total{event="STOP",vm="cached"} 1`) {
		t.Errorf("the new event is missing:\n%s", after)
	}
	checkTextMatchesCollector(t, f)

	// The same state under another vm label must not reuse the lines.
	st := v.LockRead()
	r := render(v, "renamed", st, textVariant)
	v.Unlock()
	if !bytes.Contains(r.data, []byte(`qmp_up{vm="renamed"} 1`)) {
		t.Errorf("render with a new vm label kept the old one:\n%s", r.data)
	}

	f.Remove(v)
	if out, r := scrape(); r != nil || out != "" {
		t.Errorf("a removed VM is still cached (%p) or written:\n%s", r, out)
	}
}

func TestAppendValueAndEscaping(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{{0, "0"}, {1, "1"}, {-3, "-3"}, {1e15, "1000000000000000"}, {1e300, "1e+300"}, {0.25, "0.25"},
		{1.5e-7, "1.5e-07"}} {
		if got := string(appendValue(nil, c.v)); got != c.want {
			t.Errorf("appendValue(%v) = %q, want %q", c.v, got, c.want)
		}
	}
	if got := string(appendEscaped(nil, "a\\b\"c\nd\xff", true)); got != `a\\b\"c\nd`+"\uFFFD" {
		t.Errorf("label escaping: %q", got)
	}
	if got := string(appendEscaped(nil, `say "hi"`, false)); got != `say "hi"` {
		t.Errorf("HELP escaping touched quotes: %q", got)
	}
}

// TestHandlerUUIDConflicts: two clones (one UUID, two names) are both on
// /metrics, and the scrape that first shows them both already counts
// their conflict in qmp_uuid_conflicts_total, which is 0 before.
func TestHandlerUUIDConflicts(t *testing.T) {
	f := fleet.New(fleet.Options{})
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewFleetCollector(f))
	h := NewHandler(NewTextWriter(f), reg, HandlerOpts{})
	scrape := func() string {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		return rec.Body.String()
	}
	clone := func(name string) {
		v, err := f.Add(name, fleet.Meta{DefaultName: name}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		st := v.Lock()
		st.SetInfo(vmstate.Info{Name: name, UUID: "5c0ffee0-0d15-4a7b-9e3c-0000000000c1"})
		st.MarkUp(time.Now())
		v.Unlock()
	}
	clone("web")
	if got := scrape(); !strings.Contains(got, "\nqmp_uuid_conflicts_total 0\n") {
		t.Errorf("one VM: want the counter at 0:\n%s", got)
	}
	clone("db")
	got := scrape()
	for _, want := range []string{`qmp_up{vm="db"} 1`, `qmp_up{vm="web"} 1`, "\nqmp_uuid_conflicts_total 1\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("two clones: missing %s in\n%s", want, got)
		}
	}
}

// TestHandler checks /metrics as served: text format, gzip when asked,
// the registry's families after the VMs', and the bound on concurrent
// scrapes.
func TestHandler(t *testing.T) {
	f := benchFleet(3)
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewListenerCollector(func(fn func(listener, result string, n uint64)) { fn("l", "accepted", 1) }))
	h := NewHandler(NewTextWriter(f), reg, HandlerOpts{})
	for _, enc := range []string{"", "gzip", "deflate, gzip;q=0.5", "gzip;q=0", "*"} {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		if enc != "" {
			req.Header.Set("Accept-Encoding", enc)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != formatText.contentType {
			t.Fatalf("%q: status %d, type %q", enc, rec.Code, rec.Header().Get("Content-Type"))
		}
		body := rec.Body.Bytes()
		gzipped := rec.Header().Get("Content-Encoding") == "gzip"
		if wantGzip := enc == "gzip" || enc == "*" || strings.HasPrefix(enc, "deflate"); gzipped != wantGzip {
			t.Fatalf("Accept-Encoding %q: gzipped=%v", enc, gzipped)
		}
		if gzipped {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		mfs := parseText(t, body)
		if mfs["qmp_up"] == nil || len(mfs["qmp_up"].GetMetric()) != 3 || mfs[listenerConnections.Name] == nil {
			t.Fatalf("%q: missing families:\n%s", enc, body)
		}
	}

	// A full in-flight bound answers 503 at once.
	limited := NewHandler(NewTextWriter(f), reg, HandlerOpts{MaxRequestsInFlight: 1}).(*metricsHandler)
	limited.inFlight <- struct{}{}
	rec := httptest.NewRecorder()
	limited.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("over the limit: status %d, want 503", rec.Code)
	}
	<-limited.inFlight
	rec = httptest.NewRecorder()
	limited.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("under the limit: status %d", rec.Code)
	}
}

// bumpAll marks every VM changed, as if each had seen an event.
func bumpAll(vms []*fleet.VM) {
	for _, v := range vms {
		v.Lock()
		v.Unlock()
	}
}

// BenchmarkTextWriter writes n VMs' series in the text format: "cached"
// when no VM changed since the previous scrape, "changed" when every VM
// did.
func BenchmarkTextWriter(b *testing.B) {
	benchmarkWriter(b, (*TextWriter).WriteTo)
}

// BenchmarkWriteOpenMetrics is BenchmarkTextWriter in OpenMetrics, with
// _created.
func BenchmarkWriteOpenMetrics(b *testing.B) {
	benchmarkWriter(b, func(tw *TextWriter, w io.Writer) (int64, error) { return tw.WriteOpenMetricsTo(w, true) })
}

func benchmarkWriter(b *testing.B, write func(*TextWriter, io.Writer) (int64, error)) {
	for _, n := range []int{100, 1000, 10000} {
		f := benchFleet(n)
		var vms []*fleet.VM
		f.Visible(time.Now(), func(v *fleet.VM, _ string, _ *vmstate.State) { vms = append(vms, v) })
		tw := NewTextWriter(f)
		for _, mode := range []string{"cached", "changed"} {
			b.Run(fmt.Sprintf("%dVMs/%s", n, mode), func(b *testing.B) {
				b.ReportAllocs()
				var size int64
				for b.Loop() {
					if mode == "changed" {
						bumpAll(vms)
					}
					k, err := write(tw, io.Discard)
					if err != nil || k == 0 {
						b.Fatal(err, k)
					}
					size = k
				}
				b.ReportMetric(float64(size), "bytes/scrape")
			})
		}
	}
}
