package collector

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// FuzzExposition folds arbitrary data under every event name into the
// state of a VM with configured labels, and checks that Collector can
// export every series (MustNewConstMetric panics on an invalid label
// value) and that the text the scrape handler writes holds the same
// series. The fold itself is fuzzed by vmstate's FuzzFold.
func FuzzExposition(f *testing.F) {
	for _, line := range []string{
		`{"device": "ide0-hd1", "node-name": "#block212", "operation": "write", "action": "stop", "nospace": true}`,
		`{"action": "pause", "info": {"type": "hyper-v", "arg1": 1}}`,
		`{"guest": true, "reason": "guest-reset"}`,
		`{"client": {"host": "127.0.0.1", "service": "5901"}, "server": {}}`,
		`{"id": "job0", "status": "null"}`,
		`{"status": "completed"}`,
		`{"result": {"status": "failed"}, "error": "x"}`,
		`{}`, `[]`, `"x"`, `{"device": "\u0000\xff"}`,
	} {
		for _, name := range qmp.KnownEvents() {
			f.Add(name, []byte(line))
		}
	}
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		if !json.Valid(data) {
			return // the qmp reader only delivers valid JSON
		}
		vms := fleet.New(fleet.Options{})
		v, err := vms.Add("fuzz", fleet.Meta{DefaultName: "fuzz", Labels: map[string]string{"device": "d", "site": "s"}}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		st := v.Lock()
		st.SetBlock([]vmstate.BlockEntry{{Device: "ide0-hd1", Qdev: "disk1"}, {Qdev: "/machine/peripheral/disk0"}})
		st.MarkUp()
		st.Apply(qmp.Event{Name: name, Data: data})
		st.Apply(qmp.Event{Name: name, Data: data})
		v.Unlock()
		checkTextMatchesCollector(t, vms)
	})
}
