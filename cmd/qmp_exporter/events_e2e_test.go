package main

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
)

// TestEventRecipesEndToEnd drives every event recipe of the lab notes on a
// real QEMU and checks the dedicated metric each one feeds, not only
// qmp_events_total.
func TestEventRecipesEndToEnd(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, 3*time.Minute)
	defer cancel()

	dir := t.TempDir()
	vm, err := qemulab.Start(ctx, qemulab.Options{Dir: filepath.Join(dir, "vm"), Name: "lab", UUID: e2eUUID, Devices: true, VNC: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	e := startExporter(t, ctx, bin, "--qmp.socket="+vm.ExporterSocket, "--qmp.command-timeout=3s")
	has := func(series string, v float64) func(exporterproc.Metrics) bool {
		return func(m exporterproc.Metrics) bool { return m.Has(series, v) }
	}
	ctl := func(cmd string, args any) {
		t.Helper()
		if _, err := vm.Ctl.Execute(ctx, cmd, args); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
	}
	step := func(name string, do func() error) {
		t.Helper()
		if err := do(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}

	// At the first scrape, the gauges are already right (from the sync's
	// queries) and the alerting counters exist at 0.
	m := e.wait("initial state", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_up{vm="lab"}`, 1) && m.Has(`qmp_vm_status{status="running",vm="lab"}`, 1)
	})
	for _, s := range []string{
		`qmp_guest_panics_total{action="pause",info="none",vm="lab"}`,
		`qmp_watchdog_actions_total{action="reset",vm="lab"}`,
		`qmp_block_io_errors_total{action="stop",device="cdrom0",operation="write",vm="lab"}`,
		`qmp_tray_open{device="cdrom0",vm="lab"}`,
		`qmp_tray_open{device="mycd",vm="lab"}`,
		`qmp_vnc_clients{vm="lab"}`,
		`qmp_vnc_sessions_total{vm="lab"}`,
		`qmp_migration_status{status="none",vm="lab"}`,
	} {
		want := 0.0
		if s == `qmp_migration_status{status="none",vm="lab"}` {
			want = 1
		}
		if !m.Has(s, want) {
			v, ok := m.Value(s)
			t.Errorf("initial %s = %v (present %v), want %v", s, v, ok, want)
		}
	}
	if _, ok := m.Value(`qmp_balloon_actual_bytes{vm="lab"}`); ok {
		t.Error("qmp_balloon_actual_bytes present for a VM without a balloon device")
	}

	// DEVICE_TRAY_MOVED in its three shapes: named drive, anonymous
	// BlockBackend (device ""), device without an id (QOM path).
	noID, err := vm.QdevOfDrive(ctx, qemulab.CDROMNoIDDrive)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{qemulab.CDROMNamedID, qemulab.CDROMAnonID, noID} {
		ctl("blockdev-open-tray", map[string]any{"id": id})
		e.wait("tray of "+id+" open", has(`qmp_tray_open{device="`+id+`",vm="lab"}`, 1))
	}
	ctl("blockdev-close-tray", map[string]any{"id": qemulab.CDROMAnonID})
	e.wait("tray of mycd closed", has(`qmp_tray_open{device="mycd",vm="lab"}`, 0))

	// VNC: a completed handshake is a session; a connection closed
	// before it is a failed handshake.
	step("vnc", func() error {
		c, err := qemulab.VNCHandshake(ctx, vm.VNCSocket)
		if err != nil {
			return err
		}
		e.wait("vnc client connected", has(`qmp_vnc_clients{vm="lab"}`, 1))
		return c.Close()
	})
	e.wait("vnc session counted", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_vnc_sessions_total{vm="lab"}`, 1) && m.Has(`qmp_vnc_clients{vm="lab"}`, 0) && m.Has(`qmp_vnc_connections_total{vm="lab"}`, 1)
	})
	step("abandoned vnc handshake", func() error {
		c, err := (&net.Dialer{}).DialContext(ctx, "unix", vm.VNCSocket)
		if err != nil {
			return err
		}
		e.wait("second vnc connection", has(`qmp_vnc_connections_total{vm="lab"}`, 2))
		return c.Close()
	})
	e.wait("abandoned handshake counted", has(`qmp_vnc_handshake_failures_total{vm="lab"}`, 1))

	// Guest reset through the chipset: guest=true, reason=guest-reset.
	step("guest reset", func() error { return vm.GuestReset(ctx) })
	e.wait("guest reset counted by reason", has(`qmp_resets_total{guest="true",reason="guest-reset",vm="lab"}`, 1))
	ctl("system_reset", nil)
	e.wait("host reset counted by reason", has(`qmp_resets_total{guest="false",reason="host-qmp-system-reset",vm="lab"}`, 1))

	// Watchdog: ib700 armed with a 0 s timeout fires at once; the default
	// action is reset.
	step("watchdog", func() error { return vm.FireWatchdog(ctx) })
	e.wait("watchdog counted by action", has(`qmp_watchdog_actions_total{action="reset",vm="lab"}`, 1))

	// pvpanic: crash-loaded (action run), then a panic that pauses the VM.
	step("crashloaded", func() error { return vm.CrashLoaded(ctx) })
	e.wait("crashload counted", has(`qmp_guest_crashloads_total{action="run",vm="lab"}`, 1))
	step("panic", func() error { return vm.Panic(ctx) })
	e.wait("panic counted and VM in guest-panicked", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_guest_panics_total{action="pause",info="none",vm="lab"}`, 1) &&
			m.Has(`qmp_vm_status{status="guest-panicked",vm="lab"}`, 1)
	})
	ctl("cont", nil)
	e.wait("running again", has(`qmp_vm_status{status="running",vm="lab"}`, 1))

	// Hot-unplug of a USB keyboard, with and without an id.
	ctl("device_add", map[string]any{"driver": "usb-kbd", "id": "kbd0", "bus": qemulab.XHCIBus})
	ctl("device_del", map[string]any{"id": "kbd0"})
	e.wait("device deletion counted", has(`qmp_device_deletions_total{vm="lab"}`, 1))

	// pvpanic's shutdown request, new in QEMU 9.1 (7.2 ignores it):
	// GUEST_PVSHUTDOWN is counted by name, the shutdown it causes by
	// reason, and the VM is left in "shutdown" (-no-shutdown).
	if v := vm.Version(); v.AtLeast(9, 1) {
		step("pvpanic shutdown", func() error { return vm.PVShutdown(ctx) })
		e.wait("pvpanic shutdown counted", func(m exporterproc.Metrics) bool {
			return m.Has(`qmp_events_total{event="GUEST_PVSHUTDOWN",vm="lab"}`, 1) &&
				m.Has(`qmp_shutdowns_total{guest="true",reason="guest-shutdown",vm="lab"}`, 1) &&
				m.Has(`qmp_vm_status{status="shutdown",vm="lab"}`, 1)
		})
	} else {
		t.Logf("QEMU %v: no pvpanic shutdown request to test", v)
	}

	// Nothing above was malformed or dropped.
	m = e.wait("final scrape", func(exporterproc.Metrics) bool { return true })
	for _, s := range []string{`qmp_event_data_errors_total{vm="lab"}`, `qmp_protocol_errors_total{vm="lab"}`, `qmp_events_unlabelled_total{vm="lab"}`} {
		if !m.Has(s, 0) {
			v, _ := m.Value(s)
			t.Errorf("%s = %v, want 0", s, v)
		}
	}
}
