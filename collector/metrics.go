package collector

import (
	"cmp"
	"slices"
	"strconv"

	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
)

// Metric is the one definition of a metric: its name, type, labels,
// documentation and how its samples are read from a VM's state. The
// README's metrics table, Describe and Collect, the text writer and the
// dashboards' and alerts' checks of metric names all read these values;
// a metric exists exactly when it is in vmMetrics or exporterMetrics, so
// none can be half registered.
type Metric struct {
	Name string
	Type string // "gauge" or "counter"
	// Labels are the metric's labels after vm, which every per-VM series
	// carries first (a metric of exporterMetrics has no vm).
	Labels []string
	// Source names the QMP events and commands the values come from.
	Source string
	Help   string
	// values sends the metric's samples for one VM: one s.add per
	// series, with one label value per entry of Labels. It only reads st.
	values func(st *vmstate.State, s *sink)
	// qmpOnly: only a QMP session of the exporter's own knows the values
	// (its connection; events libvirt does not relay: quorum, image
	// corruption, virtio-serial ports, the Hyper-V balloon, dumps, job
	// errors; events go-libvirt does not deliver: memory failures, write
	// thresholds; block jobs, which the libvirt source does not follow),
	// so the metric is absent for VMs seen through libvirt.
	qmpOnly bool
}

const (
	gauge   = "gauge"
	counter = "counter"
)

// countsFromStart reports whether every series of m is a counter that
// started from zero when its VM's state did (vmstate.State.CountersSince),
// which OpenMetrics then gives as its _created. The per-device counters
// do not: a device's series start when the device is first known, and
// again when it is plugged back after an unplug, moments the state does
// not record. A new counter whose series can likewise go and come back
// within a VM's life must carry a label of its object here too.
//
// The _created is written only for a series that has counted something.
// It is there so that Prometheus sees the first increase of a series
// that is born above zero; a series at 0 shows its start by itself (most
// series are: the counters that alerts read are exported at 0 from the
// start), and Prometheus ignores a _created older than the samples it
// has. Leaving them out keeps OpenMetrics about the size of the text
// format, and a Prometheus without created-timestamp-zero-ingestion,
// which stores each _created as a series, stores only those.
func (m *Metric) countsFromStart() bool {
	return m.Type == counter && !slices.Contains(m.Labels, "device")
}

// rateLimitNote is appended to the HELP of counters fed by events QEMU
// rate-limits.
const rateLimitNote = " QEMU rate-limits some events (BALLOON_CHANGE, WATCHDOG, RTC_CHANGE, QUORUM_*, VSERPORT_CHANGE, and on newer versions BLOCK_IO_ERROR and MEMORY_DEVICE_SIZE_CHANGE) to one per second, keeping the last, so for those this counts reports, not occurrences."

