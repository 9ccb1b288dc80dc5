package collector

import (
	"strconv"
	"strings"
)

// The reconcile methods set the state from query replies: the absolute
// truth that events only change, read at every (re)connect, every refresh
// interval, and when an event asks for it. Like the fold, they are pure.

// queryBlockEntry is the part of a query-block entry the exporter reads.
type queryBlockEntry struct {
	Device    string `json:"device"` // BlockBackend name; "" when anonymous
	Qdev      string `json:"qdev"`   // qdev id, or QOM path without one
	TrayOpen  *bool  `json:"tray_open"`
	IOStatus  string `json:"io-status"`
	Removable bool   `json:"removable"`
	Inserted  *struct {
		NodeName string `json:"node-name"`
	} `json:"inserted"`
}

// setBlock rebuilds the name maps and the per-device gauges from
// query-block. Devices that are gone lose their series; devices first
// counted under a BlockBackend or node name (an event that came before the
// maps knew the device) are renamed to their qdev label, keeping counts.
func (s *vmState) setBlock(entries []queryBlockEntry) {
	bb := make(map[string]string, len(entries))
	nodes := make(map[string]string, len(entries))
	present := make(map[string]bool, len(entries))
	for _, e := range entries {
		if e.Qdev == "" {
			continue // a backend with no guest device (-blockdev only)
		}
		label := qdevLabel([]byte(e.Qdev))
		present[label] = true
		d := s.devices[label]
		if d == nil {
			// Adopt a device counted under a provisional name.
			for _, alias := range []string{e.Device, nodeNameOf(e)} {
				if alias != "" && alias != label && s.devices[alias] != nil {
					d = s.devices[alias]
					delete(s.devices, alias)
					s.devices[label] = d
					break
				}
			}
		}
		if d == nil {
			d = s.device(label)
		}
		d.confirmed = true
		if e.Device != "" {
			bb[e.Device] = label
		}
		if n := nodeNameOf(e); n != "" {
			nodes[n] = label
		}
		d.ioStatus = ""
		switch e.IOStatus {
		case "ok", "failed", "nospace":
			d.ioStatus = e.IOStatus
		}
		if e.TrayOpen != nil {
			if *e.TrayOpen {
				d.tray = 1
			} else {
				d.tray = 0
			}
		}
	}
	s.bbToDev, s.nodeToDev = bb, nodes
	for label, d := range s.devices {
		if d.confirmed && !present[label] {
			delete(s.devices, label) // unplugged: its series go
		}
	}
}

func nodeNameOf(e queryBlockEntry) string {
	if e.Inserted == nil || len(e.Inserted.NodeName) == 0 || e.Inserted.NodeName[0] == '#' {
		return ""
	}
	return e.Inserted.NodeName
}

// queryMigrate is the part of query-migrate the exporter reads.
type queryMigrate struct {
	Status string `json:"status"`
	RAM    *struct {
		Transferred    uint64  `json:"transferred"`
		Remaining      uint64  `json:"remaining"`
		Total          uint64  `json:"total"`
		DirtyPagesRate float64 `json:"dirty-pages-rate"`
		DirtySyncCount uint64  `json:"dirty-sync-count"`
	} `json:"ram"`
	ErrorDesc        string   `json:"error-desc"`
	TotalTime        *float64 `json:"total-time"`
	ExpectedDowntime *float64 `json:"expected-downtime"`
	Downtime         *float64 `json:"downtime"`
	SetupTime        *float64 `json:"setup-time"`
}

func msString(v *float64) string {
	if v == nil {
		return ""
	}
	return strconv.FormatFloat(*v, 'g', -1, 64)
}

func msToSeconds(v *float64) float64 {
	if v == nil {
		return -1
	}
	return *v / 1000
}

