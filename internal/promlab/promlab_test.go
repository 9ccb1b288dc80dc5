package promlab

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestServer runs a real Prometheus of every release against a tiny
// exporter and a rule file, and exercises every API helper.
func TestServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real Prometheus")
	}
	for _, r := range Releases() {
		t.Run(r.Name, func(t *testing.T) { testServer(t, r.RequirePrometheus(t)) })
	}
}

func testServer(t *testing.T, bin string) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	var value atomic.Int64
	exp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "# TYPE promlab_test_value gauge\npromlab_test_value{vm=\"a\"} %d\n", value.Load())
	}))
	defer exp.Close()

	dir := t.TempDir()
	rules, err := ShortenFor([]byte(`groups:
  - name: test
    rules:
      - alert: PromlabTestHigh
        expr: promlab_test_value > 0
        for: 10m
        labels:
          severity: none
        annotations:
          summary: "value of {{ $labels.vm }} is {{ $value }}"
`), 0)
	if err != nil {
		t.Fatal(err)
	}
	rulesPath := filepath.Join(dir, "test.rules.yml")
	if err := os.WriteFile(rulesPath, rules, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s, err := Start(ctx, Options{
		Dir:       filepath.Join(dir, "prom"),
		Binary:    bin,
		Job:       "test",
		Targets:   []string{strings.TrimPrefix(exp.URL, "http://")},
		RuleFiles: []string{rulesPath},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()

	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	res, err := s.WaitQuery(wctx, `promlab_test_value{job="test"}`, func(r []Sample) bool { return len(r) == 1 })
	if err != nil {
		t.Fatal(err)
	}
	if r := res[0]; r.Value != 0 || r.Labels["vm"] != "a" || r.Labels["__name__"] != "promlab_test_value" {
		t.Errorf("Query = %+v", res)
	}
	if res, err := s.Query(ctx, `scalar(promlab_test_value) + 1`); err != nil || len(res) != 1 || res[0].Value != 1 {
		t.Errorf("scalar Query = %+v, %v", res, err)
	}
	if _, err := s.Query(ctx, `sum(`); err == nil || !strings.Contains(err.Error(), "bad_data") {
		t.Errorf("bad query error = %v, want bad_data", err)
	}

	value.Store(3)
	a, err := s.WaitAlert(wctx, "PromlabTestHigh", map[string]string{"vm": "a", "job": "test"})
	if err != nil {
		t.Fatal(err)
	}
	if a.Annotations["summary"] != "value of a is 3" || a.Labels["severity"] != "none" {
		t.Errorf("alert = %+v", a)
	}
	rules2, err := s.Rules(ctx)
	if err != nil || len(rules2) != 1 || rules2[0].Health != "ok" || rules2[0].State != "firing" {
		t.Errorf("Rules = %+v, %v", rules2, err)
	}
	// The range holds a sample of each value once Prometheus has scraped
	// the new one (bounded poll: a loaded machine may be a scrape late).
	var series []Series
	for deadline := time.Now().Add(10 * time.Second); ; {
		series, err = s.QueryRange(ctx, `promlab_test_value`, start, time.Now(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(series) == 1 && len(series[0].Points) >= 2 && series[0].Points[len(series[0].Points)-1].Value == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("QueryRange = %+v", series)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if p := series[0].Points; p[0].Value != 0 || p[len(p)-1].Value != 3 || p[0].Time.Before(start.Add(-time.Second)) {
		t.Errorf("QueryRange points = %+v", p)
	}

	// A short wait for an alert that never fires fails with the state.
	sctx, scancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer scancel()
	if _, err := s.WaitAlert(sctx, "PromlabTestHigh", map[string]string{"vm": "b"}); err == nil ||
		!strings.Contains(err.Error(), `firing PromlabTestHigh {instance=`) || !strings.Contains(err.Error(), "rule PromlabTestHigh: health ok") {
		t.Errorf("WaitAlert error = %v", err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Exited():
	default:
		t.Error("Close returned before Prometheus exited")
	}
}

func TestStartFailure(t *testing.T) {
	for _, r := range Releases() {
		t.Run(r.Name, func(t *testing.T) { testStartFailure(t, r.RequirePrometheus(t)) })
	}
}

func testStartFailure(t *testing.T, bin string) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.rules.yml")
	if err := os.WriteFile(bad, []byte("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: sum(\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Start(ctx, Options{Dir: dir, Binary: bin, RuleFiles: []string{bad}})
	if err == nil {
		s.Close()
		t.Fatal("Start with an invalid rule file succeeded")
	}
	if !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "bad.rules.yml") {
		t.Errorf("error does not say Prometheus exited on the rule file: %v", err)
	}
}
