package vmstate

import (
	"bytes"
	"strings"

	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// handler says what the exporter does with an event beyond counting it:
// whether its data feeds a dedicated metric (fold, dispatched by
// foldData), and which queries to run after it because the event alone
// cannot tell the exact state.
type handler struct {
	fold bool
	Need Need
}

// handlers covers every event of QEMU's event documentation and of the
// QAPI schema up to 9.x that feeds more than qmp_events_total. Events
// without an entry (ACPI_DEVICE_OST, NIC_RX_FILTER_CHANGED, POWERDOWN,
// GUEST_PVSHUTDOWN, NETDEV_*, ...) are counted and need nothing more.
var handlers = map[string]handler{
	// Run state. The event gives a hint; query-status says exactly which
	// state (a STOP may mean paused, io-error, guest-panicked, ...).
	// RESUME says it exactly: running. A migration stops the VM for its
	// last pass: with the events capability off, the STOP (and the RESUME
	// of a failed or cancelled one) are the only live signs of it, so
	// foldData adds query-migrate when a migration may be running
	// unannounced (see migrationMayRun).
	"STOP":         {true, NeedStatus},
	"RESUME":       {true, 0},
	"SUSPEND":      {true, NeedStatus},
	"SUSPEND_DISK": {false, NeedStatus},
	"WAKEUP":       {true, NeedStatus},
	"SHUTDOWN":     {true, NeedStatus},
	"RESET":        {true, 0}, // foldReset asks for query-status when needed

	// Guest failures.
	"GUEST_PANICKED":    {true, NeedStatus},
	"GUEST_CRASHLOADED": {true, 0},
	// A watchdog's action brings its own events when it changes the run
	// state: RESET, SHUTDOWN, POWERDOWN, or the STOP of pause and debug.
	"WATCHDOG":       {true, 0},
	"MEMORY_FAILURE": {true, 0},

	// Block devices.
	"BLOCK_IO_ERROR":        {true, 0}, // foldIOError asks when the action stops the VM
	"BLOCK_IMAGE_CORRUPTED": {true, 0},
	"BLOCK_WRITE_THRESHOLD": {true, 0},
	"QUORUM_FAILURE":        {true, 0},
	"QUORUM_REPORT_BAD":     {true, 0},
	"DEVICE_TRAY_MOVED":     {true, 0},
	"DEVICE_DELETED":        {true, 0},

	// Jobs. The ends, READY and PENDING carry all the exporter keeps of
	// the job (id, type, progress); an error may change its status.
	"BLOCK_JOB_COMPLETED": {true, 0},
	"BLOCK_JOB_CANCELLED": {true, 0},
	"BLOCK_JOB_ERROR":     {true, NeedJobs},
	"BLOCK_JOB_READY":     {true, 0},
	"BLOCK_JOB_PENDING":   {true, 0},
	"JOB_STATUS_CHANGE":   {true, 0},

	// Memory.
	"BALLOON_CHANGE":           {true, 0},
	"HV_BALLOON_STATUS_REPORT": {true, 0},

	// Migration. The events only come when a management tool turned the
	// "events" migration capability on; the watcher polls query-migrate
	// while a migration runs either way. foldMigration asks for the
	// queries a status needs.
	"MIGRATION":      {true, 0},
	"MIGRATION_PASS": {true, 0},

	// Consoles.
	"VNC_CONNECTED":      {true, 0},
	"VNC_INITIALIZED":    {true, 0},
	"VNC_DISCONNECTED":   {true, 0},
	"SPICE_CONNECTED":    {true, 0},
	"SPICE_INITIALIZED":  {true, 0},
	"SPICE_DISCONNECTED": {true, 0},

	// Other devices.
	"RTC_CHANGE":      {true, 0},
	"VSERPORT_CHANGE": {true, 0},
	"DUMP_COMPLETED":  {true, 0},
}

// foldData dispatches an event's data to its fold function. A switch
// rather than a table of function values keeps f on the caller's stack:
// the common event path does not allocate.
func (s *State) foldData(name string, f *qmp.Fields) (Need, bool) {
	switch name {
	case "STOP":
		s.Status = "paused"
		if s.migrationMayRun() {
			return NeedMigrate, true
		}
	case "RESUME":
		s.Status = "running" // QEMU's vm_start: always "running"
		n := s.resetIOStatus()
		if s.migrationMayRun() {
			n |= NeedMigrate
		}
		return n, true
	case "WAKEUP":
		s.Status = "running"
	case "SUSPEND":
		s.Status = "suspended"
	case "SHUTDOWN":
		return foldShutdown(s, f)
	case "RESET":
		return foldReset(s, f)
	case "GUEST_PANICKED":
		return foldPanic(s, f)
	case "GUEST_CRASHLOADED":
		return foldCrashload(s, f)
	case "WATCHDOG":
		return foldWatchdog(s, f)
	case "MEMORY_FAILURE":
		return foldMemoryFailure(s, f)
	case "BLOCK_IO_ERROR":
		return foldIOError(s, f)
	case "BLOCK_IMAGE_CORRUPTED":
		return foldCorrupted(s, f)
	case "BLOCK_WRITE_THRESHOLD":
		return foldWriteThreshold(s, f)
	case "QUORUM_FAILURE":
		return foldQuorumFailure(s, f)
	case "QUORUM_REPORT_BAD":
		return foldQuorumBad(s, f)
	case "DEVICE_TRAY_MOVED":
		return foldTray(s, f)
	case "DEVICE_DELETED":
		return foldDeviceDeleted(s, f)
	case "BLOCK_JOB_COMPLETED":
		return foldJobCompleted(s, f)
	case "BLOCK_JOB_CANCELLED":
		return foldJobCancelled(s, f)
	case "BLOCK_JOB_ERROR":
		return foldJobError(s, f)
	case "BLOCK_JOB_READY":
		return foldJobProgress(s, f, "ready")
	case "BLOCK_JOB_PENDING":
		return foldJobProgress(s, f, "pending")
	case "JOB_STATUS_CHANGE":
		return foldJobStatus(s, f)
	case "BALLOON_CHANGE":
		return foldBalloon(s, f)
	case "HV_BALLOON_STATUS_REPORT":
		return foldHVBalloon(s, f)
	case "MIGRATION":
		return foldMigration(s, f)
	case "MIGRATION_PASS":
		return foldMigrationPass(s, f)
	case "VNC_CONNECTED":
		return vncConnected(s, f)
	case "VNC_INITIALIZED":
		return vncInitialized(s, f)
	case "VNC_DISCONNECTED":
		return vncDisconnected(s, f)
	case "SPICE_CONNECTED":
		return spiceConnected(s, f)
	case "SPICE_INITIALIZED":
		return spiceInitialized(s, f)
	case "SPICE_DISCONNECTED":
		return spiceDisconnected(s, f)
	case "RTC_CHANGE":
		return foldRTC(s, f)
	case "VSERPORT_CHANGE":
		return foldVserport(s, f)
	case "DUMP_COMPLETED":
		return foldDump(s, f)
	}
	return 0, true
}

// enumLabel returns member key as a label value if it looks like a QAPI
// enum value. It allocates only for a value not in known.
func enumLabel(f *qmp.Fields, key string, known []string) (string, bool) {
	b, ok := f.StringBytes(key)
	if !ok {
		return "", false
	}
	if i := indexOf(known, b); i >= 0 {
		return known[i], true
	}
	if !validEnum(b) {
		return "", false
	}
	return string(b), true
}

var shutdownCauses = []string{
	"none", "host-error", "host-qmp-quit", "host-qmp-system-reset",
	"host-signal", "host-ui", "guest-shutdown", "guest-reset", "guest-panic",
	"subsystem-reset", "snapshot-load",
}

// guestReasonOf reads SHUTDOWN's and RESET's members in each shape QEMU
// has sent: no data before 2.10, guest alone from 2.10 (reason came in
// 4.0), both since. A member the VM's QEMU did not have yet is no data
// error: the reason is then unknown, and so is whether the guest asked
// before 2.10, which counts as guest=false. A member of the wrong type is
// an error, and so is data without guest, which no QEMU sends.
func guestReasonOf(f *qmp.Fields) (GuestReason, bool) {
	k := GuestReason{Reason: "unknown"}
	if f.Len() == 0 {
		return k, true
	}
	g, ok := f.Bool("guest")
	if !ok {
		return k, false
	}
	k.Guest = g
	if !f.Has("reason") {
		return k, true
	}
	r, ok := enumLabel(f, "reason", shutdownCauses)
	if !ok {
		return k, false
	}
	k.Reason = r
	return k, true
}

func foldShutdown(s *State, f *qmp.Fields) (Need, bool) {
	k, ok := guestReasonOf(f)
	countKey(&s.Shutdowns, k)
	s.Status = "shutdown"
	return 0, ok
}

// foldReset counts the reset. A reset leaves a running VM running, so
// query-status is only re-read when the VM was in another state (a reset
// takes a VM in "shutdown" to "prelaunch", for example).
func foldReset(s *State, f *qmp.Fields) (Need, bool) {
	k, ok := guestReasonOf(f)
	countKey(&s.Resets, k)
	if s.Status == "running" {
		return 0, ok
	}
	return NeedStatus, ok
}

var panicInfoTypes = []string{"none", "hyper-v", "s390", "tdx"}

// panicKey reads GUEST_PANICKED's and GUEST_CRASHLOADED's action and the
// type of the optional info union (none when absent).
func panicKey(f *qmp.Fields) ([2]string, bool) {
	action, ok := enumLabel(f, "action", panicActions)
	if !ok {
		return [2]string{}, false
	}
	info := "none"
	if raw := f.Raw("info"); raw != nil {
		var inner qmp.Fields
		if qmp.ParseFields(raw, &inner) != nil {
			return [2]string{action, "none"}, false
		}
		if t, ok := enumLabel(&inner, "type", panicInfoTypes); ok {
			info = t
		}
	}
	return [2]string{action, info}, true
}

func foldPanic(s *State, f *qmp.Fields) (Need, bool) {
	k, ok := panicKey(f)
	if !ok {
		return 0, false
	}
	s.countPanic(k)
	if k[0] == "pause" {
		s.Status = "guest-panicked"
	}
	return 0, true
}

func foldCrashload(s *State, f *qmp.Fields) (Need, bool) {
	k, ok := panicKey(f)
	if !ok {
		return 0, false
	}
	countKey(&s.Crashloads, k[0])
	return 0, true
}

func foldWatchdog(s *State, f *qmp.Fields) (Need, bool) {
	a, ok := enumLabel(f, "action", watchdogActions)
	if !ok {
		return 0, false
	}
	s.countWatchdog(a)
	if a == "pause" {
		s.Status = "watchdog"
	}
	return 0, true
}

var (
	memFailRecipients = []string{"hypervisor", "guest"}
	memFailActions    = []string{"ignore", "inject", "fatal", "reset"}
)

func foldMemoryFailure(s *State, f *qmp.Fields) (Need, bool) {
	r, rok := enumLabel(f, "recipient", memFailRecipients)
	a, aok := enumLabel(f, "action", memFailActions)
	if !rok || !aok {
		return 0, false
	}
	countKey(&s.MemoryFailures, [2]string{r, a})
	return 0, true
}

// peripheralPrefix is the QOM path under which QEMU puts devices that
// have an id.
var peripheralPrefix = []byte("/machine/peripheral/")

// qdevLabel turns a qdev id or QOM path into the device label: the qdev id
// when the path is just /machine/peripheral/<id>, the path otherwise (what
// query-block reports as "qdev" for devices without an id).
func qdevLabel(b []byte) string {
	s := string(b)
	if rest, ok := strings.CutPrefix(s, string(peripheralPrefix)); ok && rest != "" && !strings.Contains(rest, "/") {
		s = rest
	}
	return CleanLabel(s)
}

// resolveDevice finds the device an event is about, in order of
// precision: the qdev id or QOM path (members qdevKeys), the BlockBackend
// name ("device", empty for anonymous backends), the node name. It returns
// the device state (created if needed and allowed) and whether a
// query-block refresh would help because a name was not mapped yet. An
// auto-generated node name (#block123) never becomes a label; such an
// event is counted under device "unknown".
func (s *State) resolveDevice(f *qmp.Fields, qdevKeys ...string) (*BlockDev, Need) {
	for _, k := range qdevKeys {
		if b, ok := f.StringBytes(k); ok && len(b) > 0 {
			if d := s.Devices[string(b)]; d != nil {
				return d, 0
			}
			if rest, ok := bytes.CutPrefix(b, peripheralPrefix); ok {
				if d := s.Devices[string(rest)]; d != nil {
					return d, 0
				}
			}
			return s.device(qdevLabel(b)), NeedBlock
		}
	}
	if b, ok := f.StringBytes("device"); ok && len(b) > 0 {
		if label, ok := s.bbToDev[string(b)]; ok {
			return s.device(label), 0
		}
		return s.device(CleanLabel(string(b))), NeedBlock
	}
	for _, k := range []string{"node-name", "reference"} {
		if b, ok := f.StringBytes(k); ok && len(b) > 0 {
			if label, ok := s.nodeToDev[string(b)]; ok {
				return s.device(label), 0
			}
			if b[0] == '#' {
				return s.device("unknown"), NeedBlock
			}
			return s.device(CleanLabel(string(b))), NeedBlock
		}
	}
	return s.device("unknown"), 0
}

// device returns the state of device label, creating it unless the VM
// already has maxDevices; then a shared overflow entry absorbs the counts
// (not exported) and the drop is counted.
func (s *State) device(label string) *BlockDev {
	if d := s.Devices[label]; d != nil {
		return d
	}
	if len(s.Devices) >= maxDevices {
		s.drop("device")
		return newBlockDev()
	}
	d := newBlockDev()
	if s.Devices == nil {
		s.Devices = make(map[string]*BlockDev)
	}
	s.Devices[label] = d
	return d
}

func foldIOError(s *State, f *qmp.Fields) (Need, bool) {
	op, _ := f.StringBytes("operation")
	act, _ := f.StringBytes("action")
	oi, ai := indexOf(IOOperations, op), indexOf(IOActions, act)
	if oi < 0 && string(op) == OperationUnknown {
		oi = len(IOOperations)
	}
	if oi < 0 || ai < 0 {
		return 0, false
	}
	d, n := s.resolveDevice(f, "qom-path")
	d.IOErrors[oi][ai]++
	if ns, _ := f.Bool("nospace"); ns {
		d.Nospace++
	}
	if ai == 2 { // stop: the VM pauses with RunState io-error, and the
		// device's io-status changes
		s.Status = "io-error"
		n |= NeedStatus | NeedBlock
		d.setIOError(f)
	}
	return n, true
}

// setIOError records a stopping error in the device's io-status as QEMU
// does: the first error since the status was last ok sets it (nospace
// for ENOSPC, failed for any other), later ones leave it. A status not
// known stays unknown: it may hold an earlier error.
func (d *BlockDev) setIOError(f *qmp.Fields) {
	if d.IOStatus != "ok" {
		return
	}
	d.IOStatus = "failed"
	if ns, _ := f.Bool("nospace"); ns {
		d.IOStatus = "nospace"
	}
}

// resetIOStatus applies a RESUME to the devices' io-status: QEMU's cont
// sets every device's status back to ok before it starts the VM. It asks
// for query-block when a status changed, which tells for sure (a RESUME
// that was not a cont leaves the statuses).
func (s *State) resetIOStatus() Need {
	var n Need
	for _, d := range s.Devices {
		if d.IOStatus == "failed" || d.IOStatus == "nospace" {
			d.IOStatus = "ok"
			n = NeedBlock
		}
	}
	return n
}

func foldCorrupted(s *State, f *qmp.Fields) (Need, bool) {
	d, n := s.resolveDevice(f)
	d.Corruptions++
	// fatal arrived in QEMU 2.2; older reports say nothing about it.
	if fatal, ok := f.Bool("fatal"); ok {
		if fatal {
			d.CorruptFatal = 1
		} else if d.CorruptFatal < 0 {
			d.CorruptFatal = 0
		}
	}
	return n, f.Has("msg")
}

func foldWriteThreshold(s *State, f *qmp.Fields) (Need, bool) {
	d, n := s.resolveDevice(f)
	d.ThresholdHits++
	return n, f.Has("node-name")
}

func foldQuorumFailure(s *State, f *qmp.Fields) (Need, bool) {
	d, n := s.resolveDevice(f)
	d.QuorumFailures++
	return n, f.Has("reference") || f.Has("node-name")
}

// foldQuorumBad counts a bad child by operation. QEMU before 2.6 sent no
// type, for failed reads and writes alike: those count under operation
// unknown, the last slot of QuorumBad.
func foldQuorumBad(s *State, f *qmp.Fields) (Need, bool) {
	d, n := s.resolveDevice(f)
	op, _ := f.StringBytes("type")
	i := indexOf(QuorumOps, op)
	if i < 0 {
		if f.Has("type") {
			return n, false
		}
		i = len(QuorumOps)
	}
	d.QuorumBad[i]++
	return n, true
}

// foldTray records a tray's position. The guest device is in id since
// QEMU 2.8; before, only the BlockBackend name says which device moved,
// and when it is empty (an anonymous BlockBackend) nothing does: no
// device is made up for it. (Nor can query-block tell: it names guest
// devices only since 2.10.)
func foldTray(s *State, f *qmp.Fields) (Need, bool) {
	open, ok := f.Bool("tray-open")
	if !ok {
		return 0, false
	}
	id, _ := f.StringBytes("id")
	bb, _ := f.StringBytes("device")
	if len(id) == 0 && len(bb) == 0 {
		return 0, f.Has("device")
	}
	d, n := s.resolveDevice(f, "id")
	if open {
		d.Tray = 1
	} else {
		d.Tray = 0
	}
	return n, true
}

// foldDeviceDeleted forgets a block device that was removed (its series go
// with it) and re-reads query-block to update the name maps; other devices
// (a USB keyboard, a NIC) need nothing more than the count.
func foldDeviceDeleted(s *State, f *qmp.Fields) (Need, bool) {
	s.DeviceDeletions++
	var n Need
	for _, k := range []string{"device", "path"} {
		if b, ok := f.StringBytes(k); ok && len(b) > 0 {
			label := qdevLabel(b)
			if _, ok := s.Devices[label]; ok {
				delete(s.Devices, label)
				n = NeedBlock
			}
		}
	}
	return n, f.Has("path")
}

// Jobs. BLOCK_JOB_* events name the job in "device" (its job id, which
// defaults to the device name); JOB_STATUS_CHANGE and BLOCK_JOB_PENDING
// call it "id".

var jobTypes = []string{"commit", "stream", "mirror", "backup", "create", "amend", "snapshot-load", "snapshot-save", "snapshot-delete"}

func jobID(f *qmp.Fields) ([]byte, bool) {
	if b, ok := f.StringBytes("device"); ok && len(b) > 0 {
		return b, true
	}
	if b, ok := f.StringBytes("id"); ok && len(b) > 0 {
		return b, true
	}
	return nil, false
}

// job returns the job's state, creating it within the bound, or nil.
func (s *State) job(id []byte) *Job {
	if j := s.Jobs[string(id)]; j != nil {
		return j
	}
	if len(s.Jobs) >= maxDevices {
		s.drop("job")
		return nil
	}
	j := &Job{}
	if s.Jobs == nil {
		s.Jobs = make(map[string]*Job)
	}
	s.Jobs[CleanLabel(string(id))] = j
	return j
}

// foldJobEnd counts a finished job by its type and result, and forgets it.
func (s *State) jobEnded(f *qmp.Fields, result string) bool {
	id, idok := jobID(f)
	typ, tok := enumLabel(f, "type", jobTypes)
	if !tok {
		if j := s.Jobs[string(id)]; j != nil && j.Type != "" {
			typ, tok = j.Type, true
		} else {
			typ = "unknown"
		}
	}
	countKey(&s.JobsDone, [2]string{typ, result})
	if idok {
		delete(s.Jobs, string(id))
		if tok {
			s.endedJob = [2]string{string(id), typ}
		}
	}
	return idok && tok
}

func foldJobCompleted(s *State, f *qmp.Fields) (Need, bool) {
	result := "completed"
	if f.Has("error") {
		result = "failed"
	}
	return 0, s.jobEnded(f, result)
}

func foldJobCancelled(s *State, f *qmp.Fields) (Need, bool) {
	return 0, s.jobEnded(f, "cancelled")
}

func foldJobError(s *State, f *qmp.Fields) (Need, bool) {
	op, _ := f.StringBytes("operation")
	act, _ := f.StringBytes("action")
	oi, ai := indexOf(IOOperations, op), indexOf(IOActions, act)
	if oi < 0 || ai < 0 {
		return 0, false
	}
	s.JobErrors[oi][ai]++
	return 0, true
}

func foldJobProgress(s *State, f *qmp.Fields, status string) (Need, bool) {
	id, ok := jobID(f)
	if !ok {
		return 0, false
	}
	j := s.job(id)
	if j == nil {
		return 0, true
	}
	j.Status = status
	if t, ok := enumLabel(f, "type", jobTypes); ok {
		j.Type = t
	}
	if v, ok := f.Uint("offset"); ok {
		j.Progress = v
	}
	if v, ok := f.Uint("len"); ok {
		j.Length = v
	}
	return 0, true
}

var jobStatuses = []string{"undefined", "created", "running", "paused", "ready", "standby", "waiting", "pending", "aborting", "concluded", "null"}

func foldJobStatus(s *State, f *qmp.Fields) (Need, bool) {
	id, iok := jobID(f)
	st, sok := enumLabel(f, "status", jobStatuses)
	if !iok || !sok {
		return 0, false
	}
	if st == "null" {
		delete(s.Jobs, string(id))
		return 0, true
	}
	j := s.Jobs[string(id)]
	var n Need
	if j == nil {
		if j = s.job(id); j == nil {
			return 0, true
		}
		if s.endedJob[0] == string(id) {
			// The JOB_STATUS_CHANGE (concluded) that follows the end
			// event of a job just forgotten: its type is known.
			j.Type = s.endedJob[1]
		} else {
			n = NeedJobs // learn its type
		}
	}
	j.Status = st
	return n, true
}

func foldBalloon(s *State, f *qmp.Fields) (Need, bool) {
	v, ok := f.Uint("actual")
	if ok {
		s.Balloon, s.BalloonOK = v, true
	}
	return 0, ok
}

func foldHVBalloon(s *State, f *qmp.Fields) (Need, bool) {
	c, cok := f.Uint("committed")
	a, aok := f.Uint("available")
	if cok && aok {
		s.HVBalloon, s.HVBalloonOK = [2]uint64{c, a}, true
	}
	return 0, cok && aok
}

// foldMigration applies a MIGRATION event. The status is the event's;
// query-migrate adds the figures of a migration that starts (and the
// watcher then polls it while it runs) and the final ones of a migration
// that ends, when query-status also tells the run state it left (a
// completed migration leaves the VM in postmigrate, which no event
// announces). Statuses in between need nothing.
func foldMigration(s *State, f *qmp.Fields) (Need, bool) {
	st, ok := enumLabel(f, "status", MigrationStates)
	if !ok {
		return NeedMigrate | NeedStatus, false
	}
	was := s.Migration.InProgress()
	s.Migration.eventsSeen = true
	s.migrationEvent(st)
	switch {
	case migrationEnded(st):
		return NeedMigrate | NeedStatus, true
	case !was && s.Migration.InProgress():
		return NeedMigrate, true
	}
	return 0, true
}

// migrationMayRun reports whether a migration may be running that this
// state does not know of, or whose state is not known: no MIGRATION event
// has shown this session that the events capability is on, or one is in
// progress.
func (s *State) migrationMayRun() bool {
	return !s.Migration.eventsSeen || !s.Migration.Known || s.Migration.InProgress()
}

// foldMigration applies a MIGRATION event. Events are live, so a terminal
// status in an event is an end happening now: it is counted unless this
// migration's end was already counted.
func (s *State) migrationEvent(st string) {
	if migrationEnded(st) {
		if !s.Migration.endCounted {
			s.countMigrationEnd(st)
			s.Migration.eventEnd = true
		}
	} else {
		s.Migration.endCounted, s.Migration.eventEnd = false, false
	}
	s.setMigrationStatus(st)
}

func migrationEnded(st string) bool { return indexOf(MigrationResults, []byte(st)) >= 0 }

func (s *State) countMigrationEnd(st string) {
	s.MigrationEnds[indexOf(MigrationResults, []byte(st))]++
	s.Migration.endCounted = true
}

// setMigrationStatus records the status; a new migration (setup after
// anything but an in-progress state) starts with fresh figures.
func (s *State) setMigrationStatus(st string) {
	if st == "setup" && !s.Migration.InProgress() {
		s.Migration = Migration{endKey: s.Migration.endKey, baseline: s.Migration.baseline, eventsSeen: s.Migration.eventsSeen,
			ExpectedDowntime: -1, TotalTime: -1, Downtime: -1, SetupTime: -1}
	}
	s.Migration.Known = true
	s.Migration.Status = st
}

func foldMigrationPass(s *State, f *qmp.Fields) (Need, bool) {
	p, ok := f.Uint("pass")
	if ok {
		s.Migration.Pass = p
	}
	return 0, ok
}

// clientKey writes the key of a VNC or SPICE client connection (its
// address) into buf and returns it; the map operations that use it as
// string(key) do not allocate, except when a client is added.
func clientKey(buf []byte, f *qmp.Fields, portKey string) ([]byte, bool) {
	raw := f.Raw("client")
	if raw == nil {
		return buf[:0], false
	}
	var c qmp.Fields
	if qmp.ParseFields(raw, &c) != nil {
		return buf[:0], false
	}
	host, _ := c.StringBytes("host")
	port, _ := c.StringBytes(portKey)
	key := append(append(append(buf[:0], host...), ' '), port...)
	return key, true
}

func (d *Display) connected(key []byte) {
	d.Connections++
	d.Clients++
	if len(d.pending) < maxPendingClients {
		if d.pending == nil {
			d.pending = make(map[string]struct{})
		}
		d.pending[string(key)] = struct{}{}
	}
}

func (d *Display) initialized(key []byte, session bool) {
	delete(d.pending, string(key))
	if session {
		d.Sessions++
	}
}

func (d *Display) disconnected(key []byte) {
	if _, ok := d.pending[string(key)]; ok {
		d.Failed++
		delete(d.pending, string(key))
	}
	if d.Clients > 0 {
		d.Clients--
	}
}

func vncConnected(s *State, f *qmp.Fields) (Need, bool) {
	var buf [64]byte
	k, ok := clientKey(buf[:], f, "service")
	s.VNC.connected(k)
	return 0, ok
}

func vncInitialized(s *State, f *qmp.Fields) (Need, bool) {
	var buf [64]byte
	k, ok := clientKey(buf[:], f, "service")
	s.VNC.initialized(k, true)
	return 0, ok
}

func vncDisconnected(s *State, f *qmp.Fields) (Need, bool) {
	var buf [64]byte
	k, ok := clientKey(buf[:], f, "service")
	s.VNC.disconnected(k)
	return 0, ok
}

func spiceConnected(s *State, f *qmp.Fields) (Need, bool) {
	var buf [64]byte
	k, ok := clientKey(buf[:], f, "port")
	s.Spice.connected(k)
	return 0, ok
}

// spiceInitialized counts a session when its main channel (channel-type
// 1) is up; a SPICE client opens several channels per session.
func spiceInitialized(s *State, f *qmp.Fields) (Need, bool) {
	var buf [64]byte
	k, ok := clientKey(buf[:], f, "port")
	main := false
	if raw := f.Raw("client"); raw != nil {
		var c qmp.Fields
		if qmp.ParseFields(raw, &c) == nil {
			t, _ := c.Int("channel-type")
			main = t == 1
		}
	}
	s.Spice.initialized(k, main)
	return 0, ok
}

func spiceDisconnected(s *State, f *qmp.Fields) (Need, bool) {
	var buf [64]byte
	k, ok := clientKey(buf[:], f, "port")
	s.Spice.disconnected(k)
	return 0, ok
}

func foldRTC(s *State, f *qmp.Fields) (Need, bool) {
	off, ok := f.Int("offset")
	if ok {
		s.RTCOffset, s.RTCKnown = off, true
	}
	return 0, ok
}

func foldVserport(s *State, f *qmp.Fields) (Need, bool) {
	id, iok := f.StringBytes("id")
	open, ook := f.Bool("open")
	if !iok || !ook || len(id) == 0 {
		return 0, false
	}
	if _, seen := s.Vserports[string(id)]; !seen && len(s.Vserports) >= maxDevices {
		s.drop("vserport")
		return 0, true
	}
	if s.Vserports == nil {
		s.Vserports = make(map[string]bool)
	}
	s.Vserports[CleanLabel(string(id))] = open
	return 0, true
}

func foldDump(s *State, f *qmp.Fields) (Need, bool) {
	raw := f.Raw("result")
	var r qmp.Fields
	if raw == nil || qmp.ParseFields(raw, &r) != nil {
		return 0, false
	}
	st, _ := r.StringBytes("status")
	switch {
	case f.Has("error") || string(st) == "failed":
		s.Dumps[1]++
	case string(st) == "completed":
		s.Dumps[0]++
	default:
		return 0, false
	}
	return 0, true
}
