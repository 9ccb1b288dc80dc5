package libvirtd

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
)

// A domain's outgoing migration. libvirt relays each pass as a
// migration-iteration event, but not the migration's end: its
// job-completed event is dropped by go-libvirt, whose event decoder has
// no decoder of typed parameters. So from the first pass the session
// polls the domain's job statistics, as the QMP source polls
// query-migrate, until the job ends; how it ended, the domain's stopped
// event says (saved or migrated: completed) or libvirt's statistics of
// the completed job, which it keeps for successful jobs only.

// migrationPoll is how often the statistics of a running migration are
// read.
const migrationPoll = time.Second

// pollEntry is a domain whose migration the session polls; gen tells a
// registration made during a poll from the one the poll ended.
type pollEntry struct {
	dom libvirt.Domain
	gen uint64
}

// pollMigration has the session poll dom's migration until it ends.
func (ses *session) pollMigration(dom libvirt.Domain) {
	ses.mu.Lock()
	defer ses.mu.Unlock()
	if ses.migrating == nil {
		ses.migrating = make(map[string]pollEntry)
	}
	uuid := uuidString(dom.UUID)
	if _, polled := ses.migrating[uuid]; polled || len(ses.migrating) < ses.s.opts.MaxDomains {
		ses.pollGen++
		ses.migrating[uuid] = pollEntry{dom: dom, gen: ses.pollGen}
	}
}

// pollMigrations polls each polled migration (with pollJob, but for
// tests), and stops polling those that ended, unless registered again
// meanwhile.
func (ses *session) pollMigrations(poll func(libvirt.Domain) (bool, error)) error {
	ses.mu.Lock()
	entries := maps.Clone(ses.migrating)
	ses.mu.Unlock()
	for uuid, e := range entries {
		again, err := poll(e.dom)
		if err != nil {
			return err
		}
		if !again {
			ses.mu.Lock()
			if ses.migrating[uuid].gen == e.gen {
				delete(ses.migrating, uuid)
			}
			ses.mu.Unlock()
		}
	}
	return nil
}

// pollJob reads dom's job statistics and applies them (applyJob); it
// reports whether to poll again. A domain that is not running any more
// ends the polling: its stopped event tells how the migration ended.
func (ses *session) pollJob(dom libvirt.Domain) (bool, error) {
	d := ses.s.known(dom)
	if d == nil {
		return false, nil
	}
	d.vm.LockRead()
	seq := d.migSeq
	d.vm.Unlock()
	cur, err := ses.jobStats(dom, 0)
	if err != nil || cur.refused {
		return false, err
	}
	var done jobRead
	if !cur.runs() {
		done, err = ses.jobStats(dom, libvirt.DomainJobStatsCompleted|libvirt.DomainJobStatsKeepCompleted)
		if err != nil || done.refused {
			return false, err
		}
	}
	st := d.vm.Lock()
	defer d.vm.Unlock()
	if d.migSeq != seq {
		return true, nil // events came meanwhile, newer than what was read
	}
	return d.applyJob(st, cur, done, log.With(ses.s.logger, "domain", dom.Name)), nil
}

// applyJob applies a poll: the figures of a migration that runs, or the
// end of the one the VM has running. libvirt replaces the statistics of
// the completed job when a job succeeds only: new ones (a key other than
// the last read) are this migration's, completed; the same ones mean it
// failed or was cancelled, which libvirt does not tell apart, so the
// status is then not known. It reports whether to poll again.
func (d *domain) applyJob(st *vmstate.State, cur, done jobRead, logger log.Logger) bool {
	if cur.runs() {
		st.SetMigrate(cur.info)
		return true
	}
	if !st.Migration.InProgress() {
		return false // none runs, or its end is known
	}
	if done.migration && done.key != "" && done.key != d.completedKey {
		st.SetMigrate(done.info)
	} else {
		level.Debug(logger).Log("msg", "a migration ended without new statistics of a completed job: failed or cancelled",
			"job", cur.key, "completed_job", done.key)
		st.MigrationEndUnknown()
	}
	d.completedKey = done.key
	d.applied++ // a read under way is older than this
	return false
}

// jobRead is what one read of a domain's job statistics found.
type jobRead struct {
	info      vmstate.MigrateInfo
	migration bool   // the job is a migration out, info its statistics
	passes    bool   // the statistics count passes: a migration, not a memory-only dump
	key       string // identifies the statistics; "" when there are none
	refused   bool   // libvirt refused the call: the domain is not running
}

// runs reports whether the job is a migration that runs.
func (j jobRead) runs() bool { return j.migration && runs(j.info) }

// jobStats reads dom's job statistics (virDomainGetJobStats with flags).
func (ses *session) jobStats(dom libvirt.Domain, flags libvirt.DomainGetJobStatsFlags) (jobRead, error) {
	var typ int32
	var params []libvirt.TypedParam
	err := ses.c.call(func() (err error) { typ, params, err = ses.l.DomainGetJobStats(dom, flags); return err })
	if refused(err) {
		return jobRead{refused: true}, nil
	}
	if err != nil {
		return jobRead{}, err
	}
	j := jobRead{key: statsKey(typ, params)}
	j.info, j.migration = migrateInfo(typ, params)
	j.passes = slices.ContainsFunc(params, func(p libvirt.TypedParam) bool { return p.Field == "memory_iteration" })
	return j, nil
}

// statsKey identifies a job's statistics by their type and every
// parameter; "" for no job.
func statsKey(typ int32, params []libvirt.TypedParam) string {
	if libvirt.DomainJobType(typ) == libvirt.DomainJobNone {
		return ""
	}
	fields := make([]string, 0, len(params))
	for _, p := range params {
		fields = append(fields, fmt.Sprintf("%s=%v", p.Field, p.Value.I))
	}
	sort.Strings(fields)
	return fmt.Sprintf("%d|%s", typ, strings.Join(fields, "|"))
}
