package dashboards

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/promlab"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
)

// e2eVM is the lab VM's name, its vm label.
const e2eVM = "lab"

// TestEndToEndPrometheus is the proof of the dashboards and alert rules: a
// real Prometheus (scraping every second, evaluating a copy of the rules
// whose `for` is 0s) scrapes the real exporter, which watches a real QEMU.
// The test makes QEMU emit the events the alerts are about, checks through
// Prometheus's HTTP API that the alerts fire (every alert of the rules
// file must), and then that every query of every dashboard (panels,
// annotations, variables) returns at least one series. It runs once per
// Prometheus release (promlab.Releases), each with a QEMU and an exporter
// of its own, and logs the exposition format each Prometheus was served.
func TestEndToEndPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	qemulab.RequireQEMU(t)
	if _, err := qemulab.FindQEMUImg(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	bin := exporterproc.BuildForTest(ctx, t)
	for _, r := range promlab.Releases() {
		t.Run(r.Name, func(t *testing.T) {
			endToEndPrometheus(t, bin, r.RequirePrometheus(t))
		})
	}
}

// startLab starts the lab VM, the exporter watching it, and a Prometheus
// scraping the exporter through a promlab.ScrapeRecorder (which tells what
// exposition format this Prometheus was served) with a copy of the rules
// whose `for` is 0s.
func startLab(ctx context.Context, t *testing.T, bin, promBin string) *e2e {
	dir := t.TempDir()
	// Every device a panel needs: CD-ROM trays, pvpanic, ib700, a disk
	// whose first read of sector 1 fails (rerror=stop, so it has an I/O
	// status and pauses the VM), a balloon, VNC and SPICE.
	vm, err := qemulab.Start(ctx, qemulab.Options{
		Dir: filepath.Join(dir, "vm"), Name: e2eVM,
		Devices: true, VNC: true, SPICE: true, Balloon: true,
		FaultyDisk: &qemulab.FaultyDisk{ReadError: "stop", Once: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	exp, err := exporterproc.Start(ctx, bin, "--qmp.socket="+vm.ExporterSocket, "--qmp.command-timeout=3s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(exp.Kill)
	rec := promlab.NewScrapeRecorder(exp.Addr)
	t.Cleanup(rec.Close)

	rulesPath := immediateRules(t, dir)
	prom, err := promlab.Start(ctx, promlab.Options{
		Dir: filepath.Join(dir, "prometheus"), Binary: promBin,
		Job: "qmp", Targets: []string{rec.Addr}, RuleFiles: []string{rulesPath},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := prom.Close(); err != nil {
			t.Error(err)
		}
	})
	return &e2e{t: t, ctx: ctx, prom: prom, vm: vm, exp: exp, rec: rec, fired: map[string]bool{}}
}

// immediateRules writes into dir a copy of the shipped rules whose `for`
// is 0s, so that an alert fires at the first evaluation that sees its
// cause, and returns its path.
func immediateRules(t *testing.T, dir string) string {
	t.Helper()
	rules, err := os.ReadFile(filepath.Join(exporterproc.ModuleRoot(t), "alerts", "qmp_exporter.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if rules, err = promlab.ShortenFor(rules, 0); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "qmp_exporter.rules.yml")
	if err := os.WriteFile(path, rules, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// endToEndPrometheus runs the test against one Prometheus, promBin.
func endToEndPrometheus(t *testing.T, bin, promBin string) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	version, err := promlab.Version(ctx, promBin)
	if err != nil {
		t.Fatal(err)
	}
	e := startLab(ctx, t, bin, promBin)
	since := time.Now()
	t.Logf("exporter, QEMU and Prometheus %s up after %v", version, since.Sub(began).Round(time.Millisecond))

	// Prometheus has the session up and the alerting counters at 0
	// before anything happens, as they will be in production.
	e.waitQuery(`qmp_up{vm="lab"} == 1 and on(vm) qmp_guest_panics_total{vm="lab",action="pause",info="none"} == 0`)
	e.touchDevices()
	e.fireEventAlerts()
	e.startBlockJobs()
	t.Logf("alerts fired and panel data in place after %v", time.Since(began).Round(time.Millisecond))

	// The range ends a step after now: a range query evaluates at
	// since + k*step only, and the newest series (the block job's) may be
	// younger than the last such instant before now.
	until := time.Now().Add(time.Second)
	e.checkDashboards(since, until)
	e.checkEventPanels(since, until)
	rules := e.checkRules()
	e.fireDownAlerts()
	e.checkScrapes(version)

	// Every shipped alert fired in this run.
	for _, r := range rules {
		if r.Type == "alerting" && !e.fired[r.Name] {
			t.Errorf("alert %s never fired in this test; make the lab VM trigger it", r.Name)
		}
	}
	t.Logf("done in %v", time.Since(began).Round(time.Millisecond))
}

// labels returns the labels of the lab VM's series, and extra. The
// instance is the recorder's address: Prometheus scrapes that.
func (e *e2e) labels(extra map[string]string) map[string]string {
	m := map[string]string{"job": "qmp", "instance": e.rec.Addr, "vm": e2eVM}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// touchDevices makes the data of the panels that need a device touched:
// a tray, VNC and SPICE clients that stay connected, a stop and a cont.
func (e *e2e) touchDevices() {
	t, ctx, vm := e.t, e.ctx, e.vm
	e.ctl("blockdev-open-tray", map[string]any{"id": qemulab.CDROMNamedID})
	for _, c := range []struct {
		dial func(context.Context, string) (net.Conn, error)
		path string
	}{{qemulab.VNCHandshake, vm.VNCSocket}, {qemulab.SPICEHandshake, vm.SPICESocket}} {
		conn, err := c.dial(ctx, c.path)
		if err != nil {
			t.Fatal(err)
		}
		e.consoles = append(e.consoles, conn)
	}
	t.Cleanup(func() {
		for _, c := range e.consoles {
			c.Close()
		}
	})
	e.ctl("stop", nil)
	e.ctl("cont", nil)
	e.waitQuery(`qmp_vnc_clients{vm="lab"} == 1`)
	e.waitQuery(`qmp_spice_clients{vm="lab"} > 0`)
	e.waitQuery(`qmp_tray_open{vm="lab",device="cdrom0"} == 1`)
}

// fireEventAlerts makes QEMU emit the events of the event alerts and
// waits for each alert.
func (e *e2e) fireEventAlerts() {
	t, ctx, vm, with := e.t, e.ctx, e.vm, e.labels
	// Watchdog: ib700 fires at once, action reset (then RESET).
	e.expect("WATCHDOG", func() error { return vm.FireWatchdog(ctx) })
	e.waitAlert("QEMUWatchdogFired", with(map[string]string{"action": "reset", "severity": "critical"}), nil)

	// Panic: pvpanic, action pause; the VM stays in guest-panicked.
	e.expect("GUEST_PANICKED", func() error { return vm.Panic(ctx) })
	e.waitAlert("QEMUGuestPanicked", with(map[string]string{"action": "pause", "info": "none", "severity": "critical"}), nil)
	e.waitQuery(`qmp_vm_status{vm="lab",status="guest-panicked"} == 1`)
	e.ctl("cont", nil)

	// Reset loop: the watchdog's reset is already in Prometheus; seven
	// more guest resets make more than five in the window.
	for range 7 {
		e.expect("RESET", func() error { return vm.GuestReset(ctx) })
	}
	e.waitAlert("QEMUVMResetLoop", with(map[string]string{"severity": "warning"}), nil)

	// I/O error: the disk's read fails once, rerror=stop pauses the VM.
	e.expect("BLOCK_IO_ERROR", func() error { return vm.DiskRead(ctx, qemulab.FaultySector) })
	e.waitAlert("QEMUBlockIOErrors", with(map[string]string{"device": qemulab.FaultyDiskID, "operation": "read", "action": "stop"}), nil)
	e.waitAlert("QEMUVMPausedOnIOError", with(nil), func(a promlab.Alert) bool {
		return strings.Contains(a.Annotations["description"], qemulab.FaultyDiskID+" (failed)")
	})
	e.ctl("cont", nil) // the retry succeeds (FaultyDisk.Once)
	e.waitQuery(`qmp_vm_status{vm="lab",status="running"} == 1`)

	// Migrations: one that fails, then one to /dev/null that completes
	// (and leaves the VM in postmigrate until cont).
	if err := vm.SetMigrationEvents(ctx, true); err != nil {
		t.Fatal(err)
	}
	for _, uri := range []string{qemulab.MigrateToFail, qemulab.MigrateToNull} {
		if err := vm.Migrate(ctx, uri); err != nil {
			t.Fatal(err)
		}
		if _, err := vm.WaitMigration(ctx, 0); err != nil {
			t.Fatal(err)
		}
	}
	e.waitAlert("QEMUMigrationFailed", with(map[string]string{"result": "failed"}), nil)
	e.waitQuery(`qmp_migration_transferred_bytes{vm="lab"} > 0 and on(vm) qmp_migration_status{vm="lab",status="completed"} == 1`)
	e.ctl("cont", nil)
}

// startBlockJobs leaves a block job for the panels, and fires the
// corruption alert.
func (e *e2e) startBlockJobs() {
	t, ctx, vm := e.t, e.ctx, e.vm
	// A block job that stays: a mirror, ready and not completed.
	for _, img := range []qemulab.Image{{Node: "src", Size: 4 << 20, Data: 4 << 20}, {Node: "tgt", Size: 4 << 20}} {
		if _, err := vm.AddQcow2(ctx, img); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := vm.MirrorReady(ctx, qemulab.Mirror{JobID: "mirror0", Source: "src", Target: "tgt"}); err != nil {
		t.Fatal(err)
	}
	e.waitQuery(`qmp_block_jobs{vm="lab",type="mirror",status="ready"} == 1`)

	// A corrupt image, last: a broken node in the graph makes later
	// migrations fail. A mirror's first read of it makes QEMU mark it
	// corrupt. No guest device shows the node, so the exporter first
	// learns of it through the event: its counter is born at 1, which only
	// the `unless ... offset` half of the rule sees.
	for _, img := range []qemulab.Image{{Node: "corrupt", Size: 4 << 20, Data: 1 << 20, CorruptL1: true}, {Node: "tgt1", Size: 4 << 20}} {
		if _, err := vm.AddQcow2(ctx, img); err != nil {
			t.Fatal(err)
		}
	}
	e.expect("BLOCK_IMAGE_CORRUPTED", func() error {
		return vm.StartMirror(ctx, qemulab.Mirror{JobID: "mirror1", Source: "corrupt", Target: "tgt1"})
	})
	e.waitAlert("QEMUBlockImageCorrupted", e.labels(map[string]string{"device": "corrupt", "severity": "critical"}), nil)
	if res, err := e.prom.Query(ctx, `min_over_time(qmp_block_image_corruptions_total{vm="lab",device="corrupt"}[5m])`); err != nil {
		t.Error(err)
	} else if len(res) != 1 || res[0].Value != 1 {
		t.Errorf("the corruption counter was not born at 1, so the born-above-0 half of the rule went untested:\n%s", promlab.FormatSamples(res))
	}
}

// checkDashboards checks that every query of every dashboard returns data,
// with the variables set as a user looking at the lab VM would set them.
func (e *e2e) checkDashboards(since, until time.Time) {
	t, ctx, prom := e.t, e.ctx, e.prom
	vars := map[string]string{"job": "qmp", "instance": e.rec.Addr, "vm": e2eVM, "__rate_interval": "1m"}
	n := 0
	for _, d := range loadDashboards(t) {
		for _, q := range d.queries() {
			expr, err := substitute(q.Expr, vars)
			if err != nil {
				t.Errorf("%s: %v", q.Where, err)
				continue
			}
			n++
			if q.Instant {
				res, err := prom.Query(ctx, expr)
				if err != nil {
					t.Errorf("%s: %v", q.Where, err)
				} else if len(res) == 0 {
					t.Errorf("%s: instant query returned no series\n    expr: %s", q.Where, expr)
				}
				continue
			}
			res, err := prom.QueryRange(ctx, expr, since, until, time.Second)
			if err != nil {
				t.Errorf("%s: %v", q.Where, err)
			} else if len(res) == 0 {
				t.Errorf("%s: range query returned no series\n    expr: %s", q.Where, expr)
			}
		}
		n += e.checkVariables(d, vars)
	}
	t.Logf("%d dashboard queries checked", n)
}

// checkVariables checks that the query of each of d's variables finds a
// value, and returns how many queries it checked.
func (e *e2e) checkVariables(d *dashboard, vars map[string]string) int {
	t := e.t
	vqs, err := d.variableQueries()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, vq := range vqs {
		expr, err := substitute(vq.Selector, vars)
		if err != nil {
			t.Errorf("%s: %v", vq.Where, err)
			continue
		}
		n++
		res, err := e.prom.Query(e.ctx, expr)
		if err != nil {
			t.Errorf("%s: %v", vq.Where, err)
			continue
		}
		found := false
		for _, s := range res {
			found = found || s.Labels[vq.Label] != ""
		}
		if !found {
			t.Errorf("%s: no value of %s in %s:\n%s", vq.Where, vq.Label, expr, promlab.FormatSamples(res))
		}
	}
	return n
}

// checkEventPanels checks that the panels that must show the events show
// them, not only exist.
func (e *e2e) checkEventPanels(since, until time.Time) {
	t, ctx, prom := e.t, e.ctx, e.prom
	for expr, what := range map[string]string{
		`sum by (vm, action) (increase(qmp_guest_panics_total{vm="lab"}[1m]))`:     "the panic",
		`sum by (vm, action) (increase(qmp_watchdog_actions_total{vm="lab"}[1m]))`: "the watchdog firing",
		`sum by (action) (increase(qmp_block_io_errors_total{vm="lab"}[1m]))`:      "the I/O error",
		`sum by (result) (increase(qmp_migrations_total{vm="lab"}[1m]))`:           "the migrations",
		`sum by (device) ((qmp_block_image_corruptions_total{vm="lab"} unless qmp_block_image_corruptions_total{vm="lab"} offset 1m) or increase(qmp_block_image_corruptions_total{vm="lab"}[1m]))`: "the corruption",
	} {
		res, err := prom.QueryRange(ctx, expr, since, until, time.Second)
		if err != nil {
			t.Errorf("%s: %v", what, err)
			continue
		}
		seen := false
		for _, s := range res {
			for _, p := range s.Points {
				seen = seen || p.Value > 0
			}
		}
		if !seen {
			t.Errorf("%s does not show in %s", what, expr)
		}
	}

}

// checkRules checks that no rule failed to evaluate, and returns them.
func (e *e2e) checkRules() []promlab.Rule {
	rs, err := e.prom.Rules(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, r := range rs {
		if r.Health != "ok" {
			e.t.Errorf("rule %s: health %s: %s", r.Name, r.Health, r.LastError)
		}
	}
	return rs
}

// fireDownAlerts takes the session down, then the exporter.
func (e *e2e) fireDownAlerts() {
	if err := e.vm.Kill(); err != nil {
		e.t.Fatal(err)
	}
	e.waitAlert("QMPMonitorDisconnected", e.labels(map[string]string{"severity": "warning"}), nil)
	sctx, scancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer scancel()
	if err := e.exp.Stop(sctx); err != nil {
		e.t.Errorf("exporter did not stop cleanly: %v\n%s", err, e.exp.Logs())
	}
	e.waitAlert("QMPExporterDown", map[string]string{"job": "qmp", "instance": e.rec.Addr, "severity": "critical"}, nil)
}

// e2e holds what the end-to-end test's steps share.
type e2e struct {
	t        *testing.T
	ctx      context.Context
	prom     *promlab.Server
	vm       *qemulab.VM
	exp      *exporterproc.Process
	rec      *promlab.ScrapeRecorder
	consoles []net.Conn
	fired    map[string]bool // the alerts waitAlert saw firing
}

// checkScrapes logs what the Prometheus was served (the format it
// negotiated with the exporter), and checks that its scrapes went through
// the recorder and were answered in OpenMetrics, which Prometheus 2 and 3
// both ask for before the text format (3 asks for protobuf first, which
// the exporter declines).
func (e *e2e) checkScrapes(version string) {
	e.t.Logf("Prometheus %s was served:\n%s", version, e.rec)
	ok := 0
	for s, n := range e.rec.Scrapes() {
		if s.Status == http.StatusOK {
			ok += n
			if !strings.HasPrefix(s.ContentType, "application/openmetrics-text; version=1.0.0") {
				e.t.Errorf("%d scrapes answered with Content-Type %q, want OpenMetrics 1.0.0 (Accept %q)", n, s.ContentType, s.Accept)
			}
		}
	}
	if ok == 0 {
		e.t.Errorf("no successful scrape went through the recorder:\n%s", e.rec)
	}
}

// ctl runs a command on QEMU's control monitor.
func (e *e2e) ctl(cmd string, args any) {
	e.t.Helper()
	if _, err := e.vm.Ctl.Execute(e.ctx, cmd, args); err != nil {
		e.t.Fatalf("%s: %v", cmd, err)
	}
}

// expect does something and waits for the event it makes QEMU emit.
func (e *e2e) expect(event string, do func() error) {
	e.t.Helper()
	exp := e.vm.Ctl.Expect(event)
	if err := do(); err != nil {
		e.t.Fatalf("before %s: %v", event, err)
	}
	wctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	if _, err := exp.Wait(wctx); err != nil {
		e.t.Fatalf("%s: %v", event, err)
	}
}

// waitQuery waits, for at most 20 s, until expr returns a series.
func (e *e2e) waitQuery(expr string) {
	e.t.Helper()
	wctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	if _, err := e.prom.WaitQuery(wctx, expr, func(r []promlab.Sample) bool { return len(r) > 0 }); err != nil {
		e.t.Fatalf("%v\nexporter log:\n%s", err, e.exp.Logs())
	}
}

// waitAlert waits, for at most 20 s, until the alert fires.
func (e *e2e) waitAlert(name string, labels map[string]string, match func(promlab.Alert) bool) {
	e.t.Helper()
	wctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	start := time.Now()
	a, err := e.prom.WaitAlertFunc(wctx, name, labels, match)
	if err != nil {
		e.t.Fatal(err)
	}
	e.fired[name] = true
	e.t.Logf("%s fired after %v: %s", name, time.Since(start).Round(time.Millisecond), a.Annotations["summary"])
}
