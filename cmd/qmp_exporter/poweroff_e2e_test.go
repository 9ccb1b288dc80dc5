package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
)

// powerOffRuns is how many times TestPowerOffEndToEnd powers a QEMU off
// each way. Whether QEMU has hung up by the time the exporter writes its
// follow-up query is a race, so one run proves little.
const powerOffRuns = 10

// TestPowerOffEndToEnd: a guest that panics with action poweroff makes
// QEMU send GUEST_PANICKED, which asks the exporter for query-status,
// then STOP and SHUTDOWN, and exit, often while the exporter writes that
// query; a watchdog with action poweroff makes QEMU 7.2 send WATCHDOG and
// exit at once. Against one exporter, with QEMU started again on the same
// socket each time (same name and UUID, so the counters go on), every one
// of those events is counted, every time.
func TestPowerOffEndToEnd(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	sock := filepath.Join(dir, "off.qmp")
	e := startExporter(t, ctx, bin, "--qmp.socket="+sock, "--log.level=debug",
		"--qmp.max-backoff=200ms", "--qmp.dial-timeout=2s", "--qmp.command-timeout=3s")
	const up = `qmp_up{vm="off"}`

	for _, tc := range []struct {
		name string
		opts qemulab.Options
		fire func(context.Context, *qemulab.VM) error
		// counted are the series that must reach the run's number.
		counted []string
	}{
		{
			name: "panic",
			opts: qemulab.Options{PanicAction: "shutdown", ShutdownAction: "poweroff"},
			fire: func(ctx context.Context, vm *qemulab.VM) error { return vm.Panic(ctx) },
			counted: []string{
				`qmp_events_total{event="GUEST_PANICKED",vm="off"}`,
				`qmp_guest_panics_total{action="poweroff",info="none",vm="off"}`,
				`qmp_events_total{event="STOP",vm="off"}`,
				`qmp_events_total{event="SHUTDOWN",vm="off"}`,
				`qmp_shutdowns_total{guest="true",reason="guest-panic",vm="off"}`,
			},
		},
		{
			name: "watchdog",
			opts: qemulab.Options{WatchdogAction: "poweroff"},
			fire: func(ctx context.Context, vm *qemulab.VM) error { return vm.FireWatchdog(ctx) },
			counted: []string{
				`qmp_events_total{event="WATCHDOG",vm="off"}`,
				`qmp_watchdog_actions_total{action="poweroff",vm="off"}`,
			},
		},
	} {
		for run := 1; run <= powerOffRuns; run++ {
			what := fmt.Sprintf("%s poweroff %d", tc.name, run)
			opts := tc.opts
			opts.Dir, opts.Name, opts.UUID = filepath.Join(dir, "vm"), "off", e2eUUID
			opts.ExporterSocket, opts.Devices = sock, true
			vm, err := qemulab.Start(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { vm.Close() })
			e.wait(what+": session up", func(m exporterproc.Metrics) bool { return m.Has(up, 1) })
			if err := tc.fire(ctx, vm); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			select {
			case <-vm.Exited():
			case <-ctx.Done():
				t.Fatalf("%s: QEMU still running", what)
			}
			// Once the session is down, whatever it read is folded.
			m := e.wait(what+": session down", func(m exporterproc.Metrics) bool { return m.Has(up, 0) })
			for _, s := range tc.counted {
				if v, _ := m.Value(s); v != float64(run) {
					t.Fatalf("%s: %s = %v, want %d\nexporter log:\n%s", what, s, v, run, tail(e.exp.Logs(), 40))
				}
			}
		}
	}
	// How the race went: a drain follows a write that failed because
	// QEMU had gone; a reset means QEMU exited with the query unread.
	logs := e.exp.Logs()
	t.Logf("of %d sessions: %d ended with a drain, %d with a reset, %d with EOF", 2*powerOffRuns,
		strings.Count(logs, "read what qemu had sent before the session ended"),
		strings.Count(logs, "connection reset by peer"), strings.Count(logs, "peer closed the connection: EOF"))
	if dropped := strings.Count(logs, `msg="dropping qmp session"`); dropped != 0 {
		t.Errorf("%d sessions logged as dropped (a warning); a VM powering off is a session lost\n%s", dropped, tail(logs, 40))
	}
}
