package libvirtd

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
)

func TestRunState(t *testing.T) {
	for _, tc := range []struct {
		state, reason int32
		want          string
		active        bool
	}{
		{int32(libvirt.DomainRunning), int32(libvirt.DomainRunningBooted), "running", true},
		{int32(libvirt.DomainPaused), int32(libvirt.DomainPausedUser), "paused", true},
		{int32(libvirt.DomainPaused), int32(libvirt.DomainPausedIoerror), "io-error", true},
		{int32(libvirt.DomainPaused), int32(libvirt.DomainPausedWatchdog), "watchdog", true},
		{int32(libvirt.DomainPaused), int32(libvirt.DomainPausedCrashed), "guest-panicked", true},
		{int32(libvirt.DomainPaused), int32(libvirt.DomainPausedStartingUp), "prelaunch", true},
		{int32(libvirt.DomainCrashed), int32(libvirt.DomainCrashedPanicked), "guest-panicked", true},
		{int32(libvirt.DomainPmsuspended), 0, "suspended", true},
		{int32(libvirt.DomainShutdown), 0, "shutdown", true},
		{int32(libvirt.DomainShutoff), int32(libvirt.DomainShutoffDestroyed), "", false},
	} {
		got, active := runState(tc.state, tc.reason)
		if got != tc.want || active != tc.active {
			t.Errorf("runState(%d, %d) = %q, %v; want %q, %v", tc.state, tc.reason, got, active, tc.want, tc.active)
		}
	}
}

