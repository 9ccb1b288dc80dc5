package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// TestDeviceRecipesEndToEnd covers the recipes that need more than the
// basic lab machine: block jobs and write thresholds, image corruption,
// guest disk I/O errors, migrations with and without the events
// capability, dumps, the RTC, S3 suspend, the balloon and SPICE. Each step
// checks the dedicated metric on the real exporter's /metrics.
func TestDeviceRecipesEndToEnd(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, 4*time.Minute)
	defer cancel()
	if _, err := qemulab.FindQEMUImg(); err != nil {
		requireTool(t, "qemu-img")
	}
	vm, err := qemulab.Start(ctx, qemulab.Options{
		Dir: filepath.Join(t.TempDir(), "vm"), Name: "dev", UUID: e2eUUID,
		Balloon: true, SPICE: true, FaultyDisk: &qemulab.FaultyDisk{Once: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	// Everything the exporter sends goes through a recording proxy.
	rec := newCommandRecorder(t, vm.ExporterSocket)
	e := startExporter(t, ctx, bin, "--qmp.socket="+rec.Path, "--qmp.command-timeout=5s")
	has := func(series string, v float64) func(exporterproc.Metrics) bool {
		return func(m exporterproc.Metrics) bool { return m.Has(series, v) }
	}
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	const vmL = `vm="dev"`

	// The sync alone makes the gauges right: balloon and SPICE present.
	m := e.wait("initial state", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_up{`+vmL+`}`, 1) && m.Has(`qmp_balloon_actual_bytes{`+vmL+`}`, qemulab.RAMSize)
	})
	if !m.Has(`qmp_spice_clients{`+vmL+`}`, 0) {
		t.Errorf("qmp_spice_clients not 0 at start:\n%s", m.Filter("qmp_spice"))
	}

	// Balloon: the guest driver reports 16 MiB inflated.
	must("balloon", vm.GuestBalloon(ctx, 16<<20))
	e.wait("BALLOON_CHANGE", has(`qmp_balloon_actual_bytes{`+vmL+`}`, qemulab.RAMSize-16<<20))

	// SPICE: one full handshake of the main channel is a session.
	c, err := qemulab.SPICEHandshake(ctx, vm.SPICESocket)
	must("spice", err)
	e.wait("spice channel connected", has(`qmp_spice_clients{`+vmL+`}`, 1))
	must("spice close", c.Close())
	e.wait("spice session counted", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_spice_sessions_total{`+vmL+`}`, 1) && m.Has(`qmp_spice_clients{`+vmL+`}`, 0)
	})

	// Guest I/O error on the faulty IDE disk: a read is reported, a write
	// (ENOSPC, werror=enospc) stops the VM in io-error.
	must("disk read", vm.DiskRead(ctx, qemulab.FaultySector))
	e.wait("read error by device, operation, action", has(`qmp_block_io_errors_total{action="report",device="`+qemulab.FaultyDiskID+`",operation="read",`+vmL+`}`, 1))
	must("disk write", vm.DiskWrite(ctx, qemulab.FaultySector))
	e.wait("nospace write stops the VM in io-error", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_block_io_errors_total{action="stop",device="`+qemulab.FaultyDiskID+`",operation="write",`+vmL+`}`, 1) &&
			m.Has(`qmp_block_io_nospace_errors_total{device="`+qemulab.FaultyDiskID+`",`+vmL+`}`, 1) &&
			m.Has(`qmp_vm_status{status="io-error",`+vmL+`}`, 1)
	})
	_, err = vm.Ctl.Execute(ctx, "cont", nil)
	must("cont", err)
	e.wait("running after the retried write", has(`qmp_vm_status{status="running",`+vmL+`}`, 1))

	// A mirror with a write threshold on its target, completed.
	_, err = vm.AddQcow2(ctx, qemulab.Image{Node: "src0", Size: 8 << 20, Data: 4 << 20})
	must("src0", err)
	_, err = vm.AddQcow2(ctx, qemulab.Image{Node: "tgt0", Size: 8 << 20})
	must("tgt0", err)
	must("threshold", vm.SetWriteThreshold(ctx, "tgt0", 1<<20))
	mir := qemulab.Mirror{JobID: "mirror0", Source: "src0", Target: "tgt0"}
	_, err = vm.MirrorReady(ctx, mir)
	must("mirror ready", err)
	e.wait("ready mirror job and threshold hit", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_block_jobs{status="ready",type="mirror",`+vmL+`}`, 1) &&
			m.Has(`qmp_block_job_progress_bytes{job="mirror0",type="mirror",`+vmL+`}`, 8<<20) &&
			m.Has(`qmp_block_job_length_bytes{job="mirror0",type="mirror",`+vmL+`}`, 8<<20) &&
			m.Has(`qmp_block_write_threshold_hits_total{device="tgt0",`+vmL+`}`, 1)
	})
	_, err = vm.CompleteJob(ctx, "mirror0")
	must("complete", err)
	e.wait("completed mirror counted, job gone", func(m exporterproc.Metrics) bool {
		_, still := m.Value(`qmp_block_jobs{status="ready",type="mirror",` + vmL + `}`)
		return m.Has(`qmp_block_jobs_finished_total{result="completed",type="mirror",`+vmL+`}`, 1) && !still
	})

	// Migration with the events capability off, as on most hosts: the
	// exporter learns of it from the STOP and by polling.
	info, err := vm.RunMigration(ctx, qemulab.MigrateToNull)
	must("migration", err)
	if info.Status != "completed" {
		t.Fatalf("lab migration ended %q, want completed", info.Status)
	}
	e.wait("completed migration seen without events", has(`qmp_migrations_total{result="completed",`+vmL+`}`, 1))
	_, err = vm.Ctl.Execute(ctx, "cont", nil)
	must("cont after migration", err)
	// With events on: a failing migration and a cancelled one.
	must("events on", vm.SetMigrationEvents(ctx, true))
	must("migrate to fail", vm.Migrate(ctx, qemulab.MigrateToFail))
	_, err = vm.WaitMigration(ctx, 0)
	must("wait failed", err)
	e.wait("failed migration", has(`qmp_migrations_total{result="failed",`+vmL+`}`, 1))
	must("slow", vm.SetMigrationSpeed(ctx, qemulab.SlowMigration))
	must("slow migrate", vm.Migrate(ctx, qemulab.MigrateToNull))
	e.wait("migration in progress", has(`qmp_migration_status{status="active",`+vmL+`}`, 1))
	must("cancel", vm.CancelMigration(ctx))
	_, err = vm.WaitMigration(ctx, 0)
	must("wait cancelled", err)
	m = e.wait("cancelled migration", has(`qmp_migrations_total{result="cancelled",`+vmL+`}`, 1))
	if !m.Has(`qmp_migrations_total{result="completed",`+vmL+`}`, 1) || !m.Has(`qmp_migrations_total{result="failed",`+vmL+`}`, 1) {
		t.Errorf("migration ends counted more than once:\n%s", m.Filter("qmp_migrations_total"))
	}

	// Dumps: one to a file, one to /dev/full.
	_, err = vm.Dump(ctx, "file:"+filepath.Join(vm.Dir, "dump"), "kdump-zlib")
	must("dump", err)
	_, err = vm.Dump(ctx, qemulab.DumpToFull, "")
	must("failed dump", err)
	e.wait("dumps by result", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_dumps_total{result="completed",`+vmL+`}`, 1) && m.Has(`qmp_dumps_total{result="failed",`+vmL+`}`, 1)
	})

	// The guest sets its clock to 2000-01-01: a negative offset.
	must("rtc", vm.SetRTC(ctx, time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)))
	e.wait("rtc offset", func(m exporterproc.Metrics) bool {
		v, ok := m.Value(`qmp_rtc_offset_seconds{` + vmL + `}`)
		return ok && v < -8e8
	})

	// S3 suspend and wakeup.
	must("suspend", vm.Suspend(ctx))
	e.wait("suspended", has(`qmp_vm_status{status="suspended",`+vmL+`}`, 1))
	must("wakeup", vm.Wakeup(ctx))
	e.wait("awake", has(`qmp_vm_status{status="running",`+vmL+`}`, 1))

	// A corrupt image: the mirror's first read marks it corrupt (fatal).
	// Last, because a broken node in the graph makes later migrations fail.
	_, err = vm.AddQcow2(ctx, qemulab.Image{Node: "corrupt", Size: 4 << 20, Data: 1 << 20, CorruptL1: true})
	must("corrupt image", err)
	_, err = vm.AddQcow2(ctx, qemulab.Image{Node: "tgt1", Size: 4 << 20})
	must("tgt1", err)
	must("mirror of corrupt", vm.StartMirror(ctx, qemulab.Mirror{JobID: "mirror1", Source: "corrupt", Target: "tgt1"}))
	e.wait("corruption counted, fatal", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_block_image_corruptions_total{device="corrupt",`+vmL+`}`, 1) &&
			m.Has(`qmp_block_image_corrupt_fatal{device="corrupt",`+vmL+`}`, 1)
	})

	m = e.wait("final", func(exporterproc.Metrics) bool { return true })
	// Read-only by construction: everything the exporter sent in this
	// whole run (connect, sync, every follow-up query, migration polling)
	// is on the allow-list.
	sent := rec.Commands()
	for _, c := range sent {
		if !qmp.Allowed(c) {
			t.Errorf("the exporter sent %q, which is not on the read-only allow-list", c)
		}
	}
	for _, c := range []string{"qmp_capabilities", "query-status", "query-block", "query-migrate", "query-jobs", "query-balloon", "query-spice", "query-vnc"} {
		if !slices.Contains(sent, c) {
			t.Errorf("the exporter never sent %s (sent %v)", c, sent)
		}
	}
	for _, s := range []string{`qmp_event_data_errors_total{` + vmL + `}`, `qmp_protocol_errors_total{` + vmL + `}`} {
		if !m.Has(s, 0) {
			v, _ := m.Value(s)
			t.Errorf("%s = %v, want 0", s, v)
		}
	}
}

