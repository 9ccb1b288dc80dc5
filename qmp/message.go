package qmp

import (
	"encoding/json"
	"fmt"
	"time"
)

// Event is an asynchronous QMP event.
type Event struct {
	// Name is the event's name as QEMU spells it, for example "STOP".
	Name string
	// Data is the raw "data" member, or nil when the event has none. It
	// aliases the connection's read buffer and is valid only until
	// Options.OnEvent returns; copy it to keep it.
	Data json.RawMessage
	// Time is QEMU's timestamp of the event, or the zero Time when QEMU
	// could not read its clock (it sends -1/-1 then) or sent none.
	Time time.Time
}

// Greeting is the QMP greeting: QEMU's version and the capabilities the
// server offers.
type Greeting struct {
	Version      Version  `json:"version"`
	Capabilities []string `json:"capabilities"`
}

// Version is QEMU's version as reported in the greeting and by
// query-version.
type Version struct {
	QEMU struct {
		Major int `json:"major"`
		Minor int `json:"minor"`
		Micro int `json:"micro"`
	} `json:"qemu"`
	// Package is the downstream build description, for example
	// "Debian 1:7.2+dfsg-7+deb12u18"; often empty.
	Package string `json:"package"`
}

// String returns the version as major.minor.micro.
func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro)
}

// knownEvents holds every event name of the QEMU versions this package was
// written against. Decoding an event whose name is listed here costs no
// allocation: the name is taken from this table instead of being copied out
// of the read buffer. Unknown names still work; they are copied.
var knownEvents = func() map[string]string {
	m := make(map[string]string, len(knownEventList))
	for _, n := range knownEventList {
		m[n] = n
	}
	return m
}()

// KnownEvents returns the QMP event names this package knows: those of
// QEMU's event documentation up to 2.x and those the QAPI schema added
// since. QEMU may send others; they are delivered like these.
func KnownEvents() []string { return append([]string(nil), knownEventList...) }

var knownEventList = []string{
	"ACPI_DEVICE_OST", "BALLOON_CHANGE", "BLOCK_EXPORT_DELETED",
	"BLOCK_IMAGE_CORRUPTED", "BLOCK_IO_ERROR", "BLOCK_JOB_CANCELLED",
	"BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR", "BLOCK_JOB_PENDING",
	"BLOCK_JOB_READY", "BLOCK_WRITE_THRESHOLD", "COLO_EXIT",
	"CPU_POLARIZATION_CHANGE", "DEVICE_DELETED", "DEVICE_TRAY_MOVED",
	"DEVICE_UNPLUG_GUEST_ERROR", "DUMP_COMPLETED", "FAILOVER_NEGOTIATED",
	"GUEST_CRASHLOADED", "GUEST_PANICKED", "GUEST_PVSHUTDOWN",
	"HV_BALLOON_STATUS_REPORT", "JOB_STATUS_CHANGE", "MEMORY_DEVICE_SIZE_CHANGE",
	"MEMORY_FAILURE", "MEM_UNPLUG_ERROR", "MIGRATION", "MIGRATION_PASS",
	"NETDEV_STREAM_CONNECTED", "NETDEV_STREAM_DISCONNECTED",
	"NETDEV_VHOST_USER_CONNECTED", "NETDEV_VHOST_USER_DISCONNECTED",
	"NIC_RX_FILTER_CHANGED", "POWERDOWN", "PR_MANAGER_STATUS_CHANGED",
	"QUORUM_FAILURE", "QUORUM_REPORT_BAD", "RDMA_GID_STATUS_CHANGED", "RESET",
	"RESUME", "RTC_CHANGE", "SHUTDOWN", "SPICE_CONNECTED", "SPICE_DISCONNECTED",
	"SPICE_INITIALIZED", "SPICE_MIGRATE_COMPLETED", "STOP", "SUSPEND",
	"SUSPEND_DISK", "UNPLUG_PRIMARY", "VFIO_MIGRATION", "VFU_CLIENT_HANGUP",
	"VNC_CONNECTED", "VNC_DISCONNECTED", "VNC_INITIALIZED", "VSERPORT_CHANGE",
	"WAKEUP", "WATCHDOG",
}
