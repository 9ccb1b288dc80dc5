package collector

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// TestOlderQEMUShapes exposes what a QEMU older than 4.0 says in the
// shapes of its time, as the README's version notes promise: a SHUTDOWN
// with guest alone (2.10 to 3.1) under reason unknown, a
// QUORUM_REPORT_BAD without type (before 2.6) under operation unknown,
// and no data error for either.
func TestOlderQEMUShapes(t *testing.T) {
	f := fleet.New(fleet.Options{})
	v, err := f.Add("old", fleet.Meta{DefaultName: "old"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	st := v.Lock()
	st.MarkUp(time.Now())
	for _, e := range []struct{ name, data string }{
		{"SHUTDOWN", `{"guest": false}`},
		{"SHUTDOWN", `{"guest": true}`},
		{"QUORUM_REPORT_BAD", `{"node-name": "quorum0", "sector-num": 0, "sectors-count": 8}`},
		{"QUORUM_REPORT_BAD", `{"type": "read", "node-name": "quorum0", "sector-num": 0, "sectors-count": 8}`},
	} {
		st.Apply(qmp.Event{Name: e.name, Data: json.RawMessage(e.data)})
	}
	v.Unlock()
	checkTextMatchesCollector(t, f)
	var b bytes.Buffer
	if _, err := NewTextWriter(f).WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`qmp_shutdowns_total{guest="false",reason="unknown",vm="old"} 1`,
		`qmp_shutdowns_total{guest="true",reason="unknown",vm="old"} 1`,
		`qmp_block_quorum_bad_reports_total{device="quorum0",operation="unknown",vm="old"} 1`,
		`qmp_block_quorum_bad_reports_total{device="quorum0",operation="read",vm="old"} 1`,
		`qmp_event_data_errors_total{vm="old"} 0`,
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("missing %s in\n%s", want, b.String())
		}
	}
}