// TestTranslateFoldsLikeQEMU folds each libvirt event's translation into
// a fresh state and checks what the metrics read: the counts under the
// QMP event's name and the state the event stands for.
func TestTranslateFoldsLikeQEMU(t *testing.T) {
	dom := libvirt.Domain{Name: "web", UUID: libvirt.UUID{0x5c, 0x0f}}
	lc := func(ev libvirt.DomainEventType, detail int32) any {
		return &libvirt.DomainEventCallbackLifecycleMsg{Msg: libvirt.DomainEventLifecycleMsg{Dom: dom, Event: int32(ev), Detail: detail}}
	}
	type view struct {
		Event     string
		Status    string
		Stopped   bool
		Resync    bool
		Watchdog  map[string]uint64
		Panics    uint64
		Shutdowns map[vmstate.GuestReason]uint64
		Tray      int8
		Balloon   uint64
		RTC       int64
		IOErrors  [3]uint64 // virtio-disk0's, operation unknown, by action
		Nospace   uint64
	}
	for _, tc := range []struct {
		name string
		msg  any
		want view
	}{
		{"suspended for an I/O error", lc(libvirt.DomainEventSuspended, int32(libvirt.DomainEventSuspendedIoerror)), view{Event: "STOP", Status: "io-error"}},
		{"suspended by the watchdog", lc(libvirt.DomainEventSuspended, int32(libvirt.DomainEventSuspendedWatchdog)), view{Event: "STOP", Status: "watchdog"}},
		{"resumed", lc(libvirt.DomainEventResumed, 0), view{Event: "RESUME", Status: "running", Resync: true}},
		{"started", lc(libvirt.DomainEventStarted, 0), view{Resync: true}},
		{"stopped", lc(libvirt.DomainEventStopped, int32(libvirt.DomainEventStoppedDestroyed)), view{Stopped: true}},
		{"guest shut down", lc(libvirt.DomainEventShutdown, int32(libvirt.DomainEventShutdownGuest)),
			view{Event: "SHUTDOWN", Status: "shutdown", Shutdowns: map[vmstate.GuestReason]uint64{{Guest: true, Reason: "unknown"}: 1}}},
		{"panicked", lc(libvirt.DomainEventCrashed, int32(libvirt.DomainEventCrashedPanicked)), view{Event: "GUEST_PANICKED", Status: "guest-panicked", Panics: 1}},
		{"pmsuspended", lc(libvirt.DomainEventPmsuspended, 0), view{Event: "SUSPEND", Status: "suspended"}},
		{"watchdog reset", &libvirt.DomainEventCallbackWatchdogMsg{Msg: libvirt.DomainEventWatchdogMsg{Dom: dom, Action: int32(libvirt.DomainEventWatchdogReset)}},
			view{Event: "WATCHDOG", Watchdog: map[string]uint64{"reset": 1}}},
		{"tray opened", &libvirt.DomainEventCallbackTrayChangeMsg{Msg: libvirt.DomainEventTrayChangeMsg{Dom: dom, DevAlias: "ide0-1-0", Reason: int32(libvirt.DomainEventTrayChangeOpen)}},
			view{Event: "DEVICE_TRAY_MOVED", Tray: 1}},
		{"balloon", &libvirt.DomainEventCallbackBalloonChangeMsg{Msg: libvirt.DomainEventBalloonChangeMsg{Dom: dom, Actual: 65536}},
			view{Event: "BALLOON_CHANGE", Balloon: 64 << 20}},
		{"rtc", &libvirt.DomainEventCallbackRtcChangeMsg{Msg: libvirt.DomainEventRtcChangeMsg{Dom: dom, Offset: -3600}},
			view{Event: "RTC_CHANGE", RTC: -3600}},
		{"reboot", &libvirt.DomainEventCallbackRebootMsg{Msg: libvirt.DomainEventRebootMsg{Dom: dom}}, view{Event: "RESET"}},
		{"I/O error, paused", &libvirt.DomainEventCallbackIOErrorReasonMsg{Msg: libvirt.DomainEventIOErrorReasonMsg{Dom: dom, DevAlias: "virtio-disk0", SrcPath: "/var/lib/x.img", Action: int32(libvirt.DomainEventIoErrorPause), Reason: "enospc"}},
			view{Event: "BLOCK_IO_ERROR", IOErrors: [3]uint64{0, 0, 1}, Nospace: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, ok := translate(tc.msg, time.Unix(1700000000, 0))
			if !ok || tr.dom.Name != "web" {
				t.Fatalf("not translated, or for domain %q", tr.dom.Name)
			}
			st := vmstate.New()
			st.MarkUp(time.Now())
			if tr.event.Name != "" {
				st.Apply(tr.event)
				if st.DataErrors != 0 {
					t.Fatalf("%s data %s is not QMP's shape", tr.event.Name, tr.event.Data)
				}
			}
			if tr.status != "" {
				st.SetStatus(tr.status)
			}
			got := view{Event: tr.event.Name, Status: tr.status, Stopped: tr.stopped, Resync: tr.resync, Tray: -1,
				Balloon: st.Balloon, RTC: st.RTCOffset, Shutdowns: st.Shutdowns}
			for a, n := range st.Watchdog {
				if n > 0 {
					if got.Watchdog == nil {
						got.Watchdog = map[string]uint64{}
					}
					got.Watchdog[a] = n
				}
			}
			got.Panics = st.Panics[[2]string{"pause", "none"}]
			if d := st.Devices["ide0-1-0"]; d != nil {
				got.Tray = d.Tray
			}
			if d := st.Devices["virtio-disk0"]; d != nil {
				got.IOErrors, got.Nospace = d.IOErrors[len(vmstate.IOOperations)], d.Nospace
			}
			if tc.want.Tray == 0 {
				tc.want.Tray = -1
			}
			if tr.event.Name != "" && st.Events[tr.event.Name].Count != 1 {
				t.Errorf("%s not counted once", tr.event.Name)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestUUIDAndVersion(t *testing.T) {
	u := libvirt.UUID{0x5c, 0x0f, 0xfe, 0xe0, 0x0d, 0x15, 0x4a, 0x7b, 0x9e, 0x3c, 0, 0, 0, 0, 0, 1}
	if got := uuidString(u); got != "5c0ffee0-0d15-4a7b-9e3c-000000000001" {
		t.Errorf("uuidString = %s", got)
	}
	if got := qemuVersion(7002022); got != "7.2.22" {
		t.Errorf("qemuVersion = %s", got)
	}
}

// TestBlockEntries reads the disks of a domain's XML as query-block lists
// them: a disk without an alias is not one QEMU names, a CD-ROM has a
// tray, and the disks QEMU keeps an io-status for have one (ok, which the
// source corrects when the domain is paused on an I/O error): IDE, SATA,
// SCSI and virtio disks and CD-ROMs whose errors may stop the VM.
func TestBlockEntries(t *testing.T) {
	got, err := blockEntries(`<domain type='qemu'><name>web</name><devices>
  <disk type='file' device='disk'><target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>
  <disk type='file' device='cdrom'><target dev='hdc' bus='ide' tray='open'/><alias name='ide0-1-0'/></disk>
  <disk type='file' device='cdrom'><target dev='hdd' bus='ide'/><alias name='ide0-1-1'/></disk>
  <disk type='file' device='disk'><target dev='vdb' bus='virtio'/></disk>
  <disk type='file' device='disk'><driver name='qemu' error_policy='report'/><target dev='vdc' bus='virtio'/><alias name='virtio-disk2'/></disk>
  <disk type='file' device='disk'><driver name='qemu' error_policy='report' rerror_policy='stop'/><target dev='sda' bus='sata'/><alias name='sata0-0-0'/></disk>
  <disk type='file' device='disk'><driver name='qemu' error_policy='stop'/><target dev='sdb' bus='scsi'/><alias name='scsi0-0-0-1'/></disk>
  <disk type='file' device='disk'><driver name='qemu' error_policy='enospace'/><target dev='vdd' bus='virtio'/><alias name='virtio-disk3'/></disk>
  <disk type='file' device='disk'><driver name='qemu' error_policy='ignore'/><target dev='sdc' bus='usb'/><alias name='ua-stick'/></disk>
  <disk type='file' device='floppy'><target dev='fda' bus='fdc'/><alias name='fdc0-0-0'/></disk>
</devices></domain>`)
	if err != nil {
		t.Fatal(err)
	}
	open, closed := true, false
	want := []vmstate.BlockEntry{
		{Qdev: "virtio-disk0", IOStatus: "ok"},
		{Qdev: "ide0-1-0", Removable: true, TrayOpen: &open, IOStatus: "ok"},
		{Qdev: "ide0-1-1", Removable: true, TrayOpen: &closed, IOStatus: "ok"},
		{Qdev: "virtio-disk2"},
		{Qdev: "sata0-0-0", IOStatus: "ok"},
		{Qdev: "scsi0-0-0-1", IOStatus: "ok"},
		{Qdev: "virtio-disk3", IOStatus: "ok"},
		{Qdev: "ua-stick"},
		{Qdev: "fdc0-0-0", Removable: true, TrayOpen: &closed},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if _, err := blockEntries("<domain"); err == nil {
		t.Error("a broken XML gave no error")
	}
}

// TestVNCEvents folds a VNC client's three graphics phases: one
// connection, one session, no client left, no failed handshake.
func TestVNCEvents(t *testing.T) {
	st := vmstate.New()
	st.MarkUp(time.Now())
	st.VNC.Set(1, 0)
	local := libvirt.DomainEventGraphicsAddress{Node: "127.0.0.1", Service: "5900"}
	remote := libvirt.DomainEventGraphicsAddress{Node: "127.0.0.1", Service: "41234"}
	for _, phase := range []libvirt.DomainEventGraphicsPhase{libvirt.DomainEventGraphicsConnect, libvirt.DomainEventGraphicsInitialize, libvirt.DomainEventGraphicsDisconnect} {
		ev, ok := graphicsEvent(vncEvents, "service", libvirt.DomainEventGraphicsMsg{Phase: int32(phase), Local: local, Remote: remote}, time.Now())
		if !ok {
			t.Fatalf("phase %d not translated", phase)
		}
		st.Apply(ev)
	}
	if d := st.VNC; d.Clients != 0 || d.Connections != 1 || d.Sessions != 1 || d.Failed != 0 || st.DataErrors != 0 {
		t.Errorf("VNC %+v, data errors %d", d, st.DataErrors)
	}
	x, err := readXML(`<domain><devices><graphics type='spice' port='5901'/><graphics type='vnc' port='5900' autoport='yes'/></devices></domain>`)
	if err != nil {
		t.Fatal(err)
	}
	if port, ok := x.graphicsPort("vnc"); !ok || port != "5900" {
		t.Errorf("graphicsPort(vnc) = %q, %v", port, ok)
	}
	if port, ok := x.graphicsPort("spice"); !ok || port != "5901" {
		t.Errorf("graphicsPort(spice) = %q, %v", port, ok)
	}
}

// TestSPICEEvents folds the graphics phases of two SPICE channels, as
// libvirt relays them (without the channel's type): two connections, no
// client left, no failed handshake; a third channel closed before it was
// initialized is a failed handshake.
func TestSPICEEvents(t *testing.T) {
	st := vmstate.New()
	st.MarkUp(time.Now())
	st.Spice.Set(1, 0)
	local := libvirt.DomainEventGraphicsAddress{Node: "127.0.0.1", Service: "5901"}
	send := func(port string, phases ...libvirt.DomainEventGraphicsPhase) {
		for _, phase := range phases {
			ev, ok := graphicsEvent(spiceEvents, "port", libvirt.DomainEventGraphicsMsg{Phase: int32(phase), Local: local,
				Remote: libvirt.DomainEventGraphicsAddress{Node: "127.0.0.1", Service: port}}, time.Now())
			if !ok {
				t.Fatalf("phase %d not translated", phase)
			}
			st.Apply(ev)
		}
	}
	all := []libvirt.DomainEventGraphicsPhase{libvirt.DomainEventGraphicsConnect, libvirt.DomainEventGraphicsInitialize, libvirt.DomainEventGraphicsDisconnect}
	send("41001", all...)
	send("41002", all...)
	send("41003", libvirt.DomainEventGraphicsConnect, libvirt.DomainEventGraphicsDisconnect)
	if d := st.Spice; d.Clients != 0 || d.Connections != 3 || d.Failed != 1 || st.DataErrors != 0 {
		t.Errorf("SPICE %+v, data errors %d", d, st.DataErrors)
	}
	if st.Events["SPICE_CONNECTED"].Count != 3 || st.Events["SPICE_DISCONNECTED"].Count != 3 {
		t.Errorf("events %v", st.Events)
	}
}

// TestOpenStackMetadata reads the <nova:instance> Nova writes into a
// domain's XML.
func TestOpenStackMetadata(t *testing.T) {
	x, err := readXML(`<domain type='kvm'><name>instance-0000002a</name>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="27.1.0"/>
      <nova:name>web-1</nova:name>
      <nova:creationTime>2026-11-30 10:00:00</nova:creationTime>
      <nova:flavor name="m1.small"><nova:memory>2048</nova:memory><nova:vcpus>1</nova:vcpus></nova:flavor>
      <nova:owner>
        <nova:user uuid="5e5cc0ac-0000-4000-8000-000000000001">alice</nova:user>
        <nova:project uuid="8a1d2c3e-0000-4000-8000-000000000002">shop</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="c0ffee00-0000-4000-8000-000000000003"/>
    </nova:instance>
  </metadata>
  <devices/></domain>`)
	if err != nil {
		t.Fatal(err)
	}
	want := &vmstate.OpenStackInstance{Name: "web-1", Flavor: "m1.small",
		ProjectID: "8a1d2c3e-0000-4000-8000-000000000002", Project: "shop",
		UserID: "5e5cc0ac-0000-4000-8000-000000000001", User: "alice"}
	if diff := cmp.Diff(want, x.openStack()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if x, err := readXML(`<domain><devices/></domain>`); err != nil || x.openStack() != nil {
		t.Errorf("a domain without Nova's metadata gave %+v, %v", x.openStack(), err)
	}
}

func TestHasBalloon(t *testing.T) {
	for xml, want := range map[string]bool{
		`<domain><devices><memballoon model='virtio'/></devices></domain>`: true,
		`<domain><devices><memballoon model='none'/></devices></domain>`:   false,
		`<domain><devices/></domain>`:                                      false,
	} {
		x, err := readXML(xml)
		if err != nil || x.hasBalloon() != want {
			t.Errorf("%s: hasBalloon = %v (err %v), want %v", xml, x.hasBalloon(), err, want)
		}
	}
}

// jobParams are the typed parameters libvirt gives a job's statistics,
// with the types libvirt gives them (operation an int, figures unsigned
// long longs).
func jobParams(op libvirt.DomainJobOperation, extra map[string]uint64) []libvirt.TypedParam {
	params := []libvirt.TypedParam{{Field: "operation", Value: *libvirt.NewTypedParamValueInt(int32(op))}}
	for _, k := range slices.Sorted(maps.Keys(extra)) {
		params = append(params, libvirt.TypedParam{Field: k, Value: *libvirt.NewTypedParamValueUllong(extra[k])})
	}
	return params
}

// savedFigures are the statistics of a real `virsh save` of a 64 MiB
// guest on libvirt 9.0 and QEMU 7.2.
var savedFigures = map[string]uint64{"time_elapsed": 197, "downtime": 190, "setup_time": 2,
	"memory_total": 67502080, "memory_processed": 578341, "memory_remaining": 0, "memory_dirty_rate": 0, "memory_iteration": 3}

// TestMigrationEvents: libvirt's migration-iteration is QEMU's
// MIGRATION_PASS and has the job polled; a domain stopped because it was
// saved or migrated away completed its migration, one stopped otherwise
// did not.
func TestMigrationEvents(t *testing.T) {
	dom := libvirt.Domain{Name: "web", UUID: libvirt.UUID{0x5c, 0x0f}}
	st := vmstate.New()
	tr, ok := translate(&libvirt.DomainEventCallbackMigrationIterationMsg{Dom: dom, Iteration: 3}, time.Unix(1700000000, 0))
	if !ok || tr.event.Name != "MIGRATION_PASS" || tr.pass != 3 {
		t.Fatalf("migration-iteration: %+v, ok %v", tr, ok)
	}
	st.Apply(tr.event)
	if st.Migration.Pass != 3 || st.DataErrors != 0 {
		t.Errorf("pass %d, data errors %d", st.Migration.Pass, st.DataErrors)
	}
	for detail, completed := range map[libvirt.DomainEventStoppedDetailType]bool{
		libvirt.DomainEventStoppedSaved: true, libvirt.DomainEventStoppedMigrated: true,
		libvirt.DomainEventStoppedDestroyed: false, libvirt.DomainEventStoppedShutdown: false, libvirt.DomainEventStoppedFailed: false,
	} {
		msg := &libvirt.DomainEventCallbackLifecycleMsg{Msg: libvirt.DomainEventLifecycleMsg{Dom: dom, Event: int32(libvirt.DomainEventStopped), Detail: int32(detail)}}
		tr, ok := translate(msg, time.Now())
		if !ok || !tr.stopped || (tr.migrate != nil) != completed || completed && tr.migrate.Status != "completed" {
			t.Errorf("stopped, detail %d: %+v; want a completed migration %v", detail, tr, completed)
		}
	}
}

// TestMigrateInfo reads polled job statistics as query-migrate: a running
// job is active with libvirt's downtime as the expected one; an ended
// one's status is libvirt's job type; no job is no migration.
func TestMigrateInfo(t *testing.T) {
	params := jobParams(libvirt.DomainJobOperationStrMigrationOut, map[string]uint64{"time_elapsed": 1500, "downtime": 300,
		"memory_total": 1 << 30, "memory_processed": 1 << 28, "memory_remaining": 3 << 28, "memory_dirty_rate": 1200, "memory_iteration": 2})
	q, ok := migrateInfo(int32(libvirt.DomainJobUnbounded), params)
	if !ok || q.Status != "active" || q.ExpectedDowntime == nil || *q.ExpectedDowntime != 300 || q.Downtime != nil ||
		q.RAM == nil || q.RAM.Remaining != 3<<28 || q.RAM.DirtyPagesRate != 1200 || q.SetupTime != nil {
		t.Fatalf("running migration: %+v, ok %v", q, ok)
	}
	for typ, want := range map[libvirt.DomainJobType]string{libvirt.DomainJobFailed: "failed", libvirt.DomainJobCancelled: "cancelled", libvirt.DomainJobCompleted: "completed"} {
		if q, ok := migrateInfo(int32(typ), params); !ok || q.Status != want || q.Downtime == nil || *q.Downtime != 300 {
			t.Errorf("job type %d: %+v, ok %v; want status %s with the downtime", typ, q, ok, want)
		}
	}
	if _, ok := migrateInfo(int32(libvirt.DomainJobNone), nil); ok {
		t.Error("no job read as a migration")
	}
	// While QEMU sets the migration up, libvirt has no RAM figures yet.
	setup := jobParams(libvirt.DomainJobOperationStrDump, map[string]uint64{"time_elapsed": 3})
	if q, ok := migrateInfo(int32(libvirt.DomainJobUnbounded), setup); !ok || q.Status != "setup" || q.RAM != nil {
		t.Errorf("a migration being set up: %+v, ok %v; want setup without RAM figures", q, ok)
	}
	// A real save's statistics, as the completed job's.
	q, ok = migrateInfo(int32(libvirt.DomainJobCompleted), jobParams(libvirt.DomainJobOperationStrSave, savedFigures))
	st := vmstate.New()
	st.MarkUp(time.Now())
	st.SetMigrate(vmstate.MigrateInfo{Status: "setup"})
	st.SetMigrate(q)
	want := vmstate.Migration{Status: "completed", Pass: 3, Transferred: 578341, Total: 67502080,
		ExpectedDowntime: -1, TotalTime: 0.197, Downtime: 0.190, SetupTime: 0.002, Known: true, HaveRAM: true}
	if !ok || st.MigrationEnds != [3]uint64{1, 0, 0} {
		t.Errorf("a save's completed job: ok %v, ends %v; want one completed migration", ok, st.MigrationEnds)
	}
	if diff := cmp.Diff(want, st.Migration, cmpopts.IgnoreUnexported(vmstate.Migration{})); diff != "" {
		t.Errorf("a save's completed job (-want +got):\n%s", diff)
	}
	// Operations in which QEMU does not migrate out are no migration.
	for _, op := range []libvirt.DomainJobOperation{libvirt.DomainJobOperationStrStart, libvirt.DomainJobOperationStrRestore,
		libvirt.DomainJobOperationStrMigrationIn, libvirt.DomainJobOperationStrBackup} {
		if _, ok := migrateInfo(int32(libvirt.DomainJobCompleted), jobParams(op, savedFigures)); ok {
			t.Errorf("a job of operation %d read as a migration out", op)
		}
	}
	if _, ok := migrateInfo(int32(libvirt.DomainJobCompleted), jobParams(libvirt.DomainJobOperationStrSnapshot, map[string]uint64{"time_elapsed": 5})); ok {
		t.Error("a snapshot that moved no RAM read as a migration")
	}

}
