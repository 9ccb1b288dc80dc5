package collector

import "github.com/prometheus/client_golang/prometheus"

// metricDef documents one metric: everything the README's metrics table
// shows comes from here, and the Desc used by Describe and Collect is
// built from the same values, so the table cannot drift from the code.
type metricDef struct {
	name   string
	typ    string // "gauge" or "counter"
	labels []string
	source string // the QMP events and commands it is built from
	help   string
	desc   *prometheus.Desc
	// textIndex is the metric's place in textFamilies.
	textIndex int
}

func def(name, typ, source, help string, labels ...string) *metricDef {
	return &metricDef{name: name, typ: typ, labels: labels, source: source, help: help,
		desc: prometheus.NewDesc(name, help, labels, nil)}
}

// rateLimitNote is appended to the HELP of counters fed by events QEMU
// rate-limits.
const rateLimitNote = " QEMU rate-limits some events (BALLOON_CHANGE, WATCHDOG, RTC_CHANGE, QUORUM_*, VSERPORT_CHANGE, and on newer versions BLOCK_IO_ERROR and MEMORY_DEVICE_SIZE_CHANGE) to one per second, keeping the last, so for those this counts reports, not occurrences."

var (
	mUp = def("qmp_up", "gauge", "session state; query-status, query-name, query-uuid, query-version",
		"Whether the QMP session to the VM is established and its initial sync (query-status, query-name, query-uuid, query-version) succeeded (1) or not (0).",
		"vm")
	mVMStatus = def("qmp_vm_status", "gauge", "query-status; STOP, RESUME, SHUTDOWN, SUSPEND, WAKEUP",
		"The VM's run state as reported by query-status and followed through STOP, RESUME, SHUTDOWN, SUSPEND and WAKEUP events: 1 for the current state, 0 for every other QEMU RunState; all 0 while the session is down.",
		"vm", "status")
	mVMInfo = def("qmp_vm_info", "gauge", "query-uuid, query-version",
		"Identity of the VM from query-uuid and query-version; always 1.",
		"vm", "uuid", "qemu_version", "package")
	mEvents = def("qmp_events_total", "counter", "every event",
		"QMP events observed by this exporter, by QEMU's event name. Counts survive reconnects; events QEMU emitted while no session was up are not seen."+rateLimitNote,
		"vm", "event")
	mEventsUnlabelled = def("qmp_events_unlabelled_total", "counter", "every event",
		"QMP events not counted in qmp_events_total because their name was not a valid QMP event name or the VM had already reported 128 distinct names.",
		"vm")
	mLastEvent = def("qmp_last_event_timestamp_seconds", "gauge", "every event (its timestamp)",
		"QEMU's own timestamp of the latest QMP event of each name observed by this exporter.",
		"vm", "event")
	mAttempts = def("qmp_connection_attempts_total", "counter", "session state",
		"Attempts to open a QMP session (connect, handshake, initial sync) to the VM's monitor.",
		"vm")
	mFailures = def("qmp_connection_failures_total", "counter", "session state",
		"QMP session attempts that failed before the session was established (refused or missing socket, no greeting, failed handshake or sync).",
		"vm")
	mProtocolErrors = def("qmp_protocol_errors_total", "counter", "session state",
		"Messages from the VM's monitor that were dropped because they were malformed JSON, replies with an unknown id, or neither reply nor event.",
		"vm")
	mEventDataErrors = def("qmp_event_data_errors_total", "counter", "every event",
		"QMP events whose data lacked a member the event must carry or was not a JSON object; the event is still counted in qmp_events_total.",
		"vm")
	mCommandTimeouts = def("qmp_command_timeouts_total", "counter", "session state",
		"Queries the VM did not answer within --qmp.command-timeout; each one drops the session as hung.",
		"vm")
	mDropped = def("qmp_dropped_label_sets_total", "counter", "all per-object metrics",
		"Objects (block devices, jobs, serial ports) not given their own series because the VM already had 64 of that kind.",
		"vm", "kind")

	// Guest.
	mShutdowns = def("qmp_shutdowns_total", "counter", "SHUTDOWN",
		"SHUTDOWN events by whether the guest caused them and QEMU's ShutdownCause (reason unknown for QEMU before 4.0).",
		"vm", "guest", "reason")
	mResets = def("qmp_resets_total", "counter", "RESET",
		"RESET events by whether the guest caused them and QEMU's ShutdownCause. A watchdog reset is reported by QEMU as guest=true, reason=guest-reset.",
		"vm", "guest", "reason")
	mPanics = def("qmp_guest_panics_total", "counter", "GUEST_PANICKED",
		"Guest panics reported by a pvpanic, Hyper-V or s390 panic device (GUEST_PANICKED), by the action QEMU took and the type of panic information the guest gave (none when it gave none).",
		"vm", "action", "info")
	mCrashloads = def("qmp_guest_crashloads_total", "counter", "GUEST_CRASHLOADED",
		"Guest panics after which the guest loaded a crash kernel (GUEST_CRASHLOADED), by action.",
		"vm", "action")
	mWatchdog = def("qmp_watchdog_actions_total", "counter", "WATCHDOG",
		"Watchdog expirations (WATCHDOG), by the action QEMU took."+rateLimitNote,
		"vm", "action")
	mMemoryFailures = def("qmp_memory_failures_total", "counter", "MEMORY_FAILURE",
		"Hardware memory errors (MEMORY_FAILURE), by who received them and the action taken.",
		"vm", "recipient", "action")
	mRTCOffset = def("qmp_rtc_offset_seconds", "gauge", "RTC_CHANGE",
		"Offset of the guest's real-time clock from the host's, as of the last RTC_CHANGE; absent until the guest sets its clock.",
		"vm")
	mVserport = def("qmp_vserport_open", "gauge", "VSERPORT_CHANGE",
		"Whether the guest has the virtio-serial port open (1) or closed (0), as of its last VSERPORT_CHANGE.",
		"vm", "port")
	mDumps = def("qmp_dumps_total", "counter", "DUMP_COMPLETED",
		"Guest memory dumps finished (DUMP_COMPLETED), by result.",
		"vm", "result")
	mDeviceDeletions = def("qmp_device_deletions_total", "counter", "DEVICE_DELETED",
		"Devices whose removal completed (DEVICE_DELETED).",
		"vm")

	// Block devices; the device label is the guest device's qdev id, or
	// its QOM path when it has none.
	mIOErrors = def("qmp_block_io_errors_total", "counter", "BLOCK_IO_ERROR",
		"Block I/O errors (BLOCK_IO_ERROR) by guest device, operation and the action QEMU took (stop pauses the VM in io-error)."+rateLimitNote,
		"vm", "device", "operation", "action")
	mNospace = def("qmp_block_io_nospace_errors_total", "counter", "BLOCK_IO_ERROR",
		"Block I/O errors caused by the host running out of space (BLOCK_IO_ERROR with nospace), by guest device.",
		"vm", "device")
	mIOStatus = def("qmp_block_io_status", "gauge", "query-block",
		"The device's I/O status from query-block (ok, failed, nospace); present for devices with werror/rerror set to stop or enospc.",
		"vm", "device", "status")
	mTray = def("qmp_tray_open", "gauge", "DEVICE_TRAY_MOVED, query-block",
		"Whether a removable device's tray is open (1) or closed (0).",
		"vm", "device")
	mCorruptions = def("qmp_block_image_corruptions_total", "counter", "BLOCK_IMAGE_CORRUPTED",
		"Times an image was marked corrupt (BLOCK_IMAGE_CORRUPTED), by guest device.",
		"vm", "device")
	mCorruptFatal = def("qmp_block_image_corrupt_fatal", "gauge", "BLOCK_IMAGE_CORRUPTED",
		"Whether a corruption report for the device was fatal (1: the image is unusable until repaired) or every report so far was not (0); absent before the first report.",
		"vm", "device")
	mThreshold = def("qmp_block_write_threshold_hits_total", "counter", "BLOCK_WRITE_THRESHOLD",
		"Write thresholds exceeded (BLOCK_WRITE_THRESHOLD), by device.",
		"vm", "device")
	mQuorumFailures = def("qmp_block_quorum_failures_total", "counter", "QUORUM_FAILURE",
		"Quorum failures (QUORUM_FAILURE), by device."+rateLimitNote,
		"vm", "device")
	mQuorumBad = def("qmp_block_quorum_bad_reports_total", "counter", "QUORUM_REPORT_BAD",
		"Quorum children that returned bad data or failed (QUORUM_REPORT_BAD), by device and operation."+rateLimitNote,
		"vm", "device", "operation")

	// Jobs.
	mJobs = def("qmp_block_jobs", "gauge", "query-jobs, JOB_STATUS_CHANGE, BLOCK_JOB_*",
		"Jobs (mirror, commit, stream, backup, ...) that exist now, by type and status.",
		"vm", "type", "status")
	mJobProgress = def("qmp_block_job_progress_bytes", "gauge", "query-jobs, BLOCK_JOB_READY",
		"Work a job has done (current-progress; bytes for block jobs).",
		"vm", "job", "type")
	mJobLength = def("qmp_block_job_length_bytes", "gauge", "query-jobs, BLOCK_JOB_READY",
		"Work a job has to do in total (total-progress; bytes for block jobs).",
		"vm", "job", "type")
	mJobsDone = def("qmp_block_jobs_finished_total", "counter", "BLOCK_JOB_COMPLETED, BLOCK_JOB_CANCELLED",
		"Jobs that finished, by type and result: completed, failed (BLOCK_JOB_COMPLETED with an error) or cancelled.",
		"vm", "type", "result")
	mJobErrors = def("qmp_block_job_errors_total", "counter", "BLOCK_JOB_ERROR",
		"I/O errors met by jobs (BLOCK_JOB_ERROR), by operation and the action taken.",
		"vm", "operation", "action")

	// Memory.
	mBalloon = def("qmp_balloon_actual_bytes", "gauge", "BALLOON_CHANGE, query-balloon",
		"Memory the guest has after ballooning; absent without a balloon device.",
		"vm")
	mHVCommitted = def("qmp_hv_balloon_committed_bytes", "gauge", "HV_BALLOON_STATUS_REPORT",
		"Guest memory committed, from the Hyper-V dynamic memory balloon's last status report.",
		"vm")
	mHVAvailable = def("qmp_hv_balloon_available_bytes", "gauge", "HV_BALLOON_STATUS_REPORT",
		"Guest memory available, from the Hyper-V dynamic memory balloon's last status report.",
		"vm")

	// Migration (outgoing).
	mMigStatus = def("qmp_migration_status", "gauge", "query-migrate, MIGRATION",
		"The outgoing migration's status: 1 for the current MigrationStatus, 0 for the others. While a migration runs, query-migrate is polled every second, so the end is seen even without the events capability.",
		"vm", "status")
	mMigPass = def("qmp_migration_pass", "gauge", "MIGRATION_PASS, query-migrate",
		"Number of the current or last RAM pass (dirty bitmap sync) of the migration.",
		"vm")
	mMigTransferred = def("qmp_migration_transferred_bytes", "gauge", "query-migrate",
		"RAM transferred by the current or last migration.",
		"vm")
	mMigRemaining = def("qmp_migration_remaining_bytes", "gauge", "query-migrate",
		"RAM remaining to transfer in the current or last migration.",
		"vm")
	mMigTotal = def("qmp_migration_total_bytes", "gauge", "query-migrate",
		"Total RAM to migrate in the current or last migration.",
		"vm")
	mMigDirtyRate = def("qmp_migration_dirty_pages_per_second", "gauge", "query-migrate",
		"Rate at which the guest dirties pages during the migration.",
		"vm")
	mMigExpectedDowntime = def("qmp_migration_expected_downtime_seconds", "gauge", "query-migrate",
		"QEMU's estimate of the downtime of the running migration.",
		"vm")
	mMigDowntime = def("qmp_migration_downtime_seconds", "gauge", "query-migrate",
		"Downtime of the last completed migration.",
		"vm")
	mMigTotalTime = def("qmp_migration_total_time_seconds", "gauge", "query-migrate",
		"Time the current or last migration has taken.",
		"vm")
	mMigSetupTime = def("qmp_migration_setup_time_seconds", "gauge", "query-migrate",
		"Time the current or last migration spent in setup.",
		"vm")
	mMigEnded = def("qmp_migrations_total", "counter", "MIGRATION, query-migrate",
		"Outgoing migrations this exporter saw end, by result (completed, failed, cancelled).",
		"vm", "result")

	// Consoles.
	mVNCClients = def("qmp_vnc_clients", "gauge", "VNC_CONNECTED, VNC_DISCONNECTED, query-vnc",
		"VNC clients connected now; absent when VNC is not available.",
		"vm")
	mVNCConnections = def("qmp_vnc_connections_total", "counter", "VNC_CONNECTED",
		"VNC connections opened.",
		"vm")
	mVNCSessions = def("qmp_vnc_sessions_total", "counter", "VNC_INITIALIZED",
		"VNC sessions that completed the handshake and authentication.",
		"vm")
	mVNCFailed = def("qmp_vnc_handshake_failures_total", "counter", "VNC_CONNECTED, VNC_DISCONNECTED",
		"VNC connections closed before VNC_INITIALIZED: failed or abandoned handshakes or authentication.",
		"vm")
	mSpiceClients = def("qmp_spice_clients", "gauge", "SPICE_CONNECTED, SPICE_DISCONNECTED, query-spice",
		"SPICE channels connected now (a SPICE client opens several); absent when SPICE is not available.",
		"vm")
	mSpiceConnections = def("qmp_spice_connections_total", "counter", "SPICE_CONNECTED",
		"SPICE channel connections opened.",
		"vm")
	mSpiceSessions = def("qmp_spice_sessions_total", "counter", "SPICE_INITIALIZED",
		"SPICE sessions whose main channel completed the handshake and authentication.",
		"vm")
	mSpiceFailed = def("qmp_spice_handshake_failures_total", "counter", "SPICE_CONNECTED, SPICE_DISCONNECTED",
		"SPICE channel connections closed before SPICE_INITIALIZED.",
		"vm")
)

