package collector

import "github.com/prometheus/client_golang/prometheus"

// Every metric the collector exports is described here, in one place, so
// that Describe, the README table and the tests agree.
var (
	descUp = prometheus.NewDesc(
		"qmp_up",
		"Whether the QMP session to the VM is established and its initial sync (query-status, query-name, query-uuid, query-version) succeeded (1) or not (0).",
		[]string{"vm"}, nil)
	descVMStatus = prometheus.NewDesc(
		"qmp_vm_status",
		"The VM's run state as reported by query-status and followed through STOP, RESUME, SHUTDOWN, SUSPEND and WAKEUP events: 1 for the current state, 0 for every other QEMU RunState; all 0 while the session is down.",
		[]string{"vm", "status"}, nil)
	descVMInfo = prometheus.NewDesc(
		"qmp_vm_info",
		"Identity of the VM from query-uuid and query-version; always 1.",
		[]string{"vm", "uuid", "qemu_version", "package"}, nil)
	descEvents = prometheus.NewDesc(
		"qmp_events_total",
		"QMP events observed by this exporter, by QEMU's event name. Counts survive reconnects; events QEMU emitted while no session was up are not seen. QEMU rate-limits some events (BALLOON_CHANGE, WATCHDOG, RTC_CHANGE, QUORUM_*, VSERPORT_CHANGE, and on newer versions BLOCK_IO_ERROR and MEMORY_DEVICE_SIZE_CHANGE) to one per second, so for those this counts reports, not occurrences.",
		[]string{"vm", "event"}, nil)
	descEventsUnlabelled = prometheus.NewDesc(
		"qmp_events_unlabelled_total",
		"QMP events not counted in qmp_events_total because their name was not a valid QMP event name or the VM had already reported 128 distinct names.",
		[]string{"vm"}, nil)
	descLastEvent = prometheus.NewDesc(
		"qmp_last_event_timestamp_seconds",
		"QEMU's own timestamp of the latest QMP event of each name observed by this exporter.",
		[]string{"vm", "event"}, nil)
	descAttempts = prometheus.NewDesc(
		"qmp_connection_attempts_total",
		"Attempts to open a QMP session (connect, handshake, initial sync) to the VM's monitor.",
		[]string{"vm"}, nil)
	descFailures = prometheus.NewDesc(
		"qmp_connection_failures_total",
		"QMP session attempts that failed before the session was established (refused or missing socket, no greeting, failed handshake or sync).",
		[]string{"vm"}, nil)
	descProtocolErrors = prometheus.NewDesc(
		"qmp_protocol_errors_total",
		"Messages from the VM's monitor that were dropped because they were malformed JSON, replies with an unknown id, or neither reply nor event.",
		[]string{"vm"}, nil)
)

var allDescs = []*prometheus.Desc{
	descUp, descVMStatus, descVMInfo, descEvents, descEventsUnlabelled,
	descLastEvent, descAttempts, descFailures, descProtocolErrors,
}