// vmMetrics are the per-VM metrics, in README order.
var vmMetrics = []*Metric{
	{Name: "qmp_up", Type: gauge, Source: "session state; query-status, query-name, query-uuid, query-version",
		Help:   "Whether the QMP session to the VM is established and its initial sync (query-status, query-name, query-uuid, query-version) succeeded (1) or not (0).",
		values: func(st *vmstate.State, s *sink) { s.add(boolValue(st.Up)) }},
	{Name: "qmp_vm_status", Type: gauge, Labels: []string{"status"}, Source: "query-status; STOP, RESUME, SHUTDOWN, SUSPEND, WAKEUP",
		Help:   "The VM's run state as reported by query-status and followed through STOP, RESUME, SHUTDOWN, SUSPEND and WAKEUP events: 1 for the current state, 0 for every other QEMU RunState; all 0 while the session is down.",
		values: runStatus},
	{Name: "qmp_vm_info", Type: gauge, Labels: []string{"uuid", "qemu_version", "package"}, Source: "query-uuid, query-version",
		Help: "Identity of the VM from query-uuid and query-version; always 1.",
		values: func(st *vmstate.State, s *sink) {
			if st.Synced {
				s.add(1, st.Info.UUID, st.Info.Version, st.Info.Package)
			}
		}},
	{Name: "qmp_openstack_instance_info", Type: gauge, Labels: []string{"instance_name", "flavor", "project_id", "project_name", "user_id", "user_name"},
		Source: "libvirt domain XML (nova:instance)",
		Help:   "OpenStack Nova's metadata of the instance a libvirt domain runs (its name, flavor, project and user), to join on vm; always 1, absent for other VMs.",
		values: func(st *vmstate.State, s *sink) {
			if o := st.OpenStack; o != nil {
				s.add(1, o.Name, o.Flavor, o.ProjectID, o.Project, o.UserID, o.User)
			}
		}},
	{Name: "qmp_events_total", Type: counter, Labels: []string{"event"}, Source: "every event",
		Help: "QMP events observed by this exporter, by QEMU's event name. Counts survive reconnects; events QEMU emitted while no session was up are not seen." + rateLimitNote,
		values: func(st *vmstate.State, s *sink) {
			for _, n := range s.eventNames(st) {
				s.add(float64(st.Events[n].Count), n)
			}
		}},
	{Name: "qmp_events_unlabelled_total", Type: counter, Source: "every event",
		Help:   "QMP events not counted in qmp_events_total because their name was not a valid QMP event name or the VM had already reported 128 distinct names.",
		values: func(st *vmstate.State, s *sink) { s.add(float64(st.Unlabelled)) }},
	{Name: "qmp_last_event_timestamp_seconds", Type: gauge, Labels: []string{"event"}, Source: "every event (its timestamp)",
		Help: "QEMU's own timestamp of the latest QMP event of each name observed by this exporter.",
		values: func(st *vmstate.State, s *sink) {
			for _, n := range s.eventNames(st) {
				if ev := st.Events[n]; !ev.Last.IsZero() {
					s.add(float64(ev.Last.UnixMicro())/1e6, n)
				}
			}
		}},
	{Name: "qmp_connection_attempts_total", qmpOnly: true, Type: counter, Source: "session state",
		Help:   "Attempts to open a QMP session (connect, handshake, initial sync) to the VM's monitor.",
		values: func(st *vmstate.State, s *sink) { s.add(float64(st.Attempts)) }},
	{Name: "qmp_connection_failures_total", qmpOnly: true, Type: counter, Source: "session state",
		Help:   "QMP session attempts that failed before the session was established (refused or missing socket, no greeting, failed handshake or sync).",
		values: func(st *vmstate.State, s *sink) { s.add(float64(st.Failures)) }},
	{Name: "qmp_protocol_errors_total", qmpOnly: true, Type: counter, Source: "session state",
		Help:   "Messages from the VM's monitor that were dropped because they were malformed JSON, replies with an unknown id, or neither reply nor event.",
		values: func(st *vmstate.State, s *sink) { s.add(float64(st.ProtocolErrors)) }},
	{Name: "qmp_event_data_errors_total", Type: counter, Source: "every event",
		Help:   "QMP events whose data lacked a member the event must carry or was not a JSON object; the event is still counted in qmp_events_total.",
		values: func(st *vmstate.State, s *sink) { s.add(float64(st.DataErrors)) }},
	{Name: "qmp_command_timeouts_total", qmpOnly: true, Type: counter, Source: "session state",
		Help:   "Queries the VM did not answer within --qmp.command-timeout; each one drops the session as hung.",
		values: func(st *vmstate.State, s *sink) { s.add(float64(st.CommandTimeouts)) }},
	{Name: "qmp_dropped_label_sets_total", Type: counter, Labels: []string{"kind"}, Source: "all per-object metrics",
		Help: "Objects (block devices, jobs, serial ports) not given their own series because the VM already had 64 of that kind.",
		values: func(st *vmstate.State, s *sink) {
			for _, k := range sortedInto(&s.k.strs, st.Dropped) {
				s.add(float64(st.Dropped[k]), k)
			}
		}},

	// Guest.
	{Name: "qmp_shutdowns_total", Type: counter, Labels: []string{"guest", "reason"}, Source: "SHUTDOWN",
		Help:   "SHUTDOWN events by whether the guest caused them and QEMU's ShutdownCause (reason unknown for QEMU before 4.0).",
		values: func(st *vmstate.State, s *sink) { guestReasons(st.Shutdowns, s) }},
	{Name: "qmp_resets_total", Type: counter, Labels: []string{"guest", "reason"}, Source: "RESET",
		Help:   "RESET events by whether the guest caused them and QEMU's ShutdownCause. A watchdog reset is reported by QEMU as guest=true, reason=guest-reset.",
		values: func(st *vmstate.State, s *sink) { guestReasons(st.Resets, s) }},
	{Name: "qmp_guest_panics_total", Type: counter, Labels: []string{"action", "info"}, Source: "GUEST_PANICKED",
		Help:   "Guest panics reported by a pvpanic, Hyper-V or s390 panic device (GUEST_PANICKED), by the action QEMU took and the type of panic information the guest gave (none when it gave none).",
		values: func(st *vmstate.State, s *sink) { pairs(st.Panics, s) }},
	{Name: "qmp_guest_crashloads_total", Type: counter, Labels: []string{"action"}, Source: "GUEST_CRASHLOADED",
		Help:   "Guest panics after which the guest loaded a crash kernel (GUEST_CRASHLOADED), by action.",
		values: func(st *vmstate.State, s *sink) { counts(st.Crashloads, s) }},
	{Name: "qmp_watchdog_actions_total", Type: counter, Labels: []string{"action"}, Source: "WATCHDOG",
		Help:   "Watchdog expirations (WATCHDOG), by the action QEMU took." + rateLimitNote,
		values: func(st *vmstate.State, s *sink) { counts(st.Watchdog, s) }},
	{Name: "qmp_memory_failures_total", qmpOnly: true, Type: counter, Labels: []string{"recipient", "action"}, Source: "MEMORY_FAILURE",
		Help:   "Hardware memory errors (MEMORY_FAILURE), by who received them and the action taken.",
		values: func(st *vmstate.State, s *sink) { pairs(st.MemoryFailures, s) }},
	{Name: "qmp_rtc_offset_seconds", Type: gauge, Source: "RTC_CHANGE",
		Help: "Offset of the guest's real-time clock from the host's, as of the last RTC_CHANGE; absent until the guest sets its clock.",
		values: func(st *vmstate.State, s *sink) {
			if st.RTCKnown {
				s.add(float64(st.RTCOffset))
			}
		}},
	{Name: "qmp_vserport_open", qmpOnly: true, Type: gauge, Labels: []string{"port"}, Source: "VSERPORT_CHANGE",
		Help: "Whether the guest has the virtio-serial port open (1) or closed (0), as of its last VSERPORT_CHANGE.",
		values: func(st *vmstate.State, s *sink) {
			for _, k := range sortedInto(&s.k.strs, st.Vserports) {
				s.add(boolValue(st.Vserports[k]), k)
			}
		}},
	{Name: "qmp_dumps_total", qmpOnly: true, Type: counter, Labels: []string{"result"}, Source: "DUMP_COMPLETED",
		Help: "Guest memory dumps finished (DUMP_COMPLETED), by result.",
		values: func(st *vmstate.State, s *sink) {
			for i, r := range vmstate.DumpResults {
				s.add(float64(st.Dumps[i]), r)
			}
		}},
	{Name: "qmp_device_deletions_total", Type: counter, Source: "DEVICE_DELETED",
		Help:   "Devices whose removal completed (DEVICE_DELETED).",
		values: func(st *vmstate.State, s *sink) { s.add(float64(st.DeviceDeletions)) }},

	// Block devices; the device label is the guest device's qdev id, or
	// its QOM path when it has none.
	{Name: "qmp_block_io_errors_total", Type: counter, Labels: []string{"device", "operation", "action"}, Source: "BLOCK_IO_ERROR",
		Help:   "Block I/O errors (BLOCK_IO_ERROR) by guest device, operation (unknown for libvirt domains: libvirt does not say read or write) and the action QEMU took (stop pauses the VM in io-error)." + rateLimitNote,
		values: ioErrors},
	{Name: "qmp_block_io_nospace_errors_total", Type: counter, Labels: []string{"device"}, Source: "BLOCK_IO_ERROR",
		Help: "Block I/O errors caused by the host running out of space (BLOCK_IO_ERROR with nospace), by guest device.",
		values: func(st *vmstate.State, s *sink) {
			s.eachDevice(st, func(name string, d *vmstate.BlockDev) { s.add(float64(d.Nospace), name) })
		}},
	{Name: "qmp_block_io_status", Type: gauge, Labels: []string{"device", "status"}, Source: "query-block, BLOCK_IO_ERROR, RESUME",
		Help: "The device's I/O status (ok, failed, nospace) from query-block, which an error that stops the VM and a RESUME change in between; present for devices with werror/rerror set to stop or enospc.",
		values: func(st *vmstate.State, s *sink) {
			s.eachDevice(st, func(name string, d *vmstate.BlockDev) {
				if d.IOStatus != "" {
					for _, status := range vmstate.IOStatuses {
						s.add(boolValue(status == d.IOStatus), name, status)
					}
				}
			})
		}},
	{Name: "qmp_tray_open", Type: gauge, Labels: []string{"device"}, Source: "DEVICE_TRAY_MOVED, query-block",
		Help: "Whether a removable device's tray is open (1) or closed (0).",
		values: func(st *vmstate.State, s *sink) {
			s.eachDevice(st, func(name string, d *vmstate.BlockDev) {
				if d.Tray >= 0 {
					s.add(float64(d.Tray), name)
				}
			})
		}},
	{Name: "qmp_block_image_corruptions_total", qmpOnly: true, Type: counter, Labels: []string{"device"}, Source: "BLOCK_IMAGE_CORRUPTED",
		Help: "Times an image was marked corrupt (BLOCK_IMAGE_CORRUPTED), by guest device.",
		values: func(st *vmstate.State, s *sink) {
			s.eachDevice(st, func(name string, d *vmstate.BlockDev) { s.add(float64(d.Corruptions), name) })
		}},
	{Name: "qmp_block_image_corrupt_fatal", qmpOnly: true, Type: gauge, Labels: []string{"device"}, Source: "BLOCK_IMAGE_CORRUPTED",
		Help: "Whether a corruption report for the device was fatal (1: the image is unusable until repaired) or every report so far was not (0); absent before the first report.",
		values: func(st *vmstate.State, s *sink) {
			s.eachDevice(st, func(name string, d *vmstate.BlockDev) {
				if d.CorruptFatal >= 0 {
					s.add(float64(d.CorruptFatal), name)
				}
			})
		}},
	{Name: "qmp_block_write_threshold_hits_total", qmpOnly: true, Type: counter, Labels: []string{"device"}, Source: "BLOCK_WRITE_THRESHOLD",
		Help: "Write thresholds exceeded (BLOCK_WRITE_THRESHOLD), by device.",
		values: func(st *vmstate.State, s *sink) {
			s.eachDevice(st, func(name string, d *vmstate.BlockDev) {
				if d.ThresholdHits > 0 {
					s.add(float64(d.ThresholdHits), name)
				}
			})
		}},
	{Name: "qmp_block_quorum_failures_total", qmpOnly: true, Type: counter, Labels: []string{"device"}, Source: "QUORUM_FAILURE",
		Help: "Quorum failures (QUORUM_FAILURE), by device." + rateLimitNote,
		values: func(st *vmstate.State, s *sink) {
			s.eachDevice(st, func(name string, d *vmstate.BlockDev) {
				if d.QuorumFailures > 0 {
					s.add(float64(d.QuorumFailures), name)
				}
			})
		}},
	{Name: "qmp_block_quorum_bad_reports_total", qmpOnly: true, Type: counter, Labels: []string{"device", "operation"}, Source: "QUORUM_REPORT_BAD",
		Help: "Quorum children that returned bad data or failed (QUORUM_REPORT_BAD), by device and operation (unknown for QEMU before 2.6, which did not say)." + rateLimitNote,
		values: func(st *vmstate.State, s *sink) {
			s.eachDevice(st, func(name string, d *vmstate.BlockDev) {
				for i, n := range d.QuorumBad {
					op := vmstate.OperationUnknown
					if i < len(vmstate.QuorumOps) {
						op = vmstate.QuorumOps[i]
					}
					if n > 0 {
						s.add(float64(n), name, op)
					}
				}
			})
		}},

	// Jobs.
	{Name: "qmp_block_jobs", qmpOnly: true, Type: gauge, Labels: []string{"type", "status"}, Source: "query-jobs, JOB_STATUS_CHANGE, BLOCK_JOB_*",
		Help:   "Jobs (mirror, commit, stream, backup, ...) that exist now, by type and status.",
		values: jobCounts},
	{Name: "qmp_block_job_progress_bytes", qmpOnly: true, Type: gauge, Labels: []string{"job", "type"}, Source: "query-jobs, BLOCK_JOB_READY",
		Help: "Work a job has done (current-progress; bytes for block jobs).",
		values: func(st *vmstate.State, s *sink) {
			s.eachJob(st, func(id, typ string, j *vmstate.Job) { s.add(float64(j.Progress), id, typ) })
		}},
	{Name: "qmp_block_job_length_bytes", qmpOnly: true, Type: gauge, Labels: []string{"job", "type"}, Source: "query-jobs, BLOCK_JOB_READY",
		Help: "Work a job has to do in total (total-progress; bytes for block jobs).",
		values: func(st *vmstate.State, s *sink) {
			s.eachJob(st, func(id, typ string, j *vmstate.Job) { s.add(float64(j.Length), id, typ) })
		}},
	{Name: "qmp_block_jobs_finished_total", qmpOnly: true, Type: counter, Labels: []string{"type", "result"}, Source: "BLOCK_JOB_COMPLETED, BLOCK_JOB_CANCELLED",
		Help:   "Jobs that finished, by type and result: completed, failed (BLOCK_JOB_COMPLETED with an error) or cancelled.",
		values: func(st *vmstate.State, s *sink) { pairs(st.JobsDone, s) }},
	{Name: "qmp_block_job_errors_total", qmpOnly: true, Type: counter, Labels: []string{"operation", "action"}, Source: "BLOCK_JOB_ERROR",
		Help: "I/O errors met by jobs (BLOCK_JOB_ERROR), by operation and the action taken.",
		values: func(st *vmstate.State, s *sink) {
			for oi, op := range vmstate.IOOperations {
				for ai, act := range vmstate.IOActions {
					s.add(float64(st.JobErrors[oi][ai]), op, act)
				}
			}
		}},

	// Memory.
	{Name: "qmp_balloon_actual_bytes", Type: gauge, Source: "BALLOON_CHANGE, query-balloon",
		Help: "Memory the guest has after ballooning; absent without a balloon device.",
		values: func(st *vmstate.State, s *sink) {
			if st.BalloonOK {
				s.add(float64(st.Balloon))
			}
		}},
	{Name: "qmp_hv_balloon_committed_bytes", qmpOnly: true, Type: gauge, Source: "HV_BALLOON_STATUS_REPORT",
		Help: "Guest memory committed, from the Hyper-V dynamic memory balloon's last status report.",
		values: func(st *vmstate.State, s *sink) {
			if st.HVBalloonOK {
				s.add(float64(st.HVBalloon[0]))
			}
		}},
	{Name: "qmp_hv_balloon_available_bytes", qmpOnly: true, Type: gauge, Source: "HV_BALLOON_STATUS_REPORT",
		Help: "Guest memory available, from the Hyper-V dynamic memory balloon's last status report.",
		values: func(st *vmstate.State, s *sink) {
			if st.HVBalloonOK {
				s.add(float64(st.HVBalloon[1]))
			}
		}},

	// Migration (outgoing).
	{Name: "qmp_migration_status", Type: gauge, Labels: []string{"status"}, Source: "query-migrate, MIGRATION",
		Help:   "The outgoing migration's status: 1 for the current MigrationStatus, 0 for the others. While a migration runs, query-migrate is polled every second, so the end is seen even without the events capability.",
		values: migrationStatus},
	{Name: "qmp_migration_pass", Type: gauge, Source: "MIGRATION_PASS, query-migrate",
		Help:   "Number of the current or last RAM pass (dirty bitmap sync) of the migration.",
		values: migrationFigure(func(m *vmstate.Migration) (float64, bool) { return float64(m.Pass), true })},
	{Name: "qmp_migration_transferred_bytes", Type: gauge, Source: "query-migrate",
		Help:   "RAM transferred by the current or last migration.",
		values: migrationFigure(func(m *vmstate.Migration) (float64, bool) { return float64(m.Transferred), m.HaveRAM })},
	{Name: "qmp_migration_remaining_bytes", Type: gauge, Source: "query-migrate",
		Help:   "RAM remaining to transfer in the current or last migration.",
		values: migrationFigure(func(m *vmstate.Migration) (float64, bool) { return float64(m.Remaining), m.HaveRAM })},
	{Name: "qmp_migration_total_bytes", Type: gauge, Source: "query-migrate",
		Help:   "Total RAM to migrate in the current or last migration.",
		values: migrationFigure(func(m *vmstate.Migration) (float64, bool) { return float64(m.Total), m.HaveRAM })},
	{Name: "qmp_migration_dirty_pages_per_second", Type: gauge, Source: "query-migrate",
		Help:   "Rate at which the guest dirties pages during the migration.",
		values: migrationFigure(func(m *vmstate.Migration) (float64, bool) { return m.DirtyRate, m.HaveRAM })},
	{Name: "qmp_migration_expected_downtime_seconds", Type: gauge, Source: "query-migrate",
		Help:   "QEMU's estimate of the downtime of the running migration.",
		values: migrationFigure(func(m *vmstate.Migration) (float64, bool) { return m.ExpectedDowntime, m.ExpectedDowntime >= 0 })},
	{Name: "qmp_migration_downtime_seconds", Type: gauge, Source: "query-migrate",
		Help:   "Downtime of the last completed migration.",
		values: migrationFigure(func(m *vmstate.Migration) (float64, bool) { return m.Downtime, m.Downtime >= 0 })},
	{Name: "qmp_migration_total_time_seconds", Type: gauge, Source: "query-migrate",
		Help:   "Time the current or last migration has taken.",
		values: migrationFigure(func(m *vmstate.Migration) (float64, bool) { return m.TotalTime, m.TotalTime >= 0 })},
	{Name: "qmp_migration_setup_time_seconds", Type: gauge, Source: "query-migrate",
		Help:   "Time the current or last migration spent in setup.",
		values: migrationFigure(func(m *vmstate.Migration) (float64, bool) { return m.SetupTime, m.SetupTime >= 0 })},
	{Name: "qmp_migrations_total", qmpOnly: true, Type: counter, Labels: []string{"result"}, Source: "MIGRATION, query-migrate",
		Help: "Outgoing migrations this exporter saw end, by result (completed, failed, cancelled).",
		values: func(st *vmstate.State, s *sink) {
			for i, r := range vmstate.MigrationResults {
				s.add(float64(st.MigrationEnds[i]), r)
			}
		}},

	// Consoles.
	{Name: "qmp_vnc_clients", Type: gauge, Source: "VNC_CONNECTED, VNC_DISCONNECTED, query-vnc",
		Help:   "VNC clients connected now; absent when VNC is not available.",
		values: displayClients(vnc)},
	{Name: "qmp_vnc_connections_total", Type: counter, Source: "VNC_CONNECTED",
		Help:   "VNC connections opened.",
		values: displayCounter(vnc, func(d *vmstate.Display) uint64 { return d.Connections })},
	{Name: "qmp_vnc_sessions_total", Type: counter, Source: "VNC_INITIALIZED",
		Help:   "VNC sessions that completed the handshake and authentication.",
		values: displayCounter(vnc, func(d *vmstate.Display) uint64 { return d.Sessions })},
	{Name: "qmp_vnc_handshake_failures_total", Type: counter, Source: "VNC_CONNECTED, VNC_DISCONNECTED",
		Help:   "VNC connections closed before VNC_INITIALIZED: failed or abandoned handshakes or authentication.",
		values: displayCounter(vnc, func(d *vmstate.Display) uint64 { return d.Failed })},
	{Name: "qmp_spice_clients", Type: gauge, Source: "SPICE_CONNECTED, SPICE_DISCONNECTED, query-spice",
		Help:   "SPICE channels connected now (a SPICE client opens several); absent when SPICE is not available.",
		values: displayClients(spice)},
	{Name: "qmp_spice_connections_total", Type: counter, Source: "SPICE_CONNECTED",
		Help:   "SPICE channel connections opened.",
		values: displayCounter(spice, func(d *vmstate.Display) uint64 { return d.Connections })},
	{Name: "qmp_spice_sessions_total", qmpOnly: true, Type: counter, Source: "SPICE_INITIALIZED",
		Help:   "SPICE sessions whose main channel completed the handshake and authentication.",
		values: displayCounter(spice, func(d *vmstate.Display) uint64 { return d.Sessions })},
	{Name: "qmp_spice_handshake_failures_total", Type: counter, Source: "SPICE_CONNECTED, SPICE_DISCONNECTED",
		Help:   "SPICE channel connections closed before SPICE_INITIALIZED.",
		values: displayCounter(spice, func(d *vmstate.Display) uint64 { return d.Failed })},
}

