package vmstate

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// loadEvents reads one JSON event per line, as QEMU sends them.
func loadEvents(t *testing.T, path string) []qmp.Event {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []qmp.Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, eventFromLine(t, sc.Bytes()))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func eventFromLine(t *testing.T, line []byte) qmp.Event {
	t.Helper()
	var raw struct {
		Event     string          `json:"event"`
		Data      json.RawMessage `json:"data"`
		Timestamp struct {
			Seconds, Microseconds int64
		} `json:"timestamp"`
	}
	if err := json.Unmarshal(line, &raw); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	ev := qmp.Event{Name: raw.Event, Data: raw.Data}
	if raw.Timestamp.Seconds > 0 {
		ev.Time = time.Unix(raw.Timestamp.Seconds, raw.Timestamp.Microseconds*1000)
	}
	return ev
}

// foldChecks says, for every event name, what its dedicated metric must
// show after folding the example into a fresh state (with one block device
// known to query-block: BlockBackend ide0-hd1 on qdev disk1, node node0 on
// qdev disk0). nil means the event only feeds qmp_events_total. Every
// event of the examples must have an entry, so none is forgotten.
var foldChecks = map[string]func(t *testing.T, s *State, n Need){
	"ACPI_DEVICE_OST": nil,
	"BALLOON_CHANGE": func(t *testing.T, s *State, _ Need) {
		want(t, "balloon", uint64(944766976), s.Balloon)
		want(t, "balloon known", true, s.BalloonOK)
	},
	"BLOCK_IMAGE_CORRUPTED": func(t *testing.T, s *State, n Need) {
		// device ide0-hd0 is not in the maps: counted under its
		// BlockBackend name, and query-block is asked to map it.
		want(t, "corruptions", uint64(1), s.Devices["ide0-hd0"].Corruptions)
		want(t, "Need block", NeedBlock, n&NeedBlock)
	},
	"BLOCK_IO_ERROR": func(t *testing.T, s *State, _ Need) {
		want(t, "write/stop on disk1", uint64(1), s.Devices["disk1"].IOErrors[1][2])
		want(t, "status", "io-error", s.Status)
	},
	"BLOCK_JOB_CANCELLED": func(t *testing.T, s *State, _ Need) {
		want(t, "stream cancelled", uint64(1), s.JobsDone[[2]string{"stream", "cancelled"}])
	},
	"BLOCK_JOB_COMPLETED": func(t *testing.T, s *State, _ Need) {
		want(t, "stream completed", uint64(1), s.JobsDone[[2]string{"stream", "completed"}])
	},
	"BLOCK_JOB_ERROR": func(t *testing.T, s *State, _ Need) {
		want(t, "job write/stop", uint64(1), s.JobErrors[1][2])
	},
	"BLOCK_JOB_READY": func(t *testing.T, s *State, _ Need) {
		j := s.Jobs["drive0"]
		if j == nil {
			t.Fatal("job drive0 not tracked")
		}
		want(t, "job", Job{Type: "mirror", Status: "ready", Progress: 2097152, Length: 2097152}, *j)
	},
	"DEVICE_DELETED": func(t *testing.T, s *State, _ Need) {
		want(t, "deletions", uint64(1), s.DeviceDeletions)
	},
	"DEVICE_TRAY_MOVED": func(t *testing.T, s *State, _ Need) {
		// The QOM path of a device without an id is its label.
		want(t, "tray", int8(1), s.Devices["/machine/unattached/device[22]"].Tray)
	},
	"DUMP_COMPLETED": func(t *testing.T, s *State, _ Need) {
		want(t, "dumps", [2]uint64{1, 0}, s.Dumps)
	},
	"GUEST_PANICKED": func(t *testing.T, s *State, _ Need) {
		want(t, "panics pause/none", uint64(1), s.Panics[[2]string{"pause", "none"}])
		want(t, "status", "guest-panicked", s.Status)
	},
	"MEM_UNPLUG_ERROR":      nil,
	"NIC_RX_FILTER_CHANGED": nil,
	"POWERDOWN":             nil,
	"QUORUM_FAILURE": func(t *testing.T, s *State, _ Need) {
		want(t, "quorum failures", uint64(1), s.Devices["usr1"].QuorumFailures)
	},
	"QUORUM_REPORT_BAD": func(t *testing.T, s *State, _ Need) {
		d := s.Devices["disk0"] // node0 maps to disk0
		if d == nil {
			t.Fatal("node0 not mapped to disk0")
		}
		want(t, "bad reports", uint64(1), d.QuorumBad[0]+d.QuorumBad[2])
	},
	"RESET": func(t *testing.T, s *State, _ Need) {
		want(t, "resets", map[GuestReason]uint64{{Reason: "unknown"}: 1}, s.Resets)
	},
	"RESUME": func(t *testing.T, s *State, n Need) {
		// RESUME always means running: no query-status needed.
		want(t, "status", "running", s.Status)
		want(t, "Need status", Need(0), n&NeedStatus)
	},
	"RTC_CHANGE": func(t *testing.T, s *State, _ Need) {
		want(t, "rtc", int64(78), s.RTCOffset)
	},
	"SHUTDOWN": func(t *testing.T, s *State, _ Need) {
		want(t, "shutdowns", map[GuestReason]uint64{{Reason: "unknown"}: 1}, s.Shutdowns)
	},
	"SPICE_CONNECTED": func(t *testing.T, s *State, _ Need) {
		want(t, "spice", [3]uint64{1, 0, 0}, [3]uint64{s.Spice.Connections, s.Spice.Sessions, s.Spice.Failed})
	},
	"SPICE_DISCONNECTED": func(t *testing.T, s *State, _ Need) {
		want(t, "spice clients", 0, s.Spice.Clients)
	},
	"SPICE_INITIALIZED": func(t *testing.T, s *State, _ Need) {
		// channel-type 3 (display) is not a session's main channel.
		want(t, "spice sessions", uint64(0), s.Spice.Sessions)
	},
	"SPICE_MIGRATE_COMPLETED": nil,
	"MIGRATION": func(t *testing.T, s *State, _ Need) {
		want(t, "migration status", "completed", s.Migration.Status)
		// Events are live: a migration just ended.
		want(t, "ended", [3]uint64{1, 0, 0}, s.MigrationEnds)
	},
	"MIGRATION_PASS": func(t *testing.T, s *State, _ Need) {
		want(t, "pass", uint64(2), s.Migration.Pass)
	},
	"STOP": func(t *testing.T, s *State, _ Need) {
		want(t, "status", "paused", s.Status)
	},
	"SUSPEND": func(t *testing.T, s *State, _ Need) {
		want(t, "status", "suspended", s.Status)
	},
	"SUSPEND_DISK": nil,
	"VNC_CONNECTED": func(t *testing.T, s *State, _ Need) {
		want(t, "vnc", [3]uint64{1, 0, 0}, [3]uint64{s.VNC.Connections, s.VNC.Sessions, s.VNC.Failed})
		want(t, "vnc clients", 1, s.VNC.Clients)
	},
	"VNC_DISCONNECTED": nil,
	"VNC_INITIALIZED": func(t *testing.T, s *State, _ Need) {
		want(t, "vnc sessions", uint64(1), s.VNC.Sessions)
	},
	"VSERPORT_CHANGE": func(t *testing.T, s *State, _ Need) {
		want(t, "vserports", map[string]bool{"channel0": true}, s.Vserports)
	},
	"WAKEUP": func(t *testing.T, s *State, _ Need) {
		want(t, "status", "running", s.Status)
	},
	"WATCHDOG": func(t *testing.T, s *State, _ Need) {
		want(t, "watchdog reset", uint64(1), s.Watchdog["reset"])
	},
}

