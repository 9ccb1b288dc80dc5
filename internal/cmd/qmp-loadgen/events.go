package main

import (
	"encoding/json"
	"strconv"
)

// eventTemplate is one event of the mix, pre-rendered after its timestamp:
// QEMU 7.2 writes {"timestamp": {...}, "event": NAME, "data": {...}}, in
// that order, with ", " and ": " separators and a CRLF line ending.
type eventTemplate struct {
	name   string
	status string // the data's "status" member, if any (MIGRATION, JOB_STATUS_CHANGE)
	tail   []byte // `"event": "NAME", "data": {...}}` + CRLF
}

// eventMix is the cycle of events every VM plays, starting at its own
// offset. Shapes are those of the QEMU 7.2 recordings in
// collector/testdata/transcripts and of the QAPI schema, with the names a
// libvirt-managed VM has (-blockdev node names, peripheral QOM paths).
// Frequencies follow what a busy host sees: clock and balloon updates and
// NIC filter changes are common; console sessions, pauses and reboots
// rarer; errors, jobs and migrations occasional. About a third of the
// events make the exporter run a follow-up query (STOP, RESUME, RESET,
// WATCHDOG, BLOCK_IO_ERROR, BLOCK_JOB_*, MIGRATION, a new job), as they
// would in real life. Sequences keep the exporter's state bounded: every
// VNC client that connects disconnects, every job ends, every tray that
// opens closes.
var eventMix = []struct{ name, data string }{
	{"RTC_CHANGE", `{"offset": 1, "qom-path": "/machine/unattached/device[8]"}`},
	{"BALLOON_CHANGE", `{"actual": 4294967296}`},
	{"NIC_RX_FILTER_CHANGED", `{"name": "net0", "path": "/machine/peripheral/net0/virtio-backend"}`},
	{"VNC_CONNECTED", vncData},
	{"VNC_INITIALIZED", vncData},
	{"RTC_CHANGE", `{"offset": 2, "qom-path": "/machine/unattached/device[8]"}`},
	{"BLOCK_IO_ERROR", `{"device": "", "nospace": false, "node-name": "libvirt-1-format", "reason": "Input/output error", "operation": "write", "action": "report"}`},
	{"BALLOON_CHANGE", `{"actual": 4227858432}`},
	{"JOB_STATUS_CHANGE", `{"status": "created", "id": "backup-libvirt-1-format"}`},
	{"JOB_STATUS_CHANGE", `{"status": "running", "id": "backup-libvirt-1-format"}`},
	{"NIC_RX_FILTER_CHANGED", `{"name": "net0", "path": "/machine/peripheral/net0/virtio-backend"}`},
	{"RTC_CHANGE", `{"offset": 3, "qom-path": "/machine/unattached/device[8]"}`},
	{"BLOCK_WRITE_THRESHOLD", `{"amount-exceeded": 65536, "node-name": "libvirt-1-format", "write-threshold": 16106127360}`},
	{"VNC_DISCONNECTED", vncData},
	{"BALLOON_CHANGE", `{"actual": 4294967296}`},
	{"JOB_STATUS_CHANGE", `{"status": "waiting", "id": "backup-libvirt-1-format"}`},
	{"JOB_STATUS_CHANGE", `{"status": "pending", "id": "backup-libvirt-1-format"}`},
	{"BLOCK_JOB_COMPLETED", `{"device": "backup-libvirt-1-format", "len": 21474836480, "offset": 21474836480, "speed": 0, "type": "backup"}`},
	{"JOB_STATUS_CHANGE", `{"status": "concluded", "id": "backup-libvirt-1-format"}`},
	{"JOB_STATUS_CHANGE", `{"status": "null", "id": "backup-libvirt-1-format"}`},
	{"RTC_CHANGE", `{"offset": 4, "qom-path": "/machine/unattached/device[8]"}`},
	{"STOP", ""},
	{"RESUME", ""},
	{"ACPI_DEVICE_OST", `{"info": {"device": "dimm1", "source": 1, "status": 0, "slot": "1", "slot-type": "DIMM"}}`},
	{"MEMORY_DEVICE_SIZE_CHANGE", `{"id": "vmem0", "size": 1073741824, "qom-path": "/machine/peripheral/vmem0"}`},
	{"NIC_RX_FILTER_CHANGED", `{"name": "net0", "path": "/machine/peripheral/net0/virtio-backend"}`},
	{"RESET", `{"guest": true, "reason": "guest-reset"}`},
	{"RTC_CHANGE", `{"offset": 0, "qom-path": "/machine/unattached/device[8]"}`},
	{"DEVICE_TRAY_MOVED", `{"device": "", "tray-open": true, "id": "sata0-0-0"}`},
	{"DEVICE_TRAY_MOVED", `{"device": "", "tray-open": false, "id": "sata0-0-0"}`},
	{"BLOCK_IO_ERROR", `{"device": "", "nospace": false, "node-name": "libvirt-1-format", "reason": "Input/output error", "operation": "read", "action": "report"}`},
	{"BALLOON_CHANGE", `{"actual": 4160749568}`},
	{"MIGRATION", `{"status": "setup"}`},
	{"MIGRATION_PASS", `{"pass": 1}`},
	{"MIGRATION", `{"status": "active"}`},
	{"MIGRATION_PASS", `{"pass": 2}`},
	{"MIGRATION", `{"status": "cancelling"}`},
	{"MIGRATION", `{"status": "cancelled"}`},
	{"WATCHDOG", `{"action": "reset"}`},
	{"RESET", `{"guest": true, "reason": "guest-reset"}`},
	{"GUEST_CRASHLOADED", `{"action": "run"}`},
	{"DEVICE_DELETED", `{"device": "hostdev1", "path": "/machine/peripheral/hostdev1"}`},
	{"NETDEV_STREAM_DISCONNECTED", `{"netdev-id": "hostnet1"}`},
	{"RTC_CHANGE", `{"offset": 1, "qom-path": "/machine/unattached/device[8]"}`},
}

