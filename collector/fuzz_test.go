package collector

import (
	"encoding/json"
	"testing"

	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// FuzzFold folds arbitrary data under every event name into a state that
// knows some devices, and checks that nothing panics, that the event is
// counted, and that every label value the state would export is valid.
func FuzzFold(f *testing.F) {
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
		s := newVMState()
		s.setBlock(knownDevices)
		s.apply(qmp.Event{Name: name, Data: data})
		s.apply(qmp.Event{Name: name, Data: data})
		if validEventName(name) && (s.events[name] == nil || s.events[name].count != 2) {
			t.Fatalf("%s not counted twice", name)
		}
		c := NewCollector(NewManager(Options{}))
		e := emitter{vm: "vm", c: c}
		e.vmMetrics(&s) // MustNewConstMetric panics on an invalid label value

		// The text the scrape handler writes holds the same series.
		m := NewManager(Options{})
		m.Sync([]Target{{Network: "unix", Address: "/run/qemu/fuzz.qmp", Labels: map[string]string{"device": "d", "site": "s"}}})
		w := m.sortedWatchers()[0]
		s.up = true
		w.st = s
		checkTextMatchesCollector(t, m)
	})
}
