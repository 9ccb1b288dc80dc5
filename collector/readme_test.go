package collector

import (
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	tableBegin = "<!-- BEGIN METRICS TABLE: generated from collector/metrics.go by `go test ./collector -update` -->"
	tableEnd   = "<!-- END METRICS TABLE -->"
)

// metricsTable renders the README's table of collector metrics.
func metricsTable() string {
	var b strings.Builder
	b.WriteString("| Metric | Type | Labels | Source (QMP event or command) | libvirt | Description |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- |\n")
	for _, m := range Metrics() {
		lv := "yes"
		if !m.Libvirt {
			lv = "—"
		}
		b.WriteString("| `" + m.Name + "` | " + m.Type + " | " + labelList(m.Labels) + " | " + m.Source + " | " + lv + " | " + strings.ReplaceAll(m.Help, "|", "\\|") + " |\n")
	}
	return b.String()
}

// TestREADMEMetricsTable keeps the README's metrics table identical to the
// metrics the collector describes; -update rewrites it.
func TestREADMEMetricsTable(t *testing.T) {
	const path = "../README.md"
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	i, j := strings.Index(readme, tableBegin), strings.Index(readme, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %q ... %q markers", tableBegin, tableEnd)
	}
	want := metricsTable()
	got := readme[i+len(tableBegin)+1 : j]
	if *update {
		readme = readme[:i+len(tableBegin)] + "\n" + want + readme[j:]
		if err := os.WriteFile(path, []byte(readme), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("README metrics table is stale; run go test ./collector -update (-want +got):\n%s", diff)
	}
}

func labelList(ls []string) string {
	if len(ls) == 0 {
		return "—"
	}
	return "`" + strings.Join(ls, "`, `") + "`"
}
