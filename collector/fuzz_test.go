package collector

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
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
	// Seeds: every example event of the fold tests, as QEMU shapes it.
	files, err := filepath.Glob("../internal/vmstate/testdata/events/*.jsonl")
	if err != nil || len(files) == 0 {
		f.Fatalf("no event examples to seed from: %v", err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		for line := range bytes.Lines(b) {
			var ev struct {
				Event string          `json:"event"`
				Data  json.RawMessage `json:"data"`
			}
			if json.Unmarshal(line, &ev) == nil && ev.Event != "" {
				f.Add(ev.Event, []byte(ev.Data))
			}
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
		st.MarkUp(time.Now())
		st.Apply(qmp.Event{Name: name, Data: data})
		st.Apply(qmp.Event{Name: name, Data: data})
		v.Unlock()
		checkTextMatchesCollector(t, vms)
	})
}