// vncData is a VNC client on TCP, as QEMU 7.2 reports it.
const vncData = `{"server": {"auth": "none", "family": "ipv4", "service": "5900", "host": "0.0.0.0", "websocket": false}, "client": {"family": "ipv4", "service": "51870", "host": "192.0.2.7", "websocket": false}}`

// templates is eventMix rendered once.
var templates = func() []eventTemplate {
	ts := make([]eventTemplate, len(eventMix))
	for i, e := range eventMix {
		tail := `"event": ` + strconv.Quote(e.name)
		var data struct {
			Status string `json:"status"`
		}
		if e.data != "" {
			tail += `, "data": ` + e.data
			if err := json.Unmarshal([]byte(e.data), &data); err != nil {
				panic("qmp-loadgen: bad event data in eventMix: " + err.Error())
			}
		}
		ts[i] = eventTemplate{name: e.name, status: data.Status, tail: []byte(tail + "}\r\n")}
	}
	return ts
}()

// followUp names the events of the mix after which qmp_exporter runs a
// query (see collector/fold.go), directly or because they make a job
// known.
var followUp = map[string]bool{
	"STOP": true, "RESUME": true, "RESET": true, "WATCHDOG": true, "BLOCK_IO_ERROR": true,
	"BLOCK_JOB_COMPLETED": true, "JOB_STATUS_CHANGE": true, "MIGRATION": true,
}

// mixes are the event cycles -mix selects: the whole mix, or only the
// events that cause no follow-up query ("quiet"), which isolates the cost
// of reading, parsing and folding from that of the queries.
var mixes = map[string][]eventTemplate{
	"full": templates,
	"quiet": func() []eventTemplate {
		var q []eventTemplate
		for _, t := range templates {
			if !followUp[t.name] {
				q = append(q, t)
			}
		}
		return q
	}(),
}

// appendEvent renders t with the given timestamp onto b.
func appendEvent(b []byte, t *eventTemplate, sec, usec int64) []byte {
	b = append(b, `{"timestamp": {"seconds": `...)
	b = strconv.AppendInt(b, sec, 10)
	b = append(b, `, "microseconds": `...)
	b = strconv.AppendInt(b, usec, 10)
	b = append(b, "}, "...)
	return append(b, t.tail...)
}
