// Package qemulab starts real, throwaway qemu-system-x86_64 processes with no
// guest operating system and lets tests (and demo programs) make them emit
// real QMP events.
//
// # The machine
//
// Debian's QEMU has no qtest accelerator, so the lab runs -accel tcg with a
// 64 KiB firmware that only halts (cli; hlt; jmp back to the hlt at the reset
// vector). The vCPU therefore never does anything by itself and QEMU idles at
// about 0 % CPU. The test plays the guest through the -qtest line protocol:
// an "outb" to the pvpanic port raises GUEST_PANICKED, one to the ib700
// watchdog fires WATCHDOG, one to port 0xcf9 makes a guest-initiated RESET.
//
// Each VM has up to three connections:
//
//   - the exporter socket, a QMP server socket (server=on,wait=off) that the
//     program under test dials, exactly as it would in production;
//   - the control monitor (VM.Ctl), a second QMP monitor reserved for the
//     test, which may send any command (stop, cont, system_reset, quit,
//     device_add, ...). Start listens on ctl.sock and QEMU connects to it;
//   - the qtest connection (VM.QTest), on which QEMU is likewise the client.
//
// Every QMP monitor that has finished qmp_capabilities receives every event,
// so an event driven on Ctl is seen by the exporter's own monitor too.
//
// # Concurrency and cleanup
//
// Every blocking call takes a context.Context. A Monitor runs one reader
// goroutine, which Monitor.Close stops and waits for; a VM runs one goroutine
// that waits for the QEMU process, which ends when QEMU exits. VM.Close kills
// QEMU if needed and waits for both, so a test that calls Close (typically in
// t.Cleanup) leaves no goroutines behind and passes goleak.
//
// # Events and commands
//
// QEMU may send an event before the reply to the command that caused it
// (RESUME arrives before the return of cont). A Monitor therefore keeps every
// event it receives in an append-only log, and waiting is expressed relative
// to a position in that log: take an Expectation (or a Mark) before sending
// the command, then wait. An event that arrived before the command returned
// is not missed:
//
//	exp := vm.Ctl.Expect("RESUME")
//	if _, err := vm.Ctl.Execute(ctx, "cont", nil); err != nil { ... }
//	ev, err := exp.Wait(ctx)
//
// # Recipes
//
// Besides the VM methods for the events of the lab notes (Panic,
// CrashLoaded, PVShutdown, FireWatchdog, GuestReset, VNCHandshake), each
// documented with the events it produces and their data as QEMU 7.2 sends
// them (and where 10.0 differs, how):
//
//   - block jobs (blockjob.go): AddQcow2 makes qcow2 images with qemu-img
//     and adds them with blockdev-add (optionally failing reads through
//     blkdebug, or with a corrupt L1 table); StartMirror, MirrorReady,
//     CompleteJob, CancelJob and WaitJobEnd drive blockdev-mirror:
//     JOB_STATUS_CHANGE, BLOCK_JOB_READY, BLOCK_JOB_COMPLETED (with "error"
//     for a failed job), BLOCK_JOB_CANCELLED, BLOCK_JOB_ERROR,
//     BLOCK_IMAGE_CORRUPTED; SetWriteThreshold gives BLOCK_WRITE_THRESHOLD;
//     AttachUSBStorage puts a node behind a device for query-block;
//   - migration (migration.go): SetMigrationEvents, SetMigrationSpeed,
//     Migrate, CancelMigration, WaitMigration, RunMigration (no events,
//     polling query-migrate): MIGRATION, MIGRATION_PASS, STOP and the
//     "postmigrate" status;
//   - Dump (dump.go): DUMP_COMPLETED, completed or failed;
//   - SetRTC (rtc.go): RTC_CHANGE, played through the CMOS ports;
//   - power (power.go): PowerDown (POWERDOWN), Suspend (SUSPEND), Wakeup
//     (WAKEUP), SuspendToDisk (SUSPEND_DISK), GuestPowerOff (SHUTDOWN
//     guest-shutdown), played through the ICH9 ACPI PM1 control register;
//   - GuestBalloon (balloon.go, Options.Balloon): BALLOON_CHANGE, played
//     through the virtio-balloon's legacy configuration space;
//   - DiskRead and DiskWrite (disk.go, Options.FaultyDisk): BLOCK_IO_ERROR
//     with every error action, played through a legacy IDE controller;
//   - Options.PanicAction and ShutdownAction: the action values of
//     GUEST_PANICKED;
//   - SPICEHandshake (spice.go, Options.SPICE): SPICE_CONNECTED,
//     SPICE_INITIALIZED, SPICE_DISCONNECTED.
//
// Several of these events are rate-limited by QEMU (RTC_CHANGE,
// BALLOON_CHANGE, WATCHDOG, and from 10.0 BLOCK_IO_ERROR per device): one
// per second, the last of those that came sooner delayed, the others lost.
//
// # QEMU releases
//
// The lab runs any qemu-system-x86_64 (FindQEMU, $QEMU_BINARY); the
// project's tests run it on Debian 12's QEMU 7.2 and on QEMU 10.0 from
// bookworm-backports. Where the two differ, a test asks VM.Version which
// behaviour to expect.
//
// This package is test tooling. It is not imported by the exporter.
package qemulab
