package qemulab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRecordTranscripts records what a real QEMU says on the exporter's QMP
// socket while the lab drives events, as fixtures for other packages'
// tests. It runs only when QEMULAB_RECORD names the output directory:
//
//	QEMULAB_RECORD=$PWD/collector/testdata/transcripts go test -run TestRecordTranscripts ./internal/qemulab/
//
// Each file is JSON Lines: {"dir":"send"|"recv","line":<object>}, where line
// holds the JSON object byte for byte as it went over the wire (without the
// line ending), in wire order. Commands are sent by a Monitor, as the
// exporter would send them (numeric ids); events are driven on the separate
// control monitor and qtest, which the transcript doesn't show.
func TestRecordTranscripts(t *testing.T) {
	out := os.Getenv("QEMULAB_RECORD")
	if out == "" {
		t.Skip("set QEMULAB_RECORD=<dir> to record transcripts")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Run("basic", func(t *testing.T) { recordBasic(t, out) })
	t.Run("events", func(t *testing.T) { recordEvents(t, out) })
	t.Run("jobs", func(t *testing.T) { recordJobs(t, out) })
}

// transcript collects a conversation as JSON Lines; its trace method is a
// MonitorOptions.Trace.
type transcript struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	errs []error
}

func (tr *transcript) trace(sent bool, line []byte) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	dir := "recv"
	if sent {
		dir = "send"
	}
	if !json.Valid(line) || bytes.ContainsAny(line, "\r\n") {
		tr.errs = append(tr.errs, fmt.Errorf("%s line is not one JSON value on one line: %q", dir, line))
		return
	}
	fmt.Fprintf(&tr.buf, `{"dir":%q,"line":%s}`+"\n", dir, line)
}

func (tr *transcript) write(t *testing.T, path string) {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if err := errors.Join(tr.errs...); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, tr.buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d lines)", path, bytes.Count(tr.buf.Bytes(), []byte("\n")))
}

// recording is a lab VM plus a recorded Monitor on its exporter socket.
type recording struct {
	t   *testing.T
	ctx context.Context
	vm  *VM
	exp *Monitor // on the exporter socket, recorded
	tr  *transcript
}

// startRecording starts a VM in a fixed directory named after kind, so the
// paths QEMU reports (images, VNC socket) are the same in every recording.
func startRecording(t *testing.T, kind string, opts Options) *recording {
	t.Helper()
	opts.Dir = filepath.Join(os.TempDir(), "qemulab-record-"+kind)
	if err := os.RemoveAll(opts.Dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(opts.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(opts.Dir) }) // runs after the VM's Close
	ctx, cancel := context.WithTimeout(t.Context(), recordTimeout)
	t.Cleanup(cancel)
	r := &recording{t: t, ctx: ctx, vm: startVM(t, opts), tr: &transcript{}}
	var err error
	r.exp, err = DialMonitor(r.ctx, r.vm.ExporterSocket, MonitorOptions{Trace: r.tr.trace})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.exp.Close() })
	return r
}

// recordTimeout bounds a whole recording; the jobs recording waits on
// throttled jobs and migrations for a few seconds.
const recordTimeout = 60 * time.Second