// exporterMetrics are the metrics that are not per VM, in README order:
// they have no vm label, and their values come from their own collectors
// rather than from a VM's state.
var exporterMetrics = []*Metric{listenerConnections, uuidConflicts, eventLogDropped}

// listenerConnections is the listeners' metric; its values come from
// ListenerCollector.
var listenerConnections = &Metric{Name: "qmp_listener_connections_total", Type: counter, Labels: []string{"listener", "result"}, Source: "listener sockets (QEMU dialling in)",
	Help: "Connections QEMUs opened to a listener socket, by result: accepted (identified and attached to its VM), refused (peer uid not allowed, too many handshakes at once in all or from one process, or the limit of dialled-in VMs reached while all are connected) or failed (handshake or identification failed)."}

// uuidConflicts is the fleet's count of VMs sharing a UUID; its value
// comes from FleetCollector.
var uuidConflicts = &Metric{Name: "qmp_uuid_conflicts_total", Type: counter, Source: "query-uuid, query-name; SO_PEERCRED (the QEMU process behind a unix socket)",
	Help: "VMs found sharing their UUID with a different VM (another -name, or another QEMU process behind a unix socket), checked at each scrape: both are shown, each under its own vm label. A VM counts once when a scrape first finds its conflict, and again if the conflict ends and starts again. One QEMU reached twice (same UUID and -name, and the same process where known) is shown once and not counted."}