// TestMigrationRunEndToEnd: QEMU 7.2 answers query-migrate "completed"
// with total-time and downtime 0 for a moment after the MIGRATION event,
// before it has measured them, and the exporter asks right on that event:
// a probe of 100 migrations read those figures in about one in four. The
// later replies carry the final figures; each migration of a run of them
// must still count once, and the final times must be exported.
func TestMigrationRunEndToEnd(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, 3*time.Minute)
	defer cancel()
	vm, err := qemulab.Start(ctx, qemulab.Options{Dir: filepath.Join(t.TempDir(), "vm"), Name: "mig", UUID: e2eUUID})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	rec := newCommandRecorder(t, vm.ExporterSocket)
	// A short refresh re-reads query-migrate often after the runs.
	e := startExporter(t, ctx, bin, "--qmp.socket="+rec.Path, "--qmp.refresh-interval=1s")
	const vmL = `vm="mig"`
	e.wait("up", func(m exporterproc.Metrics) bool { return m.Has(`qmp_up{`+vmL+`}`, 1) })
	if err := vm.SetMigrationEvents(ctx, true); err != nil {
		t.Fatal(err)
	}
	const runs = 15
	for i := 1; i <= runs; i++ {
		if err := vm.Migrate(ctx, qemulab.MigrateToNull); err != nil {
			t.Fatal(err)
		}
		e.wait(fmt.Sprintf("migration %d counted", i), func(m exporterproc.Metrics) bool {
			v, _ := m.Value(`qmp_migrations_total{result="completed",` + vmL + `}`)
			return v >= float64(i)
		})
		if _, err := vm.WaitMigration(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := vm.Ctl.Execute(ctx, "cont", nil); err != nil {
			t.Fatal(err)
		}
	}
	// Let the exporter read query-migrate at least three more times.
	n := rec.Count("query-migrate")
	for rec.Count("query-migrate") < n+3 {
		select {
		case <-ctx.Done():
			t.Fatalf("query-migrate not re-read after the runs (%d reads)", rec.Count("query-migrate"))
		case <-time.After(100 * time.Millisecond):
		}
	}
	m := e.wait("after the refreshes", func(exporterproc.Metrics) bool { return true })
	if !m.Has(`qmp_migrations_total{result="completed",`+vmL+`}`, runs) {
		t.Errorf("want %d completed migrations:\n%s", runs, m.Filter("qmp_migrations_total"))
	}
	if v, ok := m.Value(`qmp_migration_total_time_seconds{` + vmL + `}`); !ok || v <= 0 {
		t.Errorf("qmp_migration_total_time_seconds = %v (present %v), want the final time", v, ok)
	}
}
