package vmstate

import (
	"math"
	"strconv"
	"strings"
)

// The reconcile methods set the state from query replies: the absolute
// truth that events only change, read at every (re)connect, every refresh
// interval, and when an event asks for it. Like the fold, they are pure.

// BlockEntry is the part of a query-block entry the exporter reads.
type BlockEntry struct {
	Device   string `json:"device"` // BlockBackend name; "" when anonymous
	Qdev     string `json:"qdev"`   // qdev id, or QOM path without one
	TrayOpen *bool  `json:"tray_open"`
	IOStatus string `json:"io-status"`
	// KeepIOStatus: the source cannot tell the io-status now; the device
	// keeps the one events told.
	KeepIOStatus bool `json:"-"`
	Removable    bool `json:"removable"`
	Inserted     *struct {
		NodeName string `json:"node-name"`
	} `json:"inserted"`
}

// SetBlock rebuilds the name maps and the per-device gauges from
// query-block. Devices that are gone lose their series; devices first
// counted under a BlockBackend or node name (an event that came before the
// maps knew the device) are renamed to their qdev label, keeping counts.
func (s *State) SetBlock(entries []BlockEntry) {
	bb := make(map[string]string, len(entries))
	nodes := make(map[string]string, len(entries))
	present := make(map[string]bool, len(entries))
	for _, e := range entries {
		if e.Qdev == "" {
			continue // a backend with no guest device (-blockdev only)
		}
		label := qdevLabel([]byte(e.Qdev))
		present[label] = true
		d := s.Devices[label]
		if d == nil {
			// Adopt a device counted under a provisional name.
			for _, alias := range []string{e.Device, nodeNameOf(e)} {
				if alias != "" && alias != label && s.Devices[alias] != nil {
					d = s.Devices[alias]
					delete(s.Devices, alias)
					s.Devices[label] = d
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
		if !e.KeepIOStatus {
			d.IOStatus = ""
			switch e.IOStatus {
			case "ok", "failed", "nospace":
				d.IOStatus = e.IOStatus
			}
		}
		if e.TrayOpen != nil {
			if *e.TrayOpen {
				d.Tray = 1
			} else {
				d.Tray = 0
			}
		}
	}
	s.bbToDev, s.nodeToDev = bb, nodes
	for label, d := range s.Devices {
		if d.confirmed && !present[label] {
			delete(s.Devices, label) // unplugged: its series go
		}
	}
}

func nodeNameOf(e BlockEntry) string {
	if e.Inserted == nil || len(e.Inserted.NodeName) == 0 || e.Inserted.NodeName[0] == '#' {
		return ""
	}
	return e.Inserted.NodeName
}

// MigrateInfo is the part of query-migrate the exporter reads.
type MigrateInfo struct {
	Status           string      `json:"status"`
	RAM              *MigrateRAM `json:"ram"`
	ErrorDesc        string      `json:"error-desc"`
	TotalTime        *float64    `json:"total-time"`
	ExpectedDowntime *float64    `json:"expected-downtime"`
	Downtime         *float64    `json:"downtime"`
	SetupTime        *float64    `json:"setup-time"`
}

// MigrateRAM is query-migrate's ram member.
type MigrateRAM struct {
	Transferred    uint64  `json:"transferred"`
	Remaining      uint64  `json:"remaining"`
	Total          uint64  `json:"total"`
	DirtyPagesRate float64 `json:"dirty-pages-rate"`
	DirtySyncCount uint64  `json:"dirty-sync-count"`
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

// SetMigrate applies query-migrate. QEMU answers {} before any migration,
// which is status none. An ended migration this exporter did not see end
// (events off, and it ended between two polls, or while the session was
// down) is recognised by its final figures differing from the last ended
// one and counted then. Two failed or cancelled migrations in a row that
// no event and no poll saw in progress look alike (QEMU reports no
// figures for them) and count once.
func (s *State) SetMigrate(q MigrateInfo) {
	st := q.Status
	if st == "" {
		st = "none"
	}
	if !validEnum([]byte(st)) {
		return
	}
	if s.Migration.eventEnd && !migrationEnded(st) {
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
		case !s.Migration.baseline:
			// The first look since the exporter started: an end it saw
			// in progress before is counted, an older one is history.
			s.Migration.baseline = true
			if s.Migration.Known && s.Migration.InProgress() && !s.Migration.endCounted {
				s.countMigrationEnd(st)
			}
		case key == s.Migration.endKey && s.Migration.endCounted, s.Migration.eventEnd:
			// The same end as before (no status in progress was seen
			// since), or one its event counted.
		case s.Migration.unfinal && strings.HasPrefix(s.Migration.endKey, stable+"|"):
			// The final figures of the end seen a moment ago.
		default:
			s.countMigrationEnd(st)
		}
		s.Migration.endKey, s.Migration.eventEnd, s.Migration.endCounted = key, false, true
	case st == "none":
		s.Migration.baseline = true
	default:
		s.Migration.baseline = true
		s.Migration.endCounted, s.Migration.eventEnd = false, false
	}
	s.setMigrationStatus(st)
	if q.RAM != nil {
		s.Migration.HaveRAM = true
		s.Migration.Transferred, s.Migration.Remaining, s.Migration.Total = q.RAM.Transferred, q.RAM.Remaining, q.RAM.Total
		s.Migration.DirtyRate = q.RAM.DirtyPagesRate
		if q.RAM.DirtySyncCount > s.Migration.Pass {
			s.Migration.Pass = q.RAM.DirtySyncCount
		}
	}
	switch {
	case !unfinal:
		s.Migration.unfinalPolls = 0
	case s.Migration.unfinal && s.Migration.unfinalPolls < MaxUnfinalPolls:
		s.Migration.unfinalPolls++
	}
	s.Migration.unfinal = unfinal
	if unfinal {
		// Not measured yet: unknown rather than 0.
		q.TotalTime, q.Downtime = nil, nil
	}
	s.Migration.TotalTime = msToSeconds(q.TotalTime)
	s.Migration.ExpectedDowntime = msToSeconds(q.ExpectedDowntime)
	s.Migration.Downtime = msToSeconds(q.Downtime)
	s.Migration.SetupTime = msToSeconds(q.SetupTime)
}

// JobInfo is an entry of query-jobs.
type JobInfo struct {
	ID              string `json:"id"`
	Type            string `json:"type"`
	Status          string `json:"status"`
	CurrentProgress uint64 `json:"current-progress"`
	TotalProgress   uint64 `json:"total-progress"`
}

// SetJobs replaces the job table with query-jobs' list.
func (s *State) SetJobs(list []JobInfo) {
	jobs := make(map[string]*Job, len(list))
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
		jobs[CleanLabel(q.ID)] = &Job{Type: typ, Status: status, Progress: q.CurrentProgress, Length: q.TotalProgress}
	}
	s.Jobs = jobs
}

// ForgetMigration records that the migration's state is not known (the
// query failed), which removes its gauges.
func (s *State) ForgetMigration() { s.Migration.Known = false }

// MigrationEndUnknown records that the migration ended in a way the
// source cannot tell (failed or cancelled): no status, and no end counted,
// until the next migration.
func (s *State) MigrationEndUnknown() { s.Migration.Status, s.Migration.Known = "", false }

// SetBalloon applies query-balloon; ok is false when the VM has no balloon
// device (DeviceNotActive), which removes the gauge.
func (s *State) SetBalloon(actual uint64, ok bool) {
	s.Balloon, s.BalloonOK = actual, ok
}

// Set applies query-vnc or query-spice: enabled (-1 when the query
// is not available), and the number of connected clients or channels.
func (d *Display) Set(enabled int8, clients int) {
	d.Enabled = enabled
	d.Clients = int32(min(clients, math.MaxInt32))
	if enabled != 1 {
		d.pending = nil
	}
}
