package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/citool"
	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
)

// requireTool returns the path of an external tool; a missing tool skips
// the test, except under CI=true, where it fails it.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	return citool.Require(t, func() (string, error) { return exec.LookPath(name) })
}

// buildExporter compiles this package's binary once per test.
func buildExporter(t *testing.T, ctx context.Context) string {
	t.Helper()
	return exporterproc.BuildForTest(ctx, t)
}

// qemuE2E starts an end-to-end test on a real QEMU: it skips in -short
// mode, requires qemu-system-x86_64 (a failure under CI=true) and builds
// the exporter. The context ends after d; the caller defers cancel.
func qemuE2E(t *testing.T, d time.Duration) (context.Context, context.CancelFunc, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	qemulab.RequireQEMU(t)
	ctx, cancel := context.WithTimeout(t.Context(), d)
	return ctx, cancel, buildExporter(t, ctx)
}

const e2eUUID = "5c0ffee0-0d15-4a7b-9e3c-00000000e2e0"

// e2e is a running exporter under test.
type e2e struct {
	t   *testing.T
	ctx context.Context
	exp *exporterproc.Process
}

// startExporter runs the binary with args and stops it (SIGTERM, which
// must succeed) when the test ends.
func startExporter(t *testing.T, ctx context.Context, bin string, args ...string) *e2e {
	t.Helper()
	exp, err := exporterproc.Start(ctx, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		if err := exp.Stop(sctx); err != nil {
			t.Errorf("exporter did not stop cleanly on SIGTERM: %v\n%s", err, exp.Logs())
		}
	})
	return &e2e{t: t, ctx: ctx, exp: exp}
}

// wait scrapes until cond holds, for at most 30 s.
func (e *e2e) wait(what string, cond func(exporterproc.Metrics) bool) exporterproc.Metrics {
	e.t.Helper()
	wctx, c := context.WithTimeout(e.ctx, 30*time.Second)
	defer c()
	m, err := e.exp.WaitFor(wctx, what, cond)
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

// TestEndToEnd runs the real binary against a real QEMU with no guest:
// a second (control) monitor drives QEMU, and the exporter's own monitor
// must reflect every step in /metrics.
func TestEndToEnd(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, 3*time.Minute)
	defer cancel()
	promtool := requireTool(t, "promtool")

	dir := t.TempDir()
	sock := filepath.Join(dir, "exporter.qmp")
	startVM := func() *qemulab.VM {
		t.Helper()
		vm, err := qemulab.Start(ctx, qemulab.Options{Dir: filepath.Join(dir, "vm"), Name: "e2e", UUID: e2eUUID, ExporterSocket: sock})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { vm.Close() })
		return vm
	}
	vm := startVM()

	e := startExporter(t, ctx, bin, "--qmp.socket="+sock, "--log.level=debug",
		"--qmp.max-backoff=1s", "--qmp.dial-timeout=2s", "--qmp.command-timeout=2s")
	exp, wait := e.exp, e.wait

	const (
		up      = `qmp_up{vm="e2e"}`
		running = `qmp_vm_status{status="running",vm="e2e"}`
		paused  = `qmp_vm_status{status="paused",vm="e2e"}`
		stops   = `qmp_events_total{event="STOP",vm="e2e"}`
		resumes = `qmp_events_total{event="RESUME",vm="e2e"}`
		resets  = `qmp_events_total{event="RESET",vm="e2e"}`
	)
	ctl := func(cmd string) {
		t.Helper()
		if _, err := vm.Ctl.Execute(ctx, cmd, nil); err != nil {
			t.Fatalf("%s on the control monitor: %v", cmd, err)
		}
	}

	// The VM is named by its -name and running; its identity is exported.
	m := wait("session up and running", func(m exporterproc.Metrics) bool {
		return m.Has(up, 1) && m.Has(running, 1)
	})
	// Its release and package, as the control monitor hears them from
	// whichever build runs (Debian's 7.2 or the backported 10.0).
	var ver struct{ Package string }
	if raw, err := vm.Ctl.Execute(ctx, "query-version", nil); err != nil || json.Unmarshal(raw, &ver) != nil || ver.Package == "" {
		t.Fatalf("query-version on the control monitor: %s %v", raw, err)
	}
	info := `qmp_vm_info{package="` + ver.Package + `",qemu_version="` + vm.Version().String() + `",uuid="` + e2eUUID + `",vm="e2e"}`
	if !m.Has(info, 1) {
		t.Errorf("want %s 1, got:\n%s", info, m.Filter("qmp_vm_info"))
	}
	if !strings.Contains(m.Filter("qmp_exporter_build_info"), `goversion="`+runtime.Version()+`"`) {
		t.Errorf("qmp_exporter_build_info missing:\n%s", m.Filter("qmp_exporter_build_info"))
	}

	// stop / cont / system_reset show up in the run state and the counters.
	ctl("stop")
	wait("STOP counted and paused", func(m exporterproc.Metrics) bool {
		return m.Has(stops, 1) && m.Has(paused, 1) && m.Has(running, 0)
	})
	ctl("cont")
	wait("RESUME counted and running", func(m exporterproc.Metrics) bool {
		return m.Has(resumes, 1) && m.Has(running, 1) && m.Has(paused, 0)
	})
	ctl("system_reset")
	wait("RESET counted", func(m exporterproc.Metrics) bool { return m.Has(resets, 1) })

	// A live scrape passes promtool's linter.
	_, body, err := exp.Scrape(ctx)
	if err != nil {
		t.Fatal(err)
	}
	check := exec.CommandContext(ctx, promtool, "check", "metrics")
	check.Stdin = bytes.NewReader(body)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	// SIGKILL: the session drops, the counters stay.
	if err := vm.Kill(); err != nil {
		t.Fatal(err)
	}
	wait("qmp_up 0 after SIGKILL, counters kept", func(m exporterproc.Metrics) bool {
		return m.Has(up, 0) && m.Has(stops, 1) && m.Has(resumes, 1) && m.Has(resets, 1) && m.Has(running, 0)
	})

	// A new QEMU on the same socket path: back to 1, same series, counters
	// continue from where they were.
	vm = startVM()
	wait("qmp_up 1 again", func(m exporterproc.Metrics) bool {
		return m.Has(up, 1) && m.Has(running, 1) && m.Has(stops, 1)
	})
	ctl("stop")
	m = wait("STOP counted on the new session", func(m exporterproc.Metrics) bool { return m.Has(stops, 2) && m.Has(paused, 1) })
	if v, _ := m.Value(`qmp_connection_attempts_total{vm="e2e"}`); v < 2 {
		t.Errorf("connection attempts = %v, want at least 2 (one per session)", v)
	}
	if v, _ := m.Value(`qmp_protocol_errors_total{vm="e2e"}`); v != 0 {
		t.Errorf("protocol errors = %v against a real QEMU", v)
	}

	// quit: QEMU says SHUTDOWN, exits, and the session drops.
	qctx, qc := context.WithTimeout(ctx, 20*time.Second)
	defer qc()
	if err := vm.Quit(qctx); err != nil {
		t.Fatal(err)
	}
	wait("SHUTDOWN counted and qmp_up 0 after quit", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_events_total{event="SHUTDOWN",vm="e2e"}`, 1) && m.Has(up, 0)
	})
}
