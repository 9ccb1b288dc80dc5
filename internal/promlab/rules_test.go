package promlab

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const testRules = `# a comment that stays
groups:
  - name: g
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
      - alert: Long
        expr: |
          up == 0
        for: 5m
        labels:
          severity: warning
      - alert: Short
        expr: up == 0
        for: 500ms
      - alert: NoFor
        expr: up == 0
`

func TestShortenFor(t *testing.T) {
	out, err := ShortenFor([]byte(testRules), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Groups []struct {
			Rules []map[string]any `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := map[string]any{"Long": "1s", "Short": "500ms", "NoFor": nil}
	rules := got.Groups[0].Rules
	if len(rules) != 4 {
		t.Fatalf("got %d rules, want 4:\n%s", len(rules), out)
	}
	for _, r := range rules[1:] {
		name := r["alert"].(string)
		if r["for"] != want[name] {
			t.Errorf("%s: for = %v, want %v", name, r["for"], want[name])
		}
	}
	if rules[1]["expr"] != "up == 0\n" || rules[1]["labels"].(map[string]any)["severity"] != "warning" {
		t.Errorf("rule Long changed beyond its for:\n%s", out)
	}
	if !strings.Contains(string(out), "# a comment that stays") {
		t.Errorf("comment lost:\n%s", out)
	}
	if _, err := ShortenFor([]byte("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        for: soon\n"), 0); err == nil {
		t.Error("ShortenFor accepted for: soon")
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"0s": 0, "5m": 5 * time.Minute, "1h30m": 90 * time.Minute, "250ms": 250 * time.Millisecond, "1d": 24 * time.Hour,
	} {
		if got, err := parseDuration(in); err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "5", "m", "5 m", "-5m", "5x"} {
		if got, err := parseDuration(in); err == nil {
			t.Errorf("parseDuration(%q) = %v, want an error", in, got)
		}
	}
}

func TestCheckExprs(t *testing.T) {
	for _, r := range Releases() {
		t.Run(r.Name, func(t *testing.T) { testCheckExprs(t, r.RequirePromtool(t)) })
	}
}

func testCheckExprs(t *testing.T, promtool string) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := CheckExprs(ctx, promtool, t.TempDir(), []string{`sum by (vm) (rate(qmp_events_total{vm=~".*"}[1m]))`, `up == 0`}); err != nil {
		t.Errorf("valid expressions: %v", err)
	}
	err := CheckExprs(ctx, promtool, t.TempDir(), []string{`up`, `sum(rate(x[1m])`, `up`, `foo{`})
	if err == nil {
		t.Fatal("invalid expressions accepted")
	}
	msg := err.Error()
	if !strings.Contains(msg, "2 expression(s)") || !strings.Contains(msg, "expr: sum(rate(x[1m])") || !strings.Contains(msg, "expr: foo{") {
		t.Errorf("error does not name both bad expressions:\n%s", msg)
	}
}

func TestMetrics(t *testing.T) {
	m, err := Metrics()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]string{
		"qmp_up":                    {"job", "instance", "vm"},
		"qmp_vm_status":             {"job", "instance", "vm", "status"},
		"qmp_block_io_errors_total": {"job", "instance", "vm", "device", "operation", "action"},
	} {
		got, ok := m[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s labels = %v, want %v", name, got, want)
		}
	}
	for _, name := range ExtraMetrics {
		if _, ok := m[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}
	if len(m) < 40 {
		t.Errorf("only %d metrics", len(m))
	}
}
