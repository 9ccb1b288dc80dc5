package hostile

import (
	"strconv"
	"strings"
	"time"
)

// Greeting72 is the greeting of Debian's QEMU 7.2, as recorded in
// collector/testdata/transcripts.
const Greeting72 = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}`

// version72 is QEMU 7.2's query-version reply.
const version72 = `{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}`

// timestamp is QEMU's event timestamp member for t.
func timestamp(t time.Time) string {
	us := t.UnixMicro()
	return `{"seconds": ` + strconv.FormatInt(us/1e6, 10) + `, "microseconds": ` + strconv.FormatInt(us%1e6, 10) + `}`
}

// event builds one event line; data is raw JSON or empty for none.
func event(t time.Time, name, data string) string {
	line := `{"timestamp": ` + timestamp(t) + `, "event": "` + name + `"`
	if data != "" {
		line += `, "data": ` + data
	}
	return line + `}`
}

// healthyCycle is the sequence of events a Healthy peer repeats, with
// their data as QEMU 7.2 sends it (collector/testdata/transcripts). Every
// name is valid, so each one is counted in qmp_events_total. STOP comes
// before RESUME, so the run state is "running" again at the end of each
// cycle.
var healthyCycle = []struct{ name, data string }{
	{"STOP", ""},
	{"RESUME", ""},
	{"RESET", `{"guest": false, "reason": "host-qmp-system-reset"}`},
	{"RTC_CHANGE", `{"offset": -848946574, "qom-path": "/machine/unattached/device[8]"}`},
	{"VNC_CONNECTED", vncData},
	{"VNC_INITIALIZED", vncData},
	{"VNC_DISCONNECTED", vncData},
	{"WATCHDOG", `{"action": "reset"}`},
	{"RESET", `{"guest": true, "reason": "guest-reset"}`},
	{"DEVICE_TRAY_MOVED", `{"device": "cd0", "tray-open": true, "id": "cdrom0"}`},
	{"DEVICE_TRAY_MOVED", `{"device": "cd0", "tray-open": false, "id": "cdrom0"}`},
	{"POWERDOWN", ""},
}

const vncData = `{"server": {"auth": "none", "family": "unix", "service": "/run/qemu/vnc.sock", "host": "", "websocket": false}, "client": {"family": "unix", "service": "", "host": "", "websocket": false}}`

// healthyEvent returns the i-th event of a Healthy peer's sequence and
// whether the VM is paused once it has happened.
func healthyEvent(i int, t time.Time) (line string, paused bool) {
	e := healthyCycle[i%len(healthyCycle)]
	return event(t, e.name, e.data), e.name == "STOP"
}

// floodBatch returns cycles whole healthy cycles as one buffer of lines,
// and the number of events in it. A batch ends with the VM running.
func floodBatch(cycles int, t time.Time) ([]byte, int) {
	var b strings.Builder
	for range cycles {
		for _, e := range healthyCycle {
			b.WriteString(event(t, e.name, e.data))
			b.WriteString("\r\n")
		}
	}
	return []byte(b.String()), cycles * len(healthyCycle)
}

// invalidUTF8Events are the events of an InvalidUTF8 peer. Their strings
// carry bytes that are not UTF-8 (raw, or as \u escapes of lone
// surrogates). Two have names that are not valid event names; the other
// five have valid names and are counted under them.
var invalidUTF8Events = []struct{ name, data string }{
	// Device label from the qdev id: "tray" + a truncated sequence + '('
	// + a byte never valid in UTF-8.
	{"DEVICE_TRAY_MOVED", "{\"device\": \"cd\xff0\", \"tray-open\": true, \"id\": \"tray\xc3\x28\xfe\"}"},
	{"STOP\xff\xfe", ""},
	// A UTF-8-encoded surrogate, which UTF-8 forbids.
	{"RTC_CHANGE", "{\"offset\": 5, \"qom-path\": \"/machine/\xed\xa0\x80\"}"},
	{"BLOCK_IO_ERROR", "{\"device\": \"disk\x80\", \"node-name\": \"n\xff\", \"operation\": \"read\", \"action\": \"report\", \"nospace\": false, \"reason\": \"Input/output error \xc0\xaf\"}"},
	{"VNC_CONNECTED", "{\"server\": {\"auth\": \"none\", \"family\": \"unix\", \"service\": \"\xf8\x88\x80\x80\x80\", \"host\": \"\", \"websocket\": false}, \"client\": {\"family\": \"unix\", \"service\": \"\xff\", \"host\": \"\xfe\", \"websocket\": false}}"},
	// An escaped lone surrogate, which decodes to U+FFFD.
	{"DEVICE_TRAY_MOVED", `{"device": "", "tray-open": false, "id": "esc\ud800aped"}`},
	{`RESET\udfff`, `{"guest": false, "reason": "host-qmp-system-reset"}`},
}

// Labels the exporter should make of the invalid strings above: each byte
// that is not UTF-8 becomes "_".
const (
	// InvalidUTF8TrayDevice is the device label of the first tray event.
	InvalidUTF8TrayDevice = "tray_(_"
	// InvalidUTF8EscapedDevice is the device label of the second one.
	InvalidUTF8EscapedDevice = "esc_aped"
	// InvalidUTF8ValidNames is how many events of an InvalidUTF8 peer have
	// valid names (the rest are not valid event names).
	InvalidUTF8ValidNames = 5
)

// garbageLines are what a Garbage peer sends instead of replies: none is a
// reply or an event.
var garbageLines = []string{
	"this is not json",
	`{"unterminated": `,
	"\x00\x01\x02\xff",
	`[1, 2, 3]`,
	`null`,
	`{}`,
	`{"return": }`,
	`{"QMP": {"version": {}, "capabilities": []}}`,
	`}{`,
}

// strayReplies are the replies an UnknownID peer sends before each real
// one: ids no client sent (far above any counter, negative, not a number)
// or none at all.
var strayReplies = []string{
	`{"return": {}, "id": 9007199254740993}`,
	`{"return": {}, "id": "hostile"}`,
	`{"return": {}}`,
	`{"return": {"status": "paused", "singlestep": false, "running": false}, "id": -1}`,
	`{"id": 4294967296000, "error": {"class": "GenericError", "desc": "stray error"}}`,
}
