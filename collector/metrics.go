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
)

// metricDefs lists every metric the collector exports, in README order.
var metricDefs = []*metricDef{
	mUp, mVMStatus, mVMInfo, mEvents, mEventsUnlabelled, mLastEvent,
	mAttempts, mFailures, mProtocolErrors,
}