// mListener is the listeners' metric; it has no vm label.
var mListener = def("qmp_listener_connections_total", "counter", "listener sockets (QEMU dialling in)",
	"Connections QEMUs opened to a listener socket, by result: accepted (identified and attached to its VM), refused (peer uid not allowed, too many handshakes at once in all or from one process, or the limit of dialled-in VMs reached while all are connected) or failed (handshake or identification failed).",
	"listener", "result")

// metricDefs lists every metric the collector exports, in README order.
var metricDefs = []*metricDef{
	mUp, mVMStatus, mVMInfo, mEvents, mEventsUnlabelled, mLastEvent,
	mAttempts, mFailures, mProtocolErrors, mEventDataErrors, mCommandTimeouts, mDropped,
	mShutdowns, mResets, mPanics, mCrashloads, mWatchdog, mMemoryFailures,
	mRTCOffset, mVserport, mDumps, mDeviceDeletions,
	mIOErrors, mNospace, mIOStatus, mTray, mCorruptions, mCorruptFatal,
	mThreshold, mQuorumFailures, mQuorumBad,
	mJobs, mJobProgress, mJobLength, mJobsDone, mJobErrors,
	mBalloon, mHVCommitted, mHVAvailable,
	mMigStatus, mMigPass, mMigTransferred, mMigRemaining, mMigTotal,
	mMigDirtyRate, mMigExpectedDowntime, mMigDowntime, mMigTotalTime,
	mMigSetupTime, mMigEnded,
	mVNCClients, mVNCConnections, mVNCSessions, mVNCFailed,
	mSpiceClients, mSpiceConnections, mSpiceSessions, mSpiceFailed,
	mListener,
}
