package vmstate

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// fuzzSeeds are event data shapes worth mutating; every one is tried
// under every known event name. The collector's FuzzExposition uses the
// same seeds.
var fuzzSeeds = []string{
	`{"device": "ide0-hd1", "node-name": "#block212", "operation": "write", "action": "stop", "nospace": true}`,
	`{"action": "pause", "info": {"type": "hyper-v", "arg1": 1}}`,
	`{"guest": true, "reason": "guest-reset"}`,
	`{"client": {"host": "127.0.0.1", "service": "5901"}, "server": {}}`,
	`{"id": "job0", "status": "null"}`,
	`{"status": "completed"}`,
	`{"result": {"status": "failed"}, "error": "x"}`,
	`{}`, `[]`, `"x"`, `{"device": "\u0000\xff"}`,
}

// FuzzFold folds arbitrary data under every event name into a state that
// knows some devices (its corpus in testdata/fuzz/FuzzFold also holds
// every historical shape of the events folded, see shapes_test.go), and checks that nothing panics, that the event is
// counted, and that every label value the state holds is one a metric
// may carry.
func FuzzFold(f *testing.F) {
	for _, line := range fuzzSeeds {
		for _, name := range qmp.KnownEvents() {
			f.Add(name, []byte(line))
		}
	}
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		if len(data) == 0 {
			data = nil // an event without data, as the qmp reader delivers it
		} else if !json.Valid(data) {
			return // the qmp reader only delivers valid JSON
		}
		s := New()
		s.SetBlock(knownDevices)
		s.Apply(qmp.Event{Name: name, Data: data})
		s.Apply(qmp.Event{Name: name, Data: data})
		if validEventName(name) && (s.Events[name] == nil || s.Events[name].Count != 2) {
			t.Fatalf("%s not counted twice", name)
		}
		for _, v := range labelValues(&s) {
			if !utf8.ValidString(v) || len(v) > maxLabelBytes {
				t.Fatalf("label value %q is not valid UTF-8 of at most %d bytes", v, maxLabelBytes)
			}
		}
	})
}

// labelValues lists every string of s that the exposition turns into a
// label value.
func labelValues(s *State) []string {
	out := []string{s.Status, s.Info.Name, s.Info.UUID, s.Info.Version, s.Info.Package, s.Migration.Status}
	for k := range s.Events {
		out = append(out, k)
	}
	for k := range s.Dropped {
		out = append(out, k)
	}
	for _, m := range []map[GuestReason]uint64{s.Shutdowns, s.Resets} {
		for k := range m {
			out = append(out, k.Reason)
		}
	}
	for _, m := range []map[[2]string]uint64{s.Panics, s.MemoryFailures, s.JobsDone} {
		for k := range m {
			out = append(out, k[0], k[1])
		}
	}
	for _, m := range []map[string]uint64{s.Crashloads, s.Watchdog} {
		for k := range m {
			out = append(out, k)
		}
	}
	for k := range s.Vserports {
		out = append(out, k)
	}
	for k, d := range s.Devices {
		out = append(out, k, d.IOStatus)
	}
	for k, j := range s.Jobs {
		out = append(out, k, j.Type, j.Status)
	}
	return out
}