func want[T any](t *testing.T, what string, want, got T) {
	t.Helper()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", what, diff)
	}
}

// knownDevices is the query-block the fold tests start from.
var knownDevices = []BlockEntry{
	{Device: "ide0-hd1", Qdev: "disk1", Inserted: &struct {
		NodeName string `json:"node-name"`
	}{"#block212"}},
	{Device: "", Qdev: "/machine/peripheral/disk0", Inserted: &struct {
		NodeName string `json:"node-name"`
	}{"node0"}},
}

// TestFoldDocumentedExamples folds every example of QEMU's event
// documentation (testdata/events, with two missing commas of
// the document fixed) into a fresh state.
func TestFoldDocumentedExamples(t *testing.T) {
	for _, ev := range loadEvents(t, "testdata/events/qmp-events-examples.jsonl") {
		t.Run(ev.Name, func(t *testing.T) {
			check, ok := foldChecks[ev.Name]
			if !ok {
				t.Fatalf("no entry in foldChecks for %s", ev.Name)
			}
			s := New()
			s.SetBlock(knownDevices)
			n := s.Apply(ev)
			if s.Events[ev.Name] == nil || s.Events[ev.Name].Count != 1 {
				t.Errorf("%s not counted", ev.Name)
			}
			if s.DataErrors != 0 {
				t.Errorf("data of the documented example reported as malformed")
			}
			if check != nil {
				check(t, &s, n)
			}
		})
	}
}

