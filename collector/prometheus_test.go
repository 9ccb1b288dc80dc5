package collector_test

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qmp-exporter/qmp_exporter/collector"
	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/promlab"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// TestPrometheusScrapesOpenMetrics lets a real Prometheus scrape the
// handler: it must negotiate OpenMetrics and read the _created samples.
// (Without created-timestamp-zero-ingestion, Prometheus 2 and 3 store
// each _created as a series of its own, which is what is checked here.)
// In its own package, as promlab imports collector.
func TestPrometheusScrapesOpenMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Prometheus server")
	}
	bin := promlab.RequirePrometheus(t)
	f := fleet.New(fleet.Options{})
	added := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	v, err := f.Add("k", fleet.Meta{DefaultName: "web"}, added)
	if err != nil {
		t.Fatal(err)
	}
	st := v.Lock()
	st.MarkUp(time.Now())
	st.Apply(qmp.Event{Name: "STOP"})
	v.Unlock()
	h := collector.NewHandler(collector.NewTextWriter(f), prometheus.NewRegistry(), collector.HandlerOpts{})
	var mu sync.Mutex
	var accept, contentType string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		mu.Lock()
		accept, contentType = r.Header.Get("Accept"), w.Header().Get("Content-Type")
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	prom, err := promlab.Start(ctx, promlab.Options{Dir: t.TempDir(), Binary: bin, Targets: []string{strings.TrimPrefix(srv.URL, "http://")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prom.Close() })
	want := float64(added.UnixMilli()) / 1000
	if _, err := prom.WaitQuery(ctx, `qmp_events_created{vm="web",event="STOP"}`, func(s []promlab.Sample) bool {
		return len(s) == 1 && math.Abs(s[0].Value-want) < 0.002
	}); err != nil {
		t.Fatalf("%v\nPrometheus output:\n%s", err, prom.Output())
	}
	if _, err := prom.WaitQuery(ctx, `qmp_events_total{vm="web",event="STOP"}`, func(s []promlab.Sample) bool {
		return len(s) == 1 && s[0].Value == 1
	}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("Prometheus sent Accept: %s\nand got Content-Type: %s", accept, contentType)
}
