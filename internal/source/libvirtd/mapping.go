package libvirtd

import (
	"encoding/xml"
	"fmt"
	"strconv"
	"time"

	"github.com/digitalocean/go-libvirt"

	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// What libvirt says and what it stands for in QEMU's terms. libvirt's
// typed events are its translation of QMP events; each is turned back
// into the QMP event it stands for (name, and data in QMP's shape), so
// that the VM state folds it as it folds QEMU's own, and every metric
// reads the same whatever the source. libvirt's events carry no
// timestamp: the time of arrival stands in for QEMU's.

// runState maps libvirt's state and reason (virDomainGetState) to QEMU's
// RunState, and reports whether the domain's QEMU runs at all. "" is a
// state QEMU has but libvirt does not tell.
func runState(state, reason int32) (status string, active bool) {
	switch libvirt.DomainState(state) {
	case libvirt.DomainRunning, libvirt.DomainBlocked:
		return "running", true
	case libvirt.DomainPaused:
		return pausedState(libvirt.DomainPausedReason(reason)), true
	case libvirt.DomainShutdown:
		return "shutdown", true
	case libvirt.DomainCrashed:
		return "guest-panicked", true
	case libvirt.DomainPmsuspended:
		return "suspended", true
	case libvirt.DomainShutoff:
		return "", false
	}
	return "", true // no state: libvirt does not know either
}

// pausedState maps the reason a domain is paused to QEMU's RunState.
func pausedState(r libvirt.DomainPausedReason) string {
	switch r {
	case libvirt.DomainPausedIoerror:
		return "io-error"
	case libvirt.DomainPausedWatchdog:
		return "watchdog"
	case libvirt.DomainPausedCrashed:
		return "guest-panicked"
	case libvirt.DomainPausedMigration:
		return "finish-migrate"
	case libvirt.DomainPausedSave, libvirt.DomainPausedSnapshot:
		return "save-vm"
	case libvirt.DomainPausedFromSnapshot:
		return "restore-vm"
	case libvirt.DomainPausedStartingUp:
		return "prelaunch"
	}
	return "paused"
}

// suspendedState maps the detail of a lifecycle "suspended" event to
// QEMU's RunState, as pausedState does for the state's reason.
func suspendedState(d libvirt.DomainEventSuspendedDetailType) string {
	switch d {
	case libvirt.DomainEventSuspendedIoerror:
		return "io-error"
	case libvirt.DomainEventSuspendedWatchdog:
		return "watchdog"
	case libvirt.DomainEventSuspendedMigrated:
		return "finish-migrate"
	}
	return "paused"
}

// watchdogActions are QEMU's WatchdogAction names of libvirt's actions.
var watchdogActions = map[libvirt.DomainEventWatchdogAction]string{
	libvirt.DomainEventWatchdogNone:      "none",
	libvirt.DomainEventWatchdogPause:     "pause",
	libvirt.DomainEventWatchdogReset:     "reset",
	libvirt.DomainEventWatchdogPoweroff:  "poweroff",
	libvirt.DomainEventWatchdogShutdown:  "shutdown",
	libvirt.DomainEventWatchdogDebug:     "debug",
	libvirt.DomainEventWatchdogInjectnmi: "inject-nmi",
}

// ioErrorActions are QEMU's BlockErrorAction names of libvirt's I/O
// error actions.
var ioErrorActions = map[libvirt.DomainEventIOErrorAction]string{
	libvirt.DomainEventIoErrorNone:   "ignore",
	libvirt.DomainEventIoErrorPause:  "stop",
	libvirt.DomainEventIoErrorReport: "report",
}

// domainXML is the part of a domain's live XML the source reads: its
// disks, with the alias libvirt gave each (QEMU's qdev id) and, for a
// removable one, its tray.
type domainXML struct {
	Nova *struct {
		Name   string `xml:"name"`
		Flavor struct {
			Name string `xml:"name,attr"`
		} `xml:"flavor"`
		Owner struct {
			User struct {
				UUID string `xml:"uuid,attr"`
				Name string `xml:",chardata"`
			} `xml:"user"`
			Project struct {
				UUID string `xml:"uuid,attr"`
				Name string `xml:",chardata"`
			} `xml:"project"`
		} `xml:"owner"`
	} `xml:"metadata>instance"` // Nova's <nova:instance>
	Balloon *struct {
		Model string `xml:"model,attr"`
	} `xml:"devices>memballoon"`
	Graphics []struct {
		Type string `xml:"type,attr"`
		Port string `xml:"port,attr"`
	} `xml:"devices>graphics"`
	Disks []xmlDisk `xml:"devices>disk"`
}

// xmlDisk is a disk of the domain XML.
type xmlDisk struct {
	Device string    `xml:"device,attr"`
	Driver xmlDriver `xml:"driver"`
	Target xmlTarget `xml:"target"`
	Alias  xmlAlias  `xml:"alias"`
}

type xmlDriver struct {
	ErrorPolicy  string `xml:"error_policy,attr"`
	RErrorPolicy string `xml:"rerror_policy,attr"`
}

type xmlTarget struct {
	Bus  string `xml:"bus,attr"`
	Tray string `xml:"tray,attr"`
}

type xmlAlias struct {
	Name string `xml:"name,attr"`
}

// maxXMLBytes bounds the domain XML the source parses.
const maxXMLBytes = 1 << 20

// readXML reads what the source uses of a domain's live XML.
func readXML(desc string) (*domainXML, error) {
	if len(desc) > maxXMLBytes {
		return nil, fmt.Errorf("domain XML of %d bytes, more than %d", len(desc), maxXMLBytes)
	}
	var x domainXML
	if err := xml.Unmarshal([]byte(desc), &x); err != nil {
		return nil, fmt.Errorf("reading the domain XML: %w", err)
	}
	return &x, nil
}

// openStack returns the Nova metadata of the domain, nil without any.
func (x *domainXML) openStack() *vmstate.OpenStackInstance {
	n := x.Nova
	if n == nil {
		return nil
	}
	return &vmstate.OpenStackInstance{Name: n.Name, Flavor: n.Flavor.Name,
		ProjectID: n.Owner.Project.UUID, Project: n.Owner.Project.Name, UserID: n.Owner.User.UUID, User: n.Owner.User.Name}
}

// hasBalloon reports whether the domain has a balloon device (libvirt
// adds one unless the XML says model='none').
func (x *domainXML) hasBalloon() bool { return x.Balloon != nil && x.Balloon.Model != "none" }

// graphicsPort returns the TCP port of the domain's display of type typ
// ("vnc" or "spice"), and whether it has one (port "" while libvirt has
// not given it one yet, or when it listens on a unix socket).
func (x *domainXML) graphicsPort(typ string) (string, bool) {
	for _, g := range x.Graphics {
		if g.Type == typ {
			return g.Port, true
		}
	}
	return "", false
}

// blockEntries reads a domain's disks from its live XML as query-block
// would list them: qdev id, removable or not, tray, and an io-status of
// ok for the disks QEMU keeps one for (see reportsIOStatus); the source
// corrects that for a domain paused on an I/O error.
func blockEntries(desc string) ([]vmstate.BlockEntry, error) {
	x, err := readXML(desc)
	if err != nil {
		return nil, err
	}
	return x.blockEntries(), nil
}

func (x *domainXML) blockEntries() []vmstate.BlockEntry {
	var out []vmstate.BlockEntry
	for _, d := range x.Disks {
		if d.Alias.Name == "" {
			continue
		}
		e := vmstate.BlockEntry{Qdev: d.Alias.Name}
		if reportsIOStatus(d.Device, d.Target.Bus, d.Driver.ErrorPolicy, d.Driver.RErrorPolicy) {
			e.IOStatus = "ok"
		}
		if d.Device == "cdrom" || d.Device == "floppy" {
			e.Removable = true
			open := d.Target.Tray == "open"
			e.TrayOpen = &open
		}
		out = append(out, e)
	}
	return out
}

// reportsIOStatus says whether QEMU keeps an io-status (query-block's
// io-status) for a disk: the IDE, SATA, SCSI and virtio devices keep one
// when an error may stop the VM, that is with a write error policy of
// stop or enospace (libvirt's default leaves QEMU's, enospc) or a read
// error policy of stop.
func reportsIOStatus(device, bus, errorPolicy, rerrorPolicy string) bool {
	switch {
	case device != "disk" && device != "cdrom":
		return false
	case bus != "ide" && bus != "sata" && bus != "scsi" && bus != "virtio":
		return false
	}
	switch errorPolicy {
	case "", "stop", "enospace": // libvirt's name of QEMU's enospc
		return true
	}
	return rerrorPolicy == "stop"
}

// vncEvents and spiceEvents are the QMP events of libvirt's graphics
// phases on each kind of display.
var (
	vncEvents = map[libvirt.DomainEventGraphicsPhase]string{
		libvirt.DomainEventGraphicsConnect:    "VNC_CONNECTED",
		libvirt.DomainEventGraphicsInitialize: "VNC_INITIALIZED",
		libvirt.DomainEventGraphicsDisconnect: "VNC_DISCONNECTED",
	}
	// libvirt relays SPICE_CONNECTED, SPICE_INITIALIZED and
	// SPICE_DISCONNECTED of every channel, without the channel's type:
	// which channel opened a session is not known, so a libvirt domain
	// has no qmp_spice_sessions_total (see collector/metrics.go).
	spiceEvents = map[libvirt.DomainEventGraphicsPhase]string{
		libvirt.DomainEventGraphicsConnect:    "SPICE_CONNECTED",
		libvirt.DomainEventGraphicsInitialize: "SPICE_INITIALIZED",
		libvirt.DomainEventGraphicsDisconnect: "SPICE_DISCONNECTED",
	}
)

// graphicsEvent translates a graphics event with names: libvirt passes
// the client's and server's addresses, as QEMU's events have them, the
// port under portKey ("service" for VNC, "port" for SPICE).
func graphicsEvent(names map[libvirt.DomainEventGraphicsPhase]string, portKey string, m libvirt.DomainEventGraphicsMsg, now time.Time) (qmp.Event, bool) {
	name, ok := names[libvirt.DomainEventGraphicsPhase(m.Phase)]
	if !ok {
		return qmp.Event{}, false
	}
	addr := func(a libvirt.DomainEventGraphicsAddress) string {
		return fmt.Sprintf(`{"host": %s, %q: %s}`, strconv.Quote(a.Node), portKey, strconv.Quote(a.Service))
	}
	return qmp.Event{Name: name, Time: now, Data: []byte(`{"server": ` + addr(m.Local) + `, "client": ` + addr(m.Remote) + `}`)}, true
}

// translation is what one libvirt event means for its domain.
type translation struct {
	dom libvirt.Domain
	// event is the QMP event it stands for; Name is "" when none.
	event qmp.Event
	// status is the run state it leaves the domain in; "" for no change.
	status string
	// migrate: the outgoing migration's status the event tells: how
	// the one that runs ended, or none for a new QEMU.
	migrate *vmstate.MigrateInfo
	// pass is the number of a migration's pass (migration-iteration), 0
	// for other events: a migration runs, whose statistics the source
	// polls.
	pass int32
	// stopped: the domain's QEMU is gone. resync: read the domain's
	// state again (it started, or came back).
	stopped, resync bool
}

// translate turns an event from go-libvirt's SubscribeEvents into what
// it means; ok is false for an event the exporter has no use for.
func translate(msg any, now time.Time) (t translation, ok bool) {
	ev := func(name, data string) qmp.Event {
		e := qmp.Event{Name: name, Time: now}
		if data != "" {
			e.Data = []byte(data)
		}
		return e
	}
	switch m := msg.(type) {
	case *libvirt.DomainEventCallbackLifecycleMsg:
		return lifecycle(m.Msg, ev)
	case *libvirt.DomainEventCallbackRebootMsg:
		return translation{dom: m.Msg.Dom, event: ev("RESET", "")}, true
	case *libvirt.DomainEventCallbackRtcChangeMsg:
		return translation{dom: m.Msg.Dom, event: ev("RTC_CHANGE", `{"offset": `+strconv.FormatInt(m.Msg.Offset, 10)+`}`)}, true
	case *libvirt.DomainEventCallbackWatchdogMsg:
		a, known := watchdogActions[libvirt.DomainEventWatchdogAction(m.Msg.Action)]
		if !known {
			return translation{}, false
		}
		return translation{dom: m.Msg.Dom, event: ev("WATCHDOG", `{"action": "`+a+`"}`)}, true
	case *libvirt.DomainEventCallbackIOErrorReasonMsg:
		// libvirt does not say read or write; its actions are QEMU's
		// BlockErrorAction under other names.
		act, known := ioErrorActions[libvirt.DomainEventIOErrorAction(m.Msg.Action)]
		if !known {
			return translation{}, false
		}
		return translation{dom: m.Msg.Dom, event: ev("BLOCK_IO_ERROR", fmt.Sprintf(
			`{"device": "", "qom-path": %s, "operation": %q, "action": %q, "nospace": %t, "reason": %s}`,
			strconv.Quote("/machine/peripheral/"+m.Msg.DevAlias), vmstate.OperationUnknown, act, m.Msg.Reason == "enospc", strconv.Quote(m.Msg.Reason)))}, true
	case *libvirt.DomainEventCallbackTrayChangeMsg:
		open := libvirt.DomainEventTrayChangeReason(m.Msg.Reason) == libvirt.DomainEventTrayChangeOpen
		return translation{dom: m.Msg.Dom, event: ev("DEVICE_TRAY_MOVED",
			fmt.Sprintf(`{"device": "", "id": %s, "tray-open": %t}`, strconv.Quote(m.Msg.DevAlias), open))}, true
	case *libvirt.DomainEventCallbackBalloonChangeMsg:
		return translation{dom: m.Msg.Dom, event: ev("BALLOON_CHANGE", `{"actual": `+strconv.FormatUint(m.Msg.Actual*1024, 10)+`}`)}, true
	case *libvirt.DomainEventCallbackPmsuspendMsg:
		return translation{dom: m.Msg.Dom, event: ev("SUSPEND", ""), status: "suspended"}, true
	case *libvirt.DomainEventCallbackPmsuspendDiskMsg:
		return translation{dom: m.Msg.Dom, event: ev("SUSPEND_DISK", "")}, true
	case *libvirt.DomainEventCallbackPmwakeupMsg:
		return translation{dom: m.Msg.Dom, event: ev("WAKEUP", ""), status: "running"}, true
	case *libvirt.DomainEventCallbackMigrationIterationMsg:
		// QEMU's MIGRATION_PASS: the first comes as a migration starts.
		return translation{dom: m.Dom, event: ev("MIGRATION_PASS", `{"pass": `+strconv.Itoa(int(m.Iteration))+`}`), pass: max(m.Iteration, 1)}, true
	case *libvirt.DomainEventCallbackDeviceRemovedMsg:
		a := strconv.Quote(m.Msg.DevAlias)
		return translation{dom: m.Msg.Dom, event: ev("DEVICE_DELETED", `{"device": `+a+`, "path": `+strconv.Quote("/machine/peripheral/"+m.Msg.DevAlias)+`}`)}, true
	}
	return translation{}, false
}

// lifecycle translates a lifecycle event.
func lifecycle(m libvirt.DomainEventLifecycleMsg, ev func(name, data string) qmp.Event) (translation, bool) {
	t := translation{dom: m.Dom}
	switch libvirt.DomainEventType(m.Event) {
	case libvirt.DomainEventStarted:
		// A new QEMU (booted, restored, or migrated here) has no
		// outgoing migration: query-migrate would say none.
		t.resync, t.migrate = true, &vmstate.MigrateInfo{Status: "none"}
	case libvirt.DomainEventSuspended:
		t.event, t.status = ev("STOP", ""), suspendedState(libvirt.DomainEventSuspendedDetailType(m.Detail))
	case libvirt.DomainEventResumed:
		// Read again: a disk whose io-status was not known is ok now.
		t.event, t.status, t.resync = ev("RESUME", ""), "running", true
	case libvirt.DomainEventShutdown:
		// libvirt's detail says whether the guest asked (QMP's guest
		// member); QMP's reason it does not pass on.
		switch libvirt.DomainEventShutdownDetailType(m.Detail) {
		case libvirt.DomainEventShutdownGuest:
			t.event = ev("SHUTDOWN", `{"guest": true, "reason": "unknown"}`)
		case libvirt.DomainEventShutdownHost:
			t.event = ev("SHUTDOWN", `{"guest": false, "reason": "unknown"}`)
		default:
			t.event = ev("SHUTDOWN", "")
		}
		t.status = "shutdown"
	case libvirt.DomainEventPmsuspended:
		t.event, t.status = ev("SUSPEND", ""), "suspended"
	case libvirt.DomainEventCrashed:
		// libvirt has QEMU pause on a panic and applies the domain's
		// on_crash itself (a destroy then comes as a stopped event).
		if libvirt.DomainEventCrashedDetailType(m.Detail) == libvirt.DomainEventCrashedCrashloaded {
			t.event = ev("GUEST_CRASHLOADED", `{"action": "run"}`)
		} else {
			t.event, t.status = ev("GUEST_PANICKED", `{"action": "pause"}`), "guest-panicked"
		}
	case libvirt.DomainEventStopped:
		t.stopped = true
		// libvirt stops a domain saved or migrated away once QEMU has
		// completed the migration.
		switch libvirt.DomainEventStoppedDetailType(m.Detail) {
		case libvirt.DomainEventStoppedSaved, libvirt.DomainEventStoppedMigrated:
			t.migrate = &vmstate.MigrateInfo{Status: "completed"}
		}
	default:
		return t, false // defined, undefined: no QEMU behind them
	}
	return t, true
}

// migrationOut are the jobs in which QEMU migrates out: to another host,
// or into a file (a save, a dump, a snapshot's memory).
var migrationOut = map[libvirt.DomainJobOperation]bool{
	libvirt.DomainJobOperationStrMigrationOut: true,
	libvirt.DomainJobOperationStrSave:         true,
	libvirt.DomainJobOperationStrDump:         true,
	libvirt.DomainJobOperationStrSnapshot:     true,
}

// jobStatuses are QEMU's MigrationStatus of libvirt's job types.
var jobStatuses = map[libvirt.DomainJobType]string{
	libvirt.DomainJobBounded:   "active",
	libvirt.DomainJobUnbounded: "active",
	libvirt.DomainJobCompleted: "completed",
	libvirt.DomainJobFailed:    "failed",
	libvirt.DomainJobCancelled: "cancelled",
}

// migrateInfo reads libvirt's statistics of a job (virDomainGetJobStats)
// as query-migrate would report the migration; ok is false for a job that
// is not QEMU migrating out (libvirt's operation needs libvirt 3.3), and
// for a snapshot that moved no RAM (an internal one, which QEMU saves
// without migrating). A memory-only dump (operation dump, which QEMU
// writes without migrating) reads as a migration too: the source takes
// a dump for one only once its passes came (see fetch). A running job without RAM figures is QEMU setting
// the migration up. libvirt's times are milliseconds, as QEMU's; its downtime
// is the expected one while the job runs and the real one after.
func migrateInfo(typ int32, params []libvirt.TypedParam) (vmstate.MigrateInfo, bool) {
	p := make(map[string]uint64, len(params))
	for _, tp := range params {
		if v, ok := paramUint(tp.Value.I); ok {
			p[tp.Field] = v
		}
	}
	status, known := jobStatuses[libvirt.DomainJobType(typ)]
	op, hasOp := p["operation"]
	_, hasRAM := p["memory_total"]
	switch {
	case !known, !hasOp, !migrationOut[libvirt.DomainJobOperation(op)]:
		return vmstate.MigrateInfo{}, false
	case libvirt.DomainJobOperation(op) == libvirt.DomainJobOperationStrSnapshot && !hasRAM:
		return vmstate.MigrateInfo{}, false
	case status == "active" && !hasRAM:
		status = "setup" // QEMU reports RAM figures from its active state on
	}
	ms := func(name string) *float64 {
		v, ok := p[name]
		if !ok {
			return nil
		}
		f := float64(v)
		return &f
	}
	q := vmstate.MigrateInfo{Status: status, TotalTime: ms("time_elapsed"), SetupTime: ms("setup_time")}
	if status == "active" {
		q.ExpectedDowntime = ms("downtime")
	} else {
		q.Downtime = ms("downtime")
	}
	if hasRAM {
		q.RAM = &vmstate.MigrateRAM{Transferred: p["memory_processed"], Remaining: p["memory_remaining"], Total: p["memory_total"],
			DirtyPagesRate: float64(p["memory_dirty_rate"]), DirtySyncCount: p["memory_iteration"]}
	}
	return q, true
}

// runs reports whether a job's statistics are those of a migration that
// runs.
func runs(q vmstate.MigrateInfo) bool { return q.Status == "setup" || q.Status == "active" }

// paramUint is a typed parameter's value as an unsigned integer, if it is
// a non-negative integer.
func paramUint(v any) (uint64, bool) {
	switch n := v.(type) {
	case uint64:
		return n, true
	case uint32:
		return uint64(n), true
	case int64:
		return uint64(n), n >= 0
	case int32:
		return uint64(n), n >= 0
	}
	return 0, false
}

// uuidString formats a domain's UUID as libvirt and QEMU print it.
func uuidString(u libvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// qemuVersion formats ConnectGetVersion's number (major·10⁶ + minor·10³
// + micro) as qmp.Version does.
func qemuVersion(v uint64) string {
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}