// TestEventCoverage checks that every event name qmp knows has an example
// the fold tests read: the documented ones and the newer ones from the
// QAPI schema.
func TestEventCoverage(t *testing.T) {
	seen := map[string]bool{}
	files, _ := filepath.Glob("testdata/events/*.jsonl")
	for _, f := range files {
		for _, ev := range loadEvents(t, f) {
			seen[ev.Name] = true
		}
	}
	var missing []string
	for _, n := range qmp.KnownEvents() {
		if !seen[n] {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("events without an example in testdata/events: %v", missing)
	}
}

func TestTrayShapes(t *testing.T) {
	// The three shapes QEMU 7.2 sends (recorded in the transcript):
	// named drive, anonymous BlockBackend, device without an id.
	s := New()
	s.SetBlock([]BlockEntry{
		{Device: "cd0", Qdev: "cdrom0"},
		{Device: "cd2", Qdev: "/machine/peripheral-anon/device[2]"},
		{Device: "", Qdev: "mycd"},
	})
	for _, line := range []string{
		`{"event": "DEVICE_TRAY_MOVED", "data": {"device": "cd0", "tray-open": true, "id": "cdrom0"}}`,
		`{"event": "DEVICE_TRAY_MOVED", "data": {"device": "", "tray-open": true, "id": "mycd"}}`,
		`{"event": "DEVICE_TRAY_MOVED", "data": {"device": "cd2", "tray-open": false, "id": "/machine/peripheral-anon/device[2]"}}`,
	} {
		if n := s.Apply(eventFromLine(t, []byte(line))); n&NeedBlock != 0 {
			t.Errorf("%s: known device asked for a query-block refresh", line)
		}
	}
	got := map[string]int8{}
	for k, d := range s.Devices {
		got[k] = d.Tray
	}
	want(t, "trays", map[string]int8{"cdrom0": 1, "mycd": 1, "/machine/peripheral-anon/device[2]": 0}, got)
}

func TestBlockDeviceIdentity(t *testing.T) {
	s := New()
	// An event before query-block knew the device: counted under the
	// BlockBackend name...
	n := s.Apply(eventFromLine(t, []byte(`{"event": "BLOCK_IO_ERROR", "data": {"device": "drive-virtio-disk0", "node-name": "#block123", "operation": "read", "action": "report"}}`)))
	if n&NeedBlock == 0 {
		t.Error("unknown BlockBackend name did not ask for query-block")
	}
	// ...and moved, counts included, to the qdev id once query-block maps it.
	s.SetBlock([]BlockEntry{{Device: "drive-virtio-disk0", Qdev: "virtio-disk0", Inserted: &struct {
		NodeName string `json:"node-name"`
	}{"#block123"}}})
	d := s.Devices["virtio-disk0"]
	if d == nil || d.IOErrors[0][1] != 1 {
		t.Fatalf("count not carried to the qdev label: %v", s.Devices)
	}
	if _, ok := s.Devices["drive-virtio-disk0"]; ok {
		t.Error("provisional BlockBackend label kept")
	}
	// Newer QEMU names the device by QOM path; an anonymous backend has
	// device "". The auto-generated node name is never a label.
	s.Apply(eventFromLine(t, []byte(`{"event": "BLOCK_IO_ERROR", "data": {"device": "", "node-name": "#block123", "qom-path": "/machine/peripheral/virtio-disk0", "operation": "write", "action": "stop", "nospace": true, "reason": "No space left on device"}}`)))
	want(t, "write/stop", uint64(1), d.IOErrors[1][2])
	want(t, "nospace", uint64(1), d.Nospace)
	s.Apply(eventFromLine(t, []byte(`{"event": "BLOCK_IO_ERROR", "data": {"device": "", "node-name": "#block999", "operation": "write", "action": "ignore"}}`)))
	for k := range s.Devices {
		if k[0] == '#' {
			t.Errorf("auto node name %q became a label", k)
		}
	}
	want(t, "unknown device", uint64(1), s.Devices["unknown"].IOErrors[1][0])
}

func ms(v float64) *float64 { return &v }

func TestMigrationEndsCountedOnce(t *testing.T) {
	completed := func(total float64) MigrateInfo {
		return MigrateInfo{Status: "completed", TotalTime: ms(total), Downtime: ms(12)}
	}
	tests := []struct {
		name  string
		steps []func(s *State)
		want  [3]uint64 // completed, failed, cancelled
	}{
		{
			name: "an end that happened before the exporter looked is history",
			steps: []func(*State){
				func(s *State) { s.SetMigrate(completed(900)) },
				func(s *State) { s.SetMigrate(completed(900)) },
			},
		},
		{
			name: "events, then the polls that follow report the same end",
			steps: []func(*State){
				func(s *State) { s.SetMigrate(MigrateInfo{}) },
				func(s *State) { s.migrationEvent("setup") },
				func(s *State) { s.migrationEvent("active") },
				func(s *State) { s.migrationEvent("completed") },
				func(s *State) { s.SetMigrate(completed(1500)) },
				func(s *State) { s.SetMigrate(completed(1500)) },
			},
			want: [3]uint64{1, 0, 0},
		},
		{
			name: "events off: polling sees it in progress, then ended",
			steps: []func(*State){
				func(s *State) { s.SetMigrate(MigrateInfo{}) },
				func(s *State) { s.SetMigrate(MigrateInfo{Status: "active"}) },
				func(s *State) {
					s.SetMigrate(MigrateInfo{Status: "failed", ErrorDesc: "Unable to write to command: Broken pipe"})
				},
				func(s *State) {
					s.SetMigrate(MigrateInfo{Status: "failed", ErrorDesc: "Unable to write to command: Broken pipe"})
				},
			},
			want: [3]uint64{0, 1, 0},
		},
		{
			name: "events off: migrations never seen in progress, told apart by their figures",
			steps: []func(*State){
				func(s *State) { s.SetMigrate(completed(900)) }, // history
				func(s *State) { s.SetMigrate(completed(1500)) },
				func(s *State) { s.SetMigrate(completed(1500)) },
				func(s *State) { s.SetMigrate(completed(700)) },
			},
			want: [3]uint64{2, 0, 0},
		},
		{
			name: "a reply written before the ending event but applied after it is stale",
			steps: []func(*State){
				func(s *State) { s.SetMigrate(MigrateInfo{}) },
				func(s *State) { s.migrationEvent("setup") },
				func(s *State) { s.migrationEvent("active") },
				func(s *State) { s.migrationEvent("failed") },
				func(s *State) { s.SetMigrate(MigrateInfo{Status: "active"}) }, // stale
				func(s *State) {
					s.SetMigrate(MigrateInfo{Status: "failed", ErrorDesc: "Unable to write to command: Broken pipe"})
				},
			},
			want: [3]uint64{0, 1, 0},
		},
		{
			// QEMU 7.2 says completed before it has measured the times:
			// the reply that follows, with the final figures, is the
			// same end. Events off, and on.
			name: "events off: completed with total-time 0, then the final figures",
			steps: []func(*State){
				func(s *State) { s.SetMigrate(MigrateInfo{}) },
				func(s *State) { s.SetMigrate(MigrateInfo{Status: "active"}) },
				func(s *State) { s.SetMigrate(MigrateInfo{Status: "completed", TotalTime: ms(0), Downtime: ms(0)}) },
				func(s *State) { s.SetMigrate(completed(1500)) },
				func(s *State) { s.SetMigrate(completed(1500)) },
			},
			want: [3]uint64{1, 0, 0},
		},
		{
			name: "events on: completed with total-time 0, then the final figures",
			steps: []func(*State){
				func(s *State) { s.SetMigrate(MigrateInfo{}) },
				func(s *State) { s.migrationEvent("setup") },
				func(s *State) { s.migrationEvent("active") },
				func(s *State) { s.migrationEvent("completed") },
				func(s *State) { s.SetMigrate(MigrateInfo{Status: "completed", TotalTime: ms(0), Downtime: ms(0)}) },
				func(s *State) { s.SetMigrate(completed(1500)) },
			},
			want: [3]uint64{1, 0, 0},
		},
		{
			name: "events off: a second migration after an unfinal reply still counts",
			steps: []func(*State){
				func(s *State) { s.SetMigrate(MigrateInfo{}) },
				func(s *State) { s.SetMigrate(MigrateInfo{Status: "active"}) },
				func(s *State) { s.SetMigrate(MigrateInfo{Status: "completed", TotalTime: ms(0), Downtime: ms(0)}) },
				func(s *State) { s.SetMigrate(completed(1500)) },
				func(s *State) { s.SetMigrate(completed(1800)) },
			},
			want: [3]uint64{2, 0, 0},
		},
		{
			name: "an end while the session was down is counted at the reconnect",
			steps: []func(*State){
				func(s *State) { s.SetMigrate(MigrateInfo{Status: "active"}) },
				func(s *State) { s.MarkDown(time.Time{}) },
				func(s *State) { s.SetMigrate(MigrateInfo{Status: "cancelled"}) },
			},
			want: [3]uint64{0, 0, 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New()
			for _, step := range tc.steps {
				step(&s)
			}
			want(t, "ended", tc.want, s.MigrationEnds)
		})
	}
}

// TestMigrationFinalFiguresAwaited: only a completed reply with
// total-time 0 (QEMU had not measured it yet) is polled again; one with no
// figures at all has none to wait for.
func TestMigrationFinalFiguresAwaited(t *testing.T) {
	s := New()
	s.SetMigrate(MigrateInfo{Status: "active"})
	s.SetMigrate(MigrateInfo{Status: "completed"})
	want(t, "polled after a completed reply without figures", false, s.Migration.Polled())
	s.SetMigrate(MigrateInfo{Status: "active"})
	s.SetMigrate(MigrateInfo{Status: "completed", TotalTime: ms(0), Downtime: ms(0)})
	want(t, "polled after a completed reply with total-time 0", true, s.Migration.Polled())
	want(t, "total time unknown", -1.0, s.Migration.TotalTime)
	s.SetMigrate(MigrateInfo{Status: "completed", TotalTime: ms(900), Downtime: ms(9)})
	want(t, "polled after the final figures", false, s.Migration.Polled())
	want(t, "total time", 0.9, s.Migration.TotalTime)
}

func TestConsoleHandshakeFailure(t *testing.T) {
	s := New()
	c := `"client": {"family": "ipv4", "service": "1", "host": "10.0.0.9"}`
	for _, e := range []string{"VNC_CONNECTED", "VNC_DISCONNECTED"} {
		s.Apply(eventFromLine(t, []byte(`{"event": "`+e+`", "data": {"server": {}, `+c+`}}`)))
	}
	want(t, "vnc", [3]uint64{1, 0, 1}, [3]uint64{s.VNC.Connections, s.VNC.Sessions, s.VNC.Failed})
	want(t, "clients", 0, s.VNC.Clients)
}

func TestMalformedDataCountedNotFatal(t *testing.T) {
	s := New()
	for _, line := range []string{
		`{"event": "WATCHDOG", "data": {"action": 5}}`,
		`{"event": "WATCHDOG", "data": "not an object"}`,
		`{"event": "BLOCK_IO_ERROR", "data": {"device": "x"}}`,
		`{"event": "SHUTDOWN", "data": {"guest": "yes", "reason": "A reason in prose!"}}`,
		`{"event": "GUEST_PANICKED", "data": {"action": "pause", "info": [1]}}`,
	} {
		s.Apply(eventFromLine(t, []byte(line)))
	}
	want(t, "data errors", uint64(5), s.DataErrors)
	want(t, "counted", uint64(2), s.Events["WATCHDOG"].Count)
	for k := range s.Shutdowns {
		if k.Reason != "unknown" {
			t.Errorf("prose became a reason label: %q", k.Reason)
		}
	}
}

func BenchmarkFold(b *testing.B) {
	lines := map[string]string{
		"RTC_CHANGE":        `{"offset": 3600, "qom-path": "/machine/unattached/device[4]"}`,
		"BLOCK_IO_ERROR":    `{"device": "", "node-name": "disk0-format", "operation": "write", "action": "report", "nospace": false, "reason": "Input/output error", "qom-path": "/machine/peripheral/disk0"}`,
		"VNC_CONNECTED":     `{"server": {"auth": "none", "family": "ipv4", "service": "5900", "host": "0.0.0.0", "websocket": false}, "client": {"family": "ipv4", "service": "58425", "host": "127.0.0.1", "websocket": false}}`,
		"DEVICE_TRAY_MOVED": `{"device": "", "tray-open": true, "id": "disk0"}`,
		"WATCHDOG":          `{"action": "reset"}`,
		"STOP":              ``,
	}
	for name, data := range lines {
		b.Run(name, func(b *testing.B) {
			s := New()
			s.SetBlock([]BlockEntry{{Qdev: "disk0"}})
			ev := qmp.Event{Name: name, Time: time.Unix(1700000000, 0)}
			if data != "" {
				ev.Data = json.RawMessage(data)
			}
			b.ReportAllocs()
			for b.Loop() {
				s.Apply(ev)
			}
		})
	}
}

// TestIOErrorOfUnknownOperation: a BLOCK_IO_ERROR whose source cannot
// say read or write (libvirt's) counts under the unknown operation; any
// other operation that is not QEMU's is still malformed.
func TestIOErrorOfUnknownOperation(t *testing.T) {
	s := New()
	s.Apply(qmp.Event{Name: "BLOCK_IO_ERROR", Data: []byte(`{"device": "", "qom-path": "/machine/peripheral/virtio-disk0", "operation": "unknown", "action": "report", "nospace": true}`)})
	s.Apply(qmp.Event{Name: "BLOCK_IO_ERROR", Data: []byte(`{"device": "", "qom-path": "/machine/peripheral/virtio-disk0", "operation": "erase", "action": "report"}`)})
	d := s.Devices["virtio-disk0"]
	if d == nil || d.IOErrors[len(IOOperations)] != [3]uint64{0, 1, 0} || d.Nospace != 1 || s.DataErrors != 1 {
		t.Fatalf("device %+v, data errors %d; want one unknown-operation report, one nospace, one data error", d, s.DataErrors)
	}
}

// TestIOStatusFollowsStoppingErrors: a device's io-status follows QEMU's
// rules between two query-block replies. An error that stops the VM sets
// it when it was ok (nospace for ENOSPC, failed otherwise), the first
// error wins until a RESUME (QEMU's cont) sets every device back to ok,
// and an error that does not stop leaves it. A status not known stays
// unknown. Each change asks for query-block, which says for sure.
func TestIOStatusFollowsStoppingErrors(t *testing.T) {
	s := New()
	s.SetBlock([]BlockEntry{{Qdev: "disk0", IOStatus: "ok"}, {Qdev: "disk1", IOStatus: "ok"}, {Qdev: "cd0"}})
	ioError := func(dev, action string, nospace bool) Need {
		return s.Apply(qmp.Event{Name: "BLOCK_IO_ERROR", Data: fmt.Appendf(nil,
			`{"device": "", "qom-path": "/machine/peripheral/%s", "operation": "write", "action": %q, "nospace": %t}`, dev, action, nospace)})
	}
	status := func() string {
		return s.Devices["disk0"].IOStatus + "," + s.Devices["disk1"].IOStatus + "," + s.Devices["cd0"].IOStatus
	}
	ioError("disk0", "report", true)
	want(t, "after an error that does not stop", "ok,ok,", status())
	if n := ioError("disk0", "stop", true); n&NeedBlock == 0 {
		t.Error("a stopping error did not ask for query-block")
	}
	want(t, "after ENOSPC that stops", "nospace,ok,", status())
	ioError("disk0", "stop", false)
	ioError("disk1", "stop", false)
	want(t, "after more stopping errors", "nospace,failed,", status())
	ioError("cd0", "stop", false)
	want(t, "a status QEMU does not report", "nospace,failed,", status())
	if n := s.Apply(qmp.Event{Name: "RESUME"}); n&NeedBlock == 0 {
		t.Error("a RESUME that reset statuses did not ask for query-block")
	}
	want(t, "after RESUME", "ok,ok,", status())
	if n := s.Apply(qmp.Event{Name: "RESUME"}); n&NeedBlock != 0 {
		t.Error("a RESUME with every status ok asked for query-block")
	}
}

// TestAlikeEndsSeenRunningCountTwice: two failed migrations report the
// same end (QEMU gives a failed one no figures); each counts when a poll
// saw it in progress, and a repeated reply of the same end does not.
func TestAlikeEndsSeenRunningCountTwice(t *testing.T) {
	s := New()
	for i := range 2 {
		s.SetMigrate(MigrateInfo{Status: "active"})
		s.SetMigrate(MigrateInfo{Status: "failed"})
		s.SetMigrate(MigrateInfo{Status: "failed"})
		want(t, fmt.Sprintf("failed after migration %d", i+1), uint64(i+1), s.MigrationEnds[1])
	}
}
