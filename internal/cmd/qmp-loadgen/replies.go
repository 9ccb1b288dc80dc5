package main

import (
	"fmt"
	"strings"
	"sync/atomic"
)

// The replies below are QEMU 7.2's, as recorded in
// collector/testdata/transcripts, for a VM that libvirt would start: a
// virtio disk on -blockdev node libvirt-1-format, a SATA CD-ROM, a
// virtio-balloon, VNC on TCP and no SPICE. The VM-specific parts (name,
// UUID, run state, migration, backup job) follow what the VM has emitted,
// so that the exporter's follow-up queries agree with the events.

const (
	versionReply = `{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}`
	balloonReply = `{"actual": 4294967296}`
	blockReply   = `[{"io-status": "ok", "device": "", "locked": false, "removable": false, "inserted": {"iops_rd": 0, "detect_zeroes": "off", "image": {"virtual-size": 21474836480, "filename": "/var/lib/libvirt/images/disk0.qcow2", "cluster-size": 65536, "format": "qcow2", "actual-size": 1876951040, "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "compression-type": "zlib", "lazy-refcounts": false, "refcount-bits": 16, "corrupt": false, "extended-l2": false}}, "dirty-flag": false}, "iops_wr": 0, "ro": false, "node-name": "libvirt-1-format", "backing_file_depth": 0, "drv": "qcow2", "iops": 0, "bps_wr": 0, "write_threshold": 16106127360, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {"no-flush": false, "direct": true, "writeback": true}, "file": "/var/lib/libvirt/images/disk0.qcow2"}, "qdev": "/machine/peripheral/virtio-disk0/virtio-backend", "type": "unknown"}, {"io-status": "ok", "device": "", "locked": false, "removable": true, "qdev": "sata0-0-0", "tray_open": false, "type": "unknown"}]`
	vncReply     = `{"enabled": true, "auth": "none", "family": "ipv4", "clients": [], "service": "5900", "host": "0.0.0.0"}`
	spiceReply   = `{"migrated": false, "enabled": false, "mouse-mode": "client"}`
	statusRun    = `{"status": "running", "singlestep": false, "running": true}`
	statusPaused = `{"status": "paused", "singlestep": false, "running": false}`
)

// world is what a VM's replies depend on, changed by the events it sends.
type world struct {
	paused    atomic.Bool
	migration atomic.Pointer[string] // status of the last migration; nil before any
	job       atomic.Pointer[string] // status of the backup job; nil when none
}

// note updates w for an event the VM is about to send.
func (w *world) note(t *eventTemplate) {
	switch t.name {
	case "STOP":
		w.paused.Store(true)
	case "RESUME", "RESET":
		w.paused.Store(false)
	case "MIGRATION":
		w.migration.Store(&t.status)
	case "JOB_STATUS_CHANGE":
		if t.status == "null" {
			w.job.Store(nil)
		} else {
			w.job.Store(&t.status)
		}
	}
}

// queryReply returns the "return" value of a query this fake knows, and
// false for any other command.
func (v *vm) queryReply(command string) (string, bool) {
	switch command {
	case "query-status":
		if v.world.paused.Load() {
			return statusPaused, true
		}
		return statusRun, true
	case "query-name":
		return fmt.Sprintf(`{"name": %q}`, v.name), true
	case "query-uuid":
		return fmt.Sprintf(`{"UUID": %q}`, v.uuid), true
	case "query-version":
		return versionReply, true
	case "query-balloon":
		return balloonReply, true
	case "query-block":
		return blockReply, true
	case "query-migrate":
		return migrateReply(v.world.migration.Load()), true
	case "query-vnc":
		return vncReply, true
	case "query-spice":
		return spiceReply, true
	case "query-jobs":
		st := v.world.job.Load()
		if st == nil {
			return `[]`, true
		}
		return fmt.Sprintf(`[{"current-progress": 1073741824, "status": %q, "total-progress": 21474836480, "type": "backup", "id": "backup-libvirt-1-format"}]`, *st), true
	}
	return "", false
}

// migrateReply is query-migrate's answer: {} before any migration, the
// figures of a running one, and the final status of an ended one.
func migrateReply(status *string) string {
	if status == nil {
		return `{}`
	}
	switch *status {
	case "setup":
		return `{"status": "setup", "setup-time": 0, "total-time": 3}`
	case "active", "cancelling":
		return fmt.Sprintf(`{"expected-downtime": 300, "status": %q, "setup-time": 2, "total-time": 1204, "ram": {"total": 4312137728, "postcopy-requests": 0, "dirty-sync-count": 2, "multifd-bytes": 0, "pages-per-second": 32960, "downtime-bytes": 0, "page-size": 4096, "remaining": 3145728000, "postcopy-bytes": 0, "mbps": 1073.74, "transferred": 1166409728, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 1166409728, "duplicate": 4096, "dirty-pages-rate": 1200, "skipped": 0, "normal-bytes": 1166016512, "normal": 284672}}`, *status)
	case "completed":
		return `{"status": "completed", "setup-time": 2, "downtime": 48, "total-time": 4012, "ram": {"total": 4312137728, "postcopy-requests": 0, "dirty-sync-count": 4, "multifd-bytes": 0, "pages-per-second": 0, "downtime-bytes": 2113536, "page-size": 4096, "remaining": 0, "postcopy-bytes": 0, "mbps": 1073.74, "transferred": 4299161600, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 4297048064, "duplicate": 4096, "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": 4296540160, "normal": 1048960}}`
	}
	// failed and cancelled carry no figures (failed may add error-desc).
	return fmt.Sprintf(`{"status": %q}`, *status)
}

// readOnly reports whether a read-only client may send command: the
// capabilities negotiation and queries. Everything else (stop, cont, quit,
// device_del, human-monitor-command, ...) changes a VM.
func readOnly(command string) bool {
	return command == "qmp_capabilities" || strings.HasPrefix(command, "query-")
}