// setMigrate applies query-migrate. QEMU answers {} before any migration,
// which is status none. An ended migration this exporter did not see end
// (events off, and it ended between two polls, or while the session was
// down) is recognised by its final figures differing from the last ended
// one and counted then. Two failed or cancelled migrations in a row that
// no event and no poll saw in progress look alike (QEMU reports no
// figures for them) and count once.
func (s *vmState) setMigrate(q queryMigrate) {
	st := q.Status
	if st == "" {
		st = "none"
	}
	if !validEnum([]byte(st)) {
		return
	}
	if s.mig.eventEnd && !migrationEnded(st) {
		// An in-progress status after the event that ended the
		// migration and before any event of a new one: older than what
		// the event said. The watcher applies replies in wire order, so
		// QEMU does not send this; a peer that did is not believed.
		return
	}
	// QEMU 7.2 sets the status to completed a moment before it computes
	// total-time and downtime (migration_calculate_complete runs after
	// the state change; later releases moved both under the lock that
	// query-migrate takes): a reply in that window says completed with
	// total-time 0. Its figures
	// are not final, so the next reply of the same end differs from it in
	// those two only; unfinal marks that, and the watcher polls once more
	// for the final figures. (A reply with no total-time at all has no
	// figures to wait for.)
	unfinal := st == "completed" && q.TotalTime != nil && *q.TotalTime == 0
	switch {
	case migrationEnded(st):
		stable := st + "|" + msString(q.SetupTime) + "|" + q.ErrorDesc
		if q.RAM != nil {
			stable += "|" + strconv.FormatUint(q.RAM.Transferred, 10)
		}
		key := stable + "|" + msString(q.TotalTime) + "|" + msString(q.Downtime)
		switch {
		case !s.mig.baseline:
			// The first look since the exporter started: an end it saw
			// in progress before is counted, an older one is history.
			s.mig.baseline = true
			if s.mig.known && s.mig.inProgress() && !s.mig.endCounted {
				s.countMigrationEnd(st)
			}
		case key == s.mig.endKey, s.mig.eventEnd:
			// The same end as before, or one its event counted.
		case s.mig.unfinal && strings.HasPrefix(s.mig.endKey, stable+"|"):
			// The final figures of the end seen a moment ago.
		default:
			s.countMigrationEnd(st)
		}
		s.mig.endKey, s.mig.eventEnd, s.mig.endCounted = key, false, true
	case st == "none":
		s.mig.baseline = true
	default:
		s.mig.baseline = true
		s.mig.endCounted, s.mig.eventEnd = false, false
	}
	s.setMigrationStatus(st)
	if q.RAM != nil {
		s.mig.haveRAM = true
		s.mig.transferred, s.mig.remaining, s.mig.total = q.RAM.Transferred, q.RAM.Remaining, q.RAM.Total
		s.mig.dirtyRate = q.RAM.DirtyPagesRate
		if q.RAM.DirtySyncCount > s.mig.pass {
			s.mig.pass = q.RAM.DirtySyncCount
		}
	}
	switch {
	case !unfinal:
		s.mig.unfinalPolls = 0
	case s.mig.unfinal && s.mig.unfinalPolls < maxUnfinalPolls:
		s.mig.unfinalPolls++
	}
	s.mig.unfinal = unfinal
	if unfinal {
		// Not measured yet: unknown rather than 0.
		q.TotalTime, q.Downtime = nil, nil
	}
	s.mig.totalTime = msToSeconds(q.TotalTime)
	s.mig.expectedDowntime = msToSeconds(q.ExpectedDowntime)
	s.mig.downtime = msToSeconds(q.Downtime)
	s.mig.setupT = msToSeconds(q.SetupTime)
}

// queryJob is an entry of query-jobs.
type queryJob struct {
	ID              string `json:"id"`
	Type            string `json:"type"`
	Status          string `json:"status"`
	CurrentProgress uint64 `json:"current-progress"`
	TotalProgress   uint64 `json:"total-progress"`
}

// setJobs replaces the job table with query-jobs' list.
func (s *vmState) setJobs(list []queryJob) {
	jobs := make(map[string]*blockJob, len(list))
	for _, q := range list {
		if len(jobs) >= maxDevices {
			s.drop("job")
			break
		}
		typ, status := q.Type, q.Status
		if !validEnum([]byte(typ)) {
			typ = "unknown"
		}
		if !validEnum([]byte(status)) {
			status = "unknown"
		}
		jobs[cleanLabel(q.ID)] = &blockJob{typ: typ, status: status, progress: q.CurrentProgress, length: q.TotalProgress}
	}
	s.jobs = jobs
}

// setBalloon applies query-balloon; ok is false when the VM has no balloon
// device (DeviceNotActive), which removes the gauge.
func (s *vmState) setBalloon(actual uint64, ok bool) {
	s.balloon, s.balloonOK = actual, ok
}

// setDisplay applies query-vnc or query-spice: enabled (-1 when the query
// is not available), and the number of connected clients or channels.
func (d *display) set(enabled int8, clients int) {
	d.enabled = enabled
	d.clients = clients
	if enabled != 1 {
		d.pending = nil
	}
}
