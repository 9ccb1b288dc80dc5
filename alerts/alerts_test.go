// Package alerts holds the Prometheus alerting rules of qmp_exporter
// (qmp_exporter.rules.yml) and their promtool unit tests
// (qmp_exporter.rules_test.yml). This Go test runs promtool on them and
// checks what promtool cannot: that the rules read only metrics the
// exporter describes, carry the labels and annotations operators rely on,
// have a runbook, and are all covered by firing and non-firing test cases.
package alerts

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/qmp-exporter/qmp_exporter/internal/promlab"
)

const (
	rulesFile     = "qmp_exporter.rules.yml"
	rulesTestFile = "qmp_exporter.rules_test.yml"
	runbookFile   = "../docs/alerts.md"
	runbookURL    = "https://github.com/qmp-exporter/qmp_exporter/blob/main/docs/alerts.md#"
)

// wantAlerts are the alerts of issue 5, in file order.
var wantAlerts = []string{
	"QEMUGuestPanicked", "QEMUWatchdogFired", "QEMUVMPausedOnIOError",
	"QEMUBlockIOErrors", "QEMUBlockImageCorrupted", "QEMUMigrationFailed",
	"QMPMonitorDisconnected", "QMPExporterDown", "QEMUVMResetLoop",
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadRules(t *testing.T) []rule {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// eventAlertRE matches an expression alerting on any increase of a counter.
var eventAlertRE = regexp.MustCompile(`increase\([^)]*\)\s*>\s*0\b`)

func TestRules(t *testing.T) {
	metrics, err := promlab.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	runbook, err := os.ReadFile(runbookFile)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range loadRules(t) {
		if r.Alert == "" {
			t.Errorf("recording rule %s: this file holds alerts only", r.Record)
			continue
		}
		if !slices.Contains(names, r.Alert) {
			names = append(names, r.Alert)
		}
		where := r.Alert + " (" + r.Labels["severity"] + ")"
		if r.For == "" {
			t.Errorf("%s: no for", where)
		}
		if s := r.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("%s: severity %q, want critical or warning", where, s)
		}
		for _, a := range []string{"summary", "description", "runbook_url"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("%s: no %s annotation", where, a)
			}
		}
		if got, want := r.Annotations["runbook_url"], runbookURL+strings.ToLower(r.Alert); got != want {
			t.Errorf("%s: runbook_url %q, want %q", where, got, want)
		}
		if !regexp.MustCompile(`(?m)^## ` + r.Alert + `$`).Match(runbook) {
			t.Errorf("%s: no section \"## %s\" in %s", where, r.Alert, runbookFile)
		}

		sc, err := promlab.Scan(r.Expr)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		labels := map[string]bool{}
		for _, s := range sc.Selectors {
			ls, ok := metrics[s.Metric]
			if !ok {
				t.Errorf("%s: metric %q is not one the exporter describes", where, s.Metric)
				continue
			}
			for _, l := range ls {
				labels[l] = true
			}
			for _, m := range s.Matchers {
				if ls != nil && !slices.Contains(ls, m.Name) {
					t.Errorf("%s: %s has no label %s", where, s.Metric, m.Name)
				}
			}
		}
		// The alert names what it is about: the VM, the device, or the
		// exporter.
		desc := r.Annotations["description"]
		for l, need := range map[string]bool{"vm": labels["vm"], "device": labels["device"], "instance": true} {
			if need && !strings.Contains(desc, "$labels."+l) {
				t.Errorf("%s: the description does not name the %s ({{ $labels.%s }})", where, l, l)
			}
		}
		// An event alert must also see a counter born above 0.
		if eventAlertRE.MatchString(r.Expr) && (!strings.Contains(r.Expr, "unless") || len(sc.Offsets) == 0) {
			t.Errorf("%s: increase(...) > 0 misses a series born with a value above 0; add `or (x unless x offset 5m) > 0`", where)
		}
	}
	if !slices.Equal(names, wantAlerts) {
		t.Errorf("alerts %v, want %v", names, wantAlerts)
	}
}

// TestRulesPromtool checks the rules and runs their unit tests with the
// promtool of every Prometheus release: the same rules must mean the same
// under Prometheus 2 and 3.
func TestRulesPromtool(t *testing.T) {
	for _, r := range promlab.Releases() {
		t.Run(r.Name, func(t *testing.T) {
			promtool := r.RequirePromtool(t)
			for _, args := range [][]string{{"check", "rules", rulesFile}, {"test", "rules", rulesTestFile}} {
				cmd := exec.CommandContext(t.Context(), promtool, args...)
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
				}
			}
		})
	}
}

// TestRulesTestCoverage checks that qmp_exporter.rules_test.yml has, for
// every alert, a case where it fires and one where it does not, and for
// every event alert a case where the counter is born above 0.
func TestRulesTestCoverage(t *testing.T) {
	b, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			Name        string `yaml:"name"`
			InputSeries []struct {
				Series string `yaml:"series"`
				Values string `yaml:"values"`
			} `yaml:"input_series"`
			AlertRuleTest []struct {
				AlertName string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.RuleFiles, []string{filepath.Base(rulesFile)}) {
		t.Errorf("rule_files %v, want [%s]", f.RuleFiles, rulesFile)
	}
	firing, silent, born := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, tc := range f.Tests {
		bornSeries := false
		for _, s := range tc.InputSeries {
			bornSeries = bornSeries || strings.HasPrefix(strings.TrimSpace(s.Values), "_")
		}
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				firing[a.AlertName] = true
				born[a.AlertName] = born[a.AlertName] || bornSeries
			} else {
				silent[a.AlertName] = true
			}
		}
	}
	for _, r := range loadRules(t) {
		if !firing[r.Alert] {
			t.Errorf("%s: no test case where it fires", r.Alert)
		}
		if !silent[r.Alert] {
			t.Errorf("%s: no test case where it does not fire", r.Alert)
		}
		if eventAlertRE.MatchString(r.Expr) && !born[r.Alert] {
			t.Errorf("%s: no test case with a counter series born above 0", r.Alert)
		}
	}
}