// eventLogDropped counts what --events.log-file could not take; it exists
// only with an event log, and its value comes from EventLogCollector.
var eventLogDropped = &Metric{Name: "qmp_event_log_dropped_total", Type: counter, Source: "--events.log-file",
	Help: "Events not written to the event log (--events.log-file) because its queue was full or the file could not be written. The events are still counted in the VMs' metrics and kept on /events."}

// MetricInfo describes one metric the exporter serves.
type MetricInfo struct {
	Name, Type, Source, Help string
	// Libvirt says whether VMs seen through libvirt have the metric.
	Libvirt bool
	// Labels are all the metric's variable labels, vm first for per-VM
	// metrics (a VM's configured labels come on top).
	Labels []string
}

// Metrics describes every metric the exporter's collector serves, in
// README order, from their one definition: for documentation and for
// the checks of dashboards and alert rules.
func Metrics() []MetricInfo {
	out := make([]MetricInfo, 0, len(vmMetrics)+len(exporterMetrics))
	for _, m := range vmMetrics {
		out = append(out, MetricInfo{Name: m.Name, Type: m.Type, Source: m.Source, Help: m.Help, Libvirt: !m.qmpOnly,
			Labels: append([]string{"vm"}, m.Labels...)})
	}
	for _, m := range exporterMetrics {
		out = append(out, MetricInfo{Name: m.Name, Type: m.Type, Source: m.Source, Help: m.Help, Labels: slices.Clone(m.Labels)})
	}
	return out
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// runStatus is qmp_vm_status: every QEMU RunState, and a state a newer
// QEMU reported that this exporter does not know.
func runStatus(st *vmstate.State, s *sink) {
	known := false
	for _, rs := range vmstate.RunStates {
		v := 0.0
		if st.Up && rs == st.Status {
			v, known = 1, true
		}
		s.add(v, rs)
	}
	if st.Up && !known && st.Status != "" {
		s.add(1, st.Status)
	}
}

// guestReasons sends SHUTDOWN's or RESET's counters, guest=false first.
func guestReasons(m map[vmstate.GuestReason]uint64, s *sink) {
	keys := s.k.reasons[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b vmstate.GuestReason) int {
		if a.Guest != b.Guest {
			if !a.Guest {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Reason, b.Reason)
	})
	s.k.reasons = keys
	for _, k := range keys {
		s.add(float64(m[k]), strconv.FormatBool(k.Guest), k.Reason)
	}
}

// pairs sends counters keyed by two label values.
func pairs[V int | uint64](m map[[2]string]V, s *sink) {
	for _, k := range sortedPairs(&s.k.pairs, m) {
		s.add(float64(m[k]), k[0], k[1])
	}
}

// counts sends counters keyed by one label value.
func counts(m map[string]uint64, s *sink) {
	for _, k := range sortedInto(&s.k.strs, m) {
		s.add(float64(m[k]), k)
	}
}

// ioErrors is qmp_block_io_errors_total: for each device, every
// operation and action from 0, operation unknown for a libvirt domain
// (libvirt never says which) and read and write otherwise; an unknown
// operation of another VM shows once counted.
func ioErrors(st *vmstate.State, s *sink) {
	unknown := len(vmstate.IOOperations)
	s.eachDevice(st, func(name string, d *vmstate.BlockDev) {
		for oi := range d.IOErrors {
			op := vmstate.OperationUnknown
			if oi < unknown {
				op = vmstate.IOOperations[oi]
			}
			if (oi < unknown) == s.libvirt && d.IOErrors[oi] == [3]uint64{} {
				continue
			}
			for ai, act := range vmstate.IOActions {
				s.add(float64(d.IOErrors[oi][ai]), name, op, act)
			}
		}
	})
}

func orUnknown(v string) string {
	if v == "" {
		return "unknown"
	}
	return v
}

// jobCounts is qmp_block_jobs: the jobs by type and status.
func jobCounts(st *vmstate.State, s *sink) {
	if len(st.Jobs) == 0 {
		return
	}
	n := map[[2]string]int{}
	for _, j := range st.Jobs {
		n[[2]string{orUnknown(j.Type), orUnknown(j.Status)}]++
	}
	pairs(n, s)
}

// migrationStatus is qmp_migration_status, while the session is up and
// a status is known.
func migrationStatus(st *vmstate.State, s *sink) {
	m := &st.Migration
	if !st.Up || !m.Known {
		return
	}
	for _, status := range vmstate.MigrationStates {
		s.add(boolValue(status == m.Status), status)
	}
	if !slices.Contains(vmstate.MigrationStates, m.Status) {
		s.add(1, m.Status)
	}
}

// migrationFigure reads a figure of a known migration (one that is not
// "none") while the session is up; v says whether the figure is known
// (the RAM figures once query-migrate gave them, times that are not -1).
func migrationFigure(v func(m *vmstate.Migration) (float64, bool)) func(*vmstate.State, *sink) {
	return func(st *vmstate.State, s *sink) {
		if m := &st.Migration; st.Up && m.Known && m.Status != "none" {
			if f, ok := v(m); ok {
				s.add(f)
			}
		}
	}
}

func vnc(st *vmstate.State) *vmstate.Display   { return &st.VNC }
func spice(st *vmstate.State) *vmstate.Display { return &st.Spice }

// displayShown reports whether a console's metrics are shown: when it is
// enabled, or has had connections.
func displayShown(d *vmstate.Display) bool { return d.Enabled == 1 || d.Connections > 0 }

// displayClients is a console's client gauge: while the session is up
// and the console enabled.
func displayClients(of func(*vmstate.State) *vmstate.Display) func(*vmstate.State, *sink) {
	return func(st *vmstate.State, s *sink) {
		if d := of(st); st.Up && d.Enabled == 1 {
			s.add(float64(d.Clients))
		}
	}
}

// displayCounter is one of a console's counters, shown with the console.
func displayCounter(of func(*vmstate.State) *vmstate.Display, v func(*vmstate.Display) uint64) func(*vmstate.State, *sink) {
	return func(st *vmstate.State, s *sink) {
		if d := of(st); displayShown(d) {
			s.add(float64(v(d)))
		}
	}
}
