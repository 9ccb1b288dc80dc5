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
	r := &recording{t: t, ctx: testContext(t), vm: startVM(t, opts), tr: &transcript{}}
	var err error
	r.exp, err = DialMonitor(r.ctx, r.vm.ExporterSocket, MonitorOptions{Trace: r.tr.trace})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.exp.Close() })
	return r
}

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