// fileName is e.g. qemu72-basic.jsonl, from the QEMU version in the greeting.
func (r *recording) fileName(dir, kind string) string {
	var g struct {
		QMP struct {
			Version struct {
				QEMU struct{ Major, Minor int } `json:"qemu"`
			} `json:"version"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(r.exp.Greeting(), &g); err != nil {
		r.t.Fatal(err)
	}
	v := g.QMP.Version.QEMU
	return filepath.Join(dir, fmt.Sprintf("qemu%d%d-%s.jsonl", v.Major, v.Minor, kind))
}

// query sends read-only queries on the recorded exporter connection. Error
// replies (e.g. query-balloon without a balloon) are part of the fixture.
func (r *recording) query(cmds ...string) {
	r.t.Helper()
	for _, c := range cmds {
		if _, err := r.exp.Execute(r.ctx, c, nil); err != nil {
			var ce *CommandError
			if !errors.As(err, &ce) {
				r.t.Fatal(err)
			}
			r.t.Logf("%s: %v (recorded)", c, err)
		}
	}
}

// drive runs trigger and waits until the recorded connection has received
// every named event, in order.
func (r *recording) drive(trigger func() error, events ...string) {
	r.t.Helper()
	mark := r.exp.Mark()
	if err := trigger(); err != nil {
		r.t.Fatal(err)
	}
	for _, name := range events {
		ev, err := r.exp.WaitEvent(r.ctx, name, mark)
		if err != nil {
			r.t.Fatal(err)
		}
		mark = ev.Index + 1
	}
}

func (r *recording) ctl(cmd string, args any) func() error {
	return func() error {
		_, err := r.vm.Ctl.Execute(r.ctx, cmd, args)
		return err
	}
}

// quit ends the recording the way a VM ends: quit on the control monitor,
// SHUTDOWN on the exporter's connection, then EOF.
func (r *recording) quit() {
	r.t.Helper()
	r.drive(func() error { return r.vm.Quit(r.ctx) }, "SHUTDOWN")
	select {
	case <-r.exp.Done():
	case <-r.ctx.Done():
		r.t.Fatal("exporter connection still open after quit")
	}
}

var allQueries = []string{
	"query-status", "query-name", "query-uuid", "query-version", "query-balloon",
	"query-block", "query-migrate", "query-vnc", "query-spice", "query-jobs", "query-commands",
}

func recordBasic(t *testing.T, out string) {
	r := startRecording(t, "basic", Options{})
	r.query(allQueries...)
	r.drive(r.ctl("stop", nil), "STOP")
	r.query("query-status")
	r.drive(r.ctl("cont", nil), "RESUME")
	r.drive(r.ctl("system_reset", nil), "RESET")
	r.drive(func() error { return r.vm.GuestReset(r.ctx) }, "RESET")
	r.query("query-status")
	r.quit()
	r.tr.write(t, r.fileName(out, "basic"))
}

// recordUUID is the fixed -uuid of the events transcript.
const recordUUID = "5c0ffee0-0d15-4a7b-9e3c-000000000001"

func recordEvents(t *testing.T, out string) {
	r := startRecording(t, "events", Options{Name: "demo", UUID: recordUUID, Devices: true, VNC: true})
	ctx, vm := r.ctx, r.vm
	r.query(allQueries...)

	r.drive(func() error { return vm.CrashLoaded(ctx) }, "GUEST_CRASHLOADED")
	r.drive(func() error { return vm.FireWatchdog(ctx) }, "WATCHDOG", "RESET")

	// Trays: every shape open, query-block showing them open, then closed.
	noID, err := vm.QdevOfDrive(ctx, CDROMNoIDDrive)
	if err != nil {
		t.Fatal(err)
	}
	trays := []string{CDROMNamedID, CDROMAnonID, noID}
	for _, id := range trays {
		r.drive(r.ctl("blockdev-open-tray", map[string]any{"id": id}), "DEVICE_TRAY_MOVED")
	}
	r.query("query-block")
	for _, id := range trays {
		r.drive(r.ctl("blockdev-close-tray", map[string]any{"id": id}), "DEVICE_TRAY_MOVED")
	}

	r.drive(func() error {
		c, err := VNCHandshake(ctx, vm.VNCSocket)
		if err != nil {
			return err
		}
		return c.Close()
	}, "VNC_CONNECTED", "VNC_INITIALIZED", "VNC_DISCONNECTED")

	// A USB keyboard with an id, then one without: DEVICE_DELETED carries
	// "device" only for the first.
	if _, err := vm.Ctl.Execute(ctx, "device_add", map[string]any{"driver": "usb-kbd", "id": "kbd0", "bus": XHCIBus}); err != nil {
		t.Fatal(err)
	}
	r.drive(r.ctl("device_del", map[string]any{"id": "kbd0"}), "DEVICE_DELETED")
	before := anonChildren(t, ctx, vm)
	if _, err := vm.Ctl.Execute(ctx, "device_add", map[string]any{"driver": "usb-kbd", "bus": XHCIBus}); err != nil {
		t.Fatal(err)
	}
	var path string
	for c := range anonChildren(t, ctx, vm) {
		if !before[c] {
			path = "/machine/peripheral-anon/" + c
		}
	}
	if path == "" {
		t.Fatal("anonymous usb-kbd not found in /machine/peripheral-anon")
	}
	r.drive(r.ctl("device_del", map[string]any{"id": path}), "DEVICE_DELETED")

	r.drive(func() error { return vm.Panic(ctx) }, "GUEST_PANICKED", "STOP")
	r.query("query-status")
	if vm.Version().AtLeast(9, 1) {
		// The VM is already stopped: no STOP follows.
		r.drive(func() error { return vm.PVShutdown(ctx) }, "GUEST_PVSHUTDOWN", "SHUTDOWN")
		r.query("query-status")
	}
	r.quit()
	r.tr.write(t, r.fileName(out, "events"))
}

// anonChildren lists the usb-kbd children of /machine/peripheral-anon.
func anonChildren(t *testing.T, ctx context.Context, vm *VM) map[string]bool {
	t.Helper()
	raw, err := vm.Ctl.Execute(ctx, "qom-list", map[string]any{"path": "/machine/peripheral-anon"})
	if err != nil {
		t.Fatal(err)
	}
	var props []struct{ Name, Type string }
	if err := json.Unmarshal(raw, &props); err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, p := range props {
		if strings.HasPrefix(p.Type, "child<usb-kbd>") {
			m[p.Name] = true
		}
	}
	return m
}

// recordJobsUUID is the fixed -uuid of the jobs transcript.
const recordJobsUUID = "5c0ffee0-0d15-4a7b-9e3c-000000000002"

// jobsQueries are the queries the jobs transcript starts with.
var jobsQueries = []string{
	"query-status", "query-name", "query-uuid", "query-version", "query-balloon",
	"query-block", "query-migrate", "query-vnc", "query-spice", "query-jobs",
}

// recordJobs records block jobs, a write threshold, migrations (with the
// events capability), dumps, an RTC change, a balloon change, a guest I/O
// error, a power button press and a suspend/wakeup, with query-jobs,
// query-block-jobs, query-block and query-migrate sent while a job or a
// migration is in progress.
func recordJobs(t *testing.T, out string) {
	r := startRecording(t, "jobs", Options{
		Name: "jobs", UUID: recordJobsUUID, Balloon: true, SPICE: true,
		FaultyDisk: &FaultyDisk{}, ExtraArgs: []string{"-device", "qemu-xhci,id=xhci"},
	})
	ctx, vm := r.ctx, r.vm
	r.query(jobsQueries...)

	const mib = 1 << 20
	for _, img := range []Image{
		{Node: "src", Size: 16 * mib, Data: 16 * mib},
		{Node: "tgt0", Size: 16 * mib},
		{Node: "tgt1", Size: 16 * mib},
		{Node: "tgt4", Size: 16 * mib},
		{Node: "tgt2", Size: 4 * mib},
		{Node: "tgt3", Size: 4 * mib},
		{Node: "bad", Size: 4 * mib, Data: 4 * mib, FailReads: true},
	} {
		if _, err := vm.AddQcow2(ctx, img); err != nil {
			t.Fatal(err)
		}
	}
	if err := vm.AttachUSBStorage(ctx, "src", "usbdisk0"); err != nil {
		t.Fatal(err)
	}
	if err := vm.SetWriteThreshold(ctx, "tgt0", mib); err != nil {
		t.Fatal(err)
	}
	r.query("query-block")

	// A throttled mirror (2 MiB every 0.5 s), queried while it copies, then
	// let go: ready, completed.
	r.drive(func() error {
		return vm.StartMirror(ctx, Mirror{JobID: "mirror0", Source: "src", Target: "tgt0", Speed: 4 * mib, BufSize: mib})
	}, "JOB_STATUS_CHANGE", "JOB_STATUS_CHANGE", "BLOCK_WRITE_THRESHOLD")
	for range 3 {
		sleep(t, ctx, 400*time.Millisecond)
		r.query("query-jobs", "query-block-jobs", "query-block")
	}
	r.drive(r.ctl("block-job-set-speed", map[string]any{"device": "mirror0", "speed": 0}), "JOB_STATUS_CHANGE", "BLOCK_JOB_READY")
	r.query("query-jobs")
	r.drive(r.ctl("block-job-complete", map[string]any{"device": "mirror0"}),
		"JOB_STATUS_CHANGE", "JOB_STATUS_CHANGE", "BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE", "JOB_STATUS_CHANGE")
	r.query("query-jobs", "query-block")

	// A second mirror, cancelled with force once ready.
	r.drive(func() error {
		_, err := vm.MirrorReady(ctx, Mirror{JobID: "mirror1", Source: "src", Target: "tgt1"})
		return err
	}, "BLOCK_JOB_READY")
	r.drive(r.ctl("block-job-cancel", map[string]any{"device": "mirror1", "force": true}),
		"BLOCK_JOB_CANCELLED", "JOB_STATUS_CHANGE", "JOB_STATUS_CHANGE")

	// A job that neither finalizes nor dismisses itself: pending (with
	// BLOCK_JOB_PENDING) until job-finalize, concluded until job-dismiss.
	r.drive(func() error {
		_, err := vm.MirrorReady(ctx, Mirror{JobID: "mirror4", Source: "src", Target: "tgt4", Manual: true})
		return err
	}, "BLOCK_JOB_READY")
	r.drive(r.ctl("block-job-complete", map[string]any{"device": "mirror4"}),
		"JOB_STATUS_CHANGE", "JOB_STATUS_CHANGE", "BLOCK_JOB_PENDING")
	r.query("query-jobs")
	r.drive(r.ctl("job-finalize", map[string]any{"id": "mirror4"}), "BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE")
	r.query("query-jobs")
	r.drive(r.ctl("job-dismiss", map[string]any{"id": "mirror4"}), "JOB_STATUS_CHANGE")
	r.query("query-jobs")

	// Failing jobs: on-source-error stop (paused, then cancelled) and
	// report (completed with an error).
	r.drive(func() error {
		return vm.StartMirror(ctx, Mirror{JobID: "mirror2", Source: "bad", Target: "tgt2", OnSourceError: "stop"})
	}, "BLOCK_JOB_ERROR", "JOB_STATUS_CHANGE")
	r.query("query-jobs", "query-block-jobs")
	r.drive(r.ctl("block-job-cancel", map[string]any{"device": "mirror2", "force": true}), "BLOCK_JOB_CANCELLED")
	r.drive(func() error {
		return vm.StartMirror(ctx, Mirror{JobID: "mirror3", Source: "bad", Target: "tgt3", OnSourceError: "report"})
	}, "BLOCK_JOB_ERROR", "BLOCK_JOB_COMPLETED")
	settle(t, ctx, r.exp, EventWith("JOB_STATUS_CHANGE", "id", "mirror3"), `"null"`)
	r.query("query-jobs")
	// cont after a migration re-opens every node, which fails on "bad".
	if _, err := vm.Ctl.Execute(ctx, "blockdev-del", map[string]any{"node-name": "bad"}); err != nil {
		t.Fatal(err)
	}

	// Migrations with the events capability: a throttled one queried while
	// active, then sped up to completion; a failed one; a cancelled one.
	if err := vm.SetMigrationEvents(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := vm.SetMigrationSpeed(ctx, SlowMigration); err != nil {
		t.Fatal(err)
	}
	r.drive(func() error { return vm.Migrate(ctx, MigrateToNull) }, "MIGRATION", "MIGRATION_PASS", "MIGRATION")
	for range 2 {
		sleep(t, ctx, 300*time.Millisecond)
		r.query("query-migrate", "query-status")
	}
	r.drive(func() error { return vm.SetMigrationSpeed(ctx, FastMigration) }, "STOP", "MIGRATION")
	if _, err := vm.WaitMigration(ctx, 0); err != nil {
		t.Fatal(err)
	}
	r.query("query-migrate", "query-status")
	r.drive(r.ctl("cont", nil), "RESUME")
	r.drive(func() error { return vm.Migrate(ctx, MigrateToFail) }, "MIGRATION", "MIGRATION_PASS", "MIGRATION", "MIGRATION")
	if _, err := vm.WaitMigration(ctx, 0); err != nil {
		t.Fatal(err)
	}
	r.query("query-migrate", "query-status")
	if err := vm.SetMigrationSpeed(ctx, SlowMigration); err != nil {
		t.Fatal(err)
	}
	r.drive(func() error { return vm.Migrate(ctx, MigrateToNull) }, "MIGRATION", "MIGRATION_PASS", "MIGRATION")
	sleep(t, ctx, 300*time.Millisecond)
	r.query("query-migrate")
	r.drive(func() error { return vm.CancelMigration(ctx) }, "MIGRATION", "MIGRATION")
	if _, err := vm.WaitMigration(ctx, 0); err != nil {
		t.Fatal(err)
	}
	r.query("query-migrate", "query-status")

	// Dumps: one that completes, one that fails while writing.
	r.drive(func() error {
		_, err := vm.Dump(ctx, "file:"+filepath.Join(vm.Dir, "dump"), "kdump-zlib")
		return err
	}, "STOP", "DUMP_COMPLETED", "RESUME")
	r.drive(func() error {
		_, err := vm.Dump(ctx, DumpToFull, "")
		return err
	}, "STOP", "DUMP_COMPLETED", "RESUME")
	r.query("query-dump")

	// The guest sets its clock to 2000-01-01, reports a balloon of 16 MiB
	// and fails to read a disk sector (rerror=report).
	r.drive(func() error { return vm.SetRTC(ctx, time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)) }, "RTC_CHANGE")
	r.drive(func() error { return vm.GuestBalloon(ctx, 16<<20) }, "BALLOON_CHANGE")
	r.query("query-balloon")
	r.drive(func() error { return vm.DiskRead(ctx, FaultySector) }, "BLOCK_IO_ERROR")
	r.query("query-status")

	// Power: the ACPI button, then S3 and a wakeup.
	r.drive(func() error { return vm.PowerDown(ctx) }, "POWERDOWN")
	r.drive(func() error { return vm.Suspend(ctx) }, "SUSPEND")
	r.query("query-status")
	r.drive(func() error { return vm.Wakeup(ctx) }, "WAKEUP")
	r.query("query-status")
	r.quit()
	r.tr.write(t, r.fileName(out, "jobs"))
}

// sleep waits for d, or fails the test when ctx ends first.
func sleep(t *testing.T, ctx context.Context, d time.Duration) {
	t.Helper()
	select {
	case <-time.After(d):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
}

// settle waits until m has received an event matching match whose data
// contains want.
func settle(t *testing.T, ctx context.Context, m *Monitor, match func(Event) bool, want string) {
	t.Helper()
	if _, err := m.WaitFunc(ctx, want, 0, func(ev Event) bool {
		return match(ev) && strings.Contains(string(ev.Data), want)
	}); err != nil {
		t.Fatal(err)
	}
}
