// Package libvirtd is the libvirt source: it watches every domain of a
// libvirtd through its read-only socket, without touching a domain.
//
// libvirtd holds every domain's QMP monitor and relays what QEMU says as
// typed events to any client that subscribes; the read-only socket gives
// every domain's events but refuses anything that would change a domain.
// The source subscribes to those events, turns each back into the QMP
// event it stands for (mapping.go) and folds it into the domain's VM in
// the fleet; it re-reads each domain's state when the connection is made,
// when a domain starts, and every refresh interval. The calls it may
// make are an allow-list checked on every frame before it is written
// (guard.go), so it can neither change nor taint a domain
// (QEMUDomainMonitorCommand would), whatever a caller asks.
package libvirtd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/source"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// Options configure the source.
type Options struct {
	// Socket is libvirtd's socket; its read-only one is meant
	// (/run/libvirt/libvirt-sock-ro).
	Socket string
	// DialTimeout bounds connecting; CallTimeout each call. A call that
	// times out drops the connection, which is then made again.
	DialTimeout, CallTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between failed connections.
	MinBackoff, MaxBackoff time.Duration
	// RefreshInterval is how often every domain's state is read again.
	RefreshInterval time.Duration
	// MaxDomains bounds the domains kept; at the bound, the one gone
	// longest is forgotten for a new one, and a new one is left out while
	// all are running.
	MaxDomains int
	// Labels are added to every series of the domains.
	Labels map[string]string
	// Logger receives the source's logs; nil discards them.
	Logger log.Logger

	// dialer replaces the unix socket in tests.
	dialer socket.Dialer
}

// DefaultMaxDomains is Options.MaxDomains when it is zero.
const DefaultMaxDomains = 1024

func (o *Options) setDefaults() {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 5 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.RefreshInterval <= 0 {
		o.RefreshInterval = 30 * time.Second
	}
	if o.MaxDomains <= 0 {
		o.MaxDomains = DefaultMaxDomains
	}
	if o.Logger == nil {
		o.Logger = log.NewNopLogger()
	}
	if o.dialer == nil {
		o.dialer = dialers.NewLocal(dialers.WithSocket(o.Socket), dialers.WithLocalTimeout(o.DialTimeout))
	}
}

// Source keeps the VMs of one libvirtd's domains.
type Source struct {
	opts   Options
	fleet  *fleet.Fleet
	logger log.Logger

	mu   sync.Mutex
	doms map[string]*domain // by UUID
	full bool               // a domain was left out at MaxDomains (logged once)
}

var _ source.Source = (*Source)(nil)

// domain is one libvirt domain the source keeps.
type domain struct {
	vm   *fleet.VM
	name string
	// vnc, spice and their ports: the domain's displays, from its XML
	// (under the VM's lock); a graphics event is told apart by the port
	// the client reached.
	vnc, spice        bool
	vncPort, spiceTCP string
	// applied counts the events folded into the VM (under its lock). A
	// read during which it changed is older than those events, and leaves
	// what they said; rereads counts such reads in a row.
	applied uint64
	rereads int
	// ioSession is the session that last read the domain running (under
	// the VM's lock): from then on, every error that pauses it comes as
	// an event of that session, so the disks' io-status is known while it
	// lasts.
	ioSession *session
	// migSeq counts the events that change the migration's state (a
	// pass, a start, a stop); a poll during which it changed is older
	// than them. completedKey identifies the statistics of the domain's
	// last completed job as last read (see applyJob).
	migSeq       uint64
	completedKey string
}

// New returns a source for the libvirtd at opts.Socket, whose domains
// live in f.
func New(f *fleet.Fleet, opts Options) *Source {
	opts.setDefaults()
	return &Source{opts: opts, fleet: f, doms: make(map[string]*domain),
		logger: log.With(opts.Logger, "libvirt", opts.Socket)}
}

// stableSession is how long a connection must last for the backoff to
// start again from the minimum.
const stableSession = 10 * time.Second

// Run connects, follows the domains, and reconnects when libvirtd goes
// away (a restart ends every subscription), until ctx ends. While it is
// not connected, every domain shows qmp_up 0.
func (s *Source) Run(ctx context.Context) error {
	failures := 0
	for {
		start := time.Now()
		err := s.session(ctx)
		s.markAllDown(time.Now())
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) >= stableSession {
			failures = 0
		} else {
			failures++
		}
		lg := level.Debug(s.logger)
		if failures <= 1 {
			lg = level.Warn(s.logger)
		}
		lg.Log("msg", "libvirt connection lost or failed; reconnecting", "consecutive_failures", failures, "err", err)
		t := time.NewTimer(s.backoff(failures))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		s.reap(time.Now())
	}
}

// backoff is source.Backoff between MinBackoff and MaxBackoff.
func (s *Source) backoff(n int) time.Duration {
	return source.Backoff(s.opts.MinBackoff, s.opts.MaxBackoff, n)
}

// eventIDs are the domain events the source subscribes to: those
// translate turns into QMP events.
var eventIDs = []libvirt.DomainEventID{
	libvirt.DomainEventIDLifecycle, libvirt.DomainEventIDReboot, libvirt.DomainEventIDRtcChange,
	libvirt.DomainEventIDWatchdog, libvirt.DomainEventIDIoErrorReason, libvirt.DomainEventIDTrayChange, libvirt.DomainEventIDBalloonChange,
	libvirt.DomainEventIDPmsuspend, libvirt.DomainEventIDPmsuspendDisk, libvirt.DomainEventIDPmwakeup,
	libvirt.DomainEventIDDeviceRemoved, libvirt.DomainEventIDGraphics,
	libvirt.DomainEventIDMigrationIteration,
}

// Not job-completed: go-libvirt decodes events without its decoder of
// typed parameters, so it drops every job-completed event. The end of a
// migration is seen by polling its job instead (pollJob).

// session is one connection: subscribe, read every domain, then follow
// events and refresh until the connection ends or ctx does.
func (s *Source) session(ctx context.Context) error {
	c := &conn{dialer: guardedDialer{inner: s.opts.dialer}, timeout: s.opts.CallTimeout, dead: make(chan struct{})}
	l := libvirt.NewWithDialer(c)
	if err := c.call(l.Connect); err != nil {
		return fmt.Errorf("connecting to %s: %w", s.opts.Socket, err)
	}
	disconnected := l.Disconnected()
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		c.close() // ends every subscription: their channels close
		wg.Wait()
	}()
	var version uint64
	if err := c.call(func() (err error) { version, err = l.ConnectGetVersion(); return err }); err != nil {
		return err
	}
	ses := &session{s: s, l: l, c: c, version: qemuVersion(version), wake: make(chan struct{}, 1)}
	for _, id := range eventIDs {
		var ch <-chan any
		err := c.call(func() (err error) { ch, err = l.SubscribeEvents(sctx, id, libvirt.OptDomain{}); return err })
		if err != nil {
			return fmt.Errorf("subscribing to libvirt's %v events: %w", id, err)
		}
		wg.Go(func() {
			for msg := range ch {
				ses.handle(msg)
			}
		})
	}
	if err := ses.readAll(); err != nil {
		return err
	}
	level.Info(s.logger).Log("msg", "libvirt connected", "qemu_version", ses.version, "domains", s.count())
	tick := time.NewTicker(s.opts.RefreshInterval)
	defer tick.Stop()
	poll := time.NewTicker(migrationPoll)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-disconnected:
			return errors.New("libvirtd closed the connection")
		case <-c.dead:
			return c.err()
		case <-tick.C:
			if err := ses.readAll(); err != nil {
				return err
			}
			s.reap(time.Now())
		case <-ses.wake:
			if err := ses.readPending(); err != nil {
				return err
			}
		case <-poll.C:
			if err := ses.pollMigrations(ses.pollJob); err != nil {
				return err
			}
		}
	}
}

// session is one connection's state.
type session struct {
	s       *Source
	l       *libvirt.Libvirt
	c       *conn
	version string // QEMU's, from libvirt

	mu        sync.Mutex
	pending   map[string]libvirt.Domain // domains to read again, by UUID
	migrating map[string]pollEntry      // domains whose migration is polled, by UUID
	pollGen   uint64
	wake      chan struct{}
}

// handle folds one event into its domain's VM. It runs on go-libvirt's
// event goroutines, so it never calls libvirt: a domain to read again is
// left to the session's loop.
func (ses *session) handle(msg any) {
	now := time.Now()
	if g, ok := msg.(*libvirt.DomainEventCallbackGraphicsMsg); ok {
		ses.graphics(g.Msg, now)
		return
	}
	t, ok := translate(msg, now)
	if !ok {
		return
	}
	d := ses.s.ensure(t.dom, ses.version, now)
	if t.resync {
		ses.readLater(t.dom)
	}
	if d == nil {
		return
	}
	st := d.vm.Lock()
	d.applied++
	if t.pass != 0 || t.migrate != nil {
		d.migSeq++
	}
	if t.pass == 1 && !st.Migration.InProgress() {
		// A migration starts: QEMU sends its first pass in setup. (A
		// later pass, handled after the end, starts nothing.)
		st.SetMigrate(vmstate.MigrateInfo{Status: "setup"})
	}
	if t.event.Name != "" {
		d.vm.Apply(t.event) // the queries it may ask for are the session's reads
	}
	if m := t.migrate; m != nil && (m.Status == "none" || st.Migration.InProgress()) {
		// An end only of a migration seen running, so that it counts once.
		st.SetMigrate(*m)
	}
	if t.status != "" {
		st.SetStatus(t.status)
	}
	if t.stopped {
		stopped(st, now)
	}
	d.vm.Unlock()
	if t.pass != 0 {
		ses.pollMigration(t.dom) // registered once the setup is applied
	}
}

// stopped records that the domain's QEMU is gone: down, and no client on
// its display any more. (A lost connection to libvirtd only marks the
// domains down: their QEMUs and clients may well be there still.)
func stopped(st *vmstate.State, now time.Time) {
	st.MarkDown(now)
	st.VNC.Set(st.VNC.Enabled, 0)
	st.Spice.Set(st.Spice.Enabled, 0)
}

// setDisplay records whether the domain has the display. libvirt does not
// say how many clients a display has now: the count is what the events
// since the exporter started told.
func setDisplay(d *vmstate.Display, on bool) {
	if on {
		d.Set(1, int(d.Clients))
	} else {
		d.Set(0, 0)
	}
}

// graphics folds a graphics event of the domain's VNC or SPICE display.
func (ses *session) graphics(m libvirt.DomainEventGraphicsMsg, now time.Time) {
	d := ses.s.ensure(m.Dom, ses.version, now)
	if d == nil {
		return
	}
	d.vm.Lock()
	var ev qmp.Event
	var ok bool
	switch {
	case d.vnc && d.vncPort == m.Local.Service, d.vnc && !d.spice && d.vncPort == "":
		ev, ok = graphicsEvent(vncEvents, "service", m, now)
	case d.spice && d.spiceTCP == m.Local.Service:
		ev, ok = graphicsEvent(spiceEvents, "port", m, now)
	}
	if ok {
		d.vm.Apply(ev)
	}
	d.vm.Unlock()
}

// readLater asks the session's loop to read dom's state.
func (ses *session) readLater(dom libvirt.Domain) {
	ses.mu.Lock()
	if ses.pending == nil {
		ses.pending = make(map[string]libvirt.Domain)
	}
	if len(ses.pending) < ses.s.opts.MaxDomains {
		ses.pending[uuidString(dom.UUID)] = dom
	}
	ses.mu.Unlock()
	select {
	case ses.wake <- struct{}{}:
	default:
	}
}

// readPending reads the domains events asked for.
func (ses *session) readPending() error {
	ses.mu.Lock()
	doms := ses.pending
	ses.pending = nil
	ses.mu.Unlock()
	for _, dom := range doms {
		if err := ses.read(dom); err != nil {
			return err
		}
	}
	return nil
}

// readAll lists the running domains and reads each; the domains kept
// that are not running any more are marked down.
func (ses *session) readAll() error {
	var doms []libvirt.Domain
	err := ses.c.call(func() (err error) {
		doms, _, err = ses.l.ConnectListAllDomains(1, libvirt.ConnectListDomainsActive)
		return err
	})
	if err != nil {
		return err
	}
	running := make(map[string]bool, len(doms))
	for _, dom := range doms {
		running[uuidString(dom.UUID)] = true
		if err := ses.read(dom); err != nil {
			return err
		}
	}
	now := time.Now()
	for _, d := range ses.s.snapshot() {
		st := d.vm.LockRead()
		gone := st.Up && !running[st.Info.UUID]
		d.vm.Unlock()
		if gone {
			stopped(d.vm.Lock(), now)
			d.vm.Unlock()
		}
	}
	return nil
}

// read reads one domain and applies what it found; a domain that is gone
// is marked down. Events that come meanwhile are newer than what it
// read: it then leaves the VM as they made it, and reads again.
func (ses *session) read(dom libvirt.Domain) error {
	d := ses.s.ensure(dom, ses.version, time.Now())
	if d == nil {
		return nil
	}
	d.vm.LockRead()
	applied := d.applied
	d.vm.Unlock()
	r, err := ses.fetch(dom)
	if err != nil {
		return err
	}
	ses.settle(d, dom, applied, r)
	return nil
}

// settle applies r, a read of dom begun when d.applied was applied, unless
// events came since: then it asks for another read, maxRereads times in a
// row at most.
func (ses *session) settle(d *domain, dom libvirt.Domain, applied uint64, r domainRead) {
	st := d.vm.Lock()
	stale := d.applied != applied
	poll := false
	if stale {
		stale = d.rereads < maxRereads
		d.rereads++
	} else {
		d.rereads = 0
		poll = ses.apply(d, st, r, time.Now())
	}
	d.vm.Unlock()
	if stale {
		ses.readLater(dom)
	}
	if poll {
		ses.pollMigration(dom)
	}
}

// apply applies a fresh read of the domain to its VM, and reports whether
// its migration is to be polled: one that runs, or one the VM has
// running that may have ended while the exporter was not connected.
func (ses *session) apply(d *domain, st *vmstate.State, r domainRead, now time.Time) bool {
	if !r.active {
		stopped(st, now)
		return false
	}
	st.MarkUp(now)
	st.SetStatus(r.status)
	if r.migration != nil {
		st.SetMigrate(*r.migration)
	} else if !st.Migration.InProgress() {
		// The base against which a migration's end is judged.
		d.completedKey = r.completedKey
	}
	if x := r.x; x != nil {
		if disks := x.blockEntries(); disks != nil {
			ses.ioStatuses(d, st, r.status, disks)
			st.SetBlock(disks)
		}
		st.SetOpenStack(x.openStack())
		st.SetBalloon(r.balloon, r.haveBalloon)
		d.vncPort, d.vnc = x.graphicsPort("vnc")
		d.spiceTCP, d.spice = x.graphicsPort("spice")
		setDisplay(&st.VNC, d.vnc)
		setDisplay(&st.Spice, d.spice)
	}
	return st.Migration.InProgress()
}

// maxRereads bounds the reads in a row that events make stale (a domain
// with a steady stream of events); the next refresh reads it anyway.
const maxRereads = 3

// domainRead is what one read of a domain found.
type domainRead struct {
	status string
	active bool       // the domain's QEMU runs
	x      *domainXML // its live XML; nil if it could not be read
	// balloon is the balloon's size in bytes, if it has one.
	balloon     uint64
	haveBalloon bool
	// migration is the outgoing migration that runs, if one does;
	// completedKey identifies the statistics of the last completed job.
	migration    *vmstate.MigrateInfo
	completedKey string
}

// fetch reads a domain's run state and, while it runs, its live XML,
// balloon and migration.
func (ses *session) fetch(dom libvirt.Domain) (domainRead, error) {
	var r domainRead
	var state, reason int32
	err := ses.c.call(func() (err error) { state, reason, err = ses.l.DomainGetState(dom, 0); return err })
	if libvirt.IsNotFound(err) {
		state, err = int32(libvirt.DomainShutoff), nil
	}
	if err != nil {
		return r, err
	}
	if r.status, r.active = runState(state, reason); !r.active {
		return r, nil
	}
	var desc string
	err = ses.c.call(func() (err error) { desc, err = ses.l.DomainGetXMLDesc(dom, 0); return err })
	switch {
	case libvirt.IsNotFound(err):
		r.active = false
		return r, nil
	case err != nil:
		return r, err
	}
	if r.x, err = readXML(desc); err != nil {
		level.Warn(ses.s.logger).Log("msg", "cannot read a domain's XML", "domain", dom.Name, "err", err)
	}
	if r.x != nil && r.x.hasBalloon() {
		var stats []libvirt.DomainMemoryStat
		err := ses.c.call(func() (err error) {
			stats, err = ses.l.DomainMemoryStats(dom, uint32(libvirt.DomainMemoryStatNr), 0)
			return err
		})
		if err != nil && !refused(err) {
			return r, err
		}
		for _, m := range stats {
			if libvirt.DomainMemoryStatTags(m.Tag) == libvirt.DomainMemoryStatActualBalloon {
				r.balloon, r.haveBalloon = m.Val*1024, true
			}
		}
	}
	// A running job is taken for a migration once it counts passes: a
	// memory-only dump has memory figures, but no passes (and sends no
	// migration-iteration, which starts the polling of a migration).
	j, err := ses.jobStats(dom, 0)
	if err != nil {
		return r, err
	}
	if j.migration && j.passes && j.info.Status == "active" {
		r.migration = &j.info
	}
	done, err := ses.jobStats(dom, libvirt.DomainJobStatsCompleted|libvirt.DomainJobStatsKeepCompleted)
	r.completedKey = done.key
	return r, err
}

// ioStatuses corrects the disks' io-status for a domain that is not
// running. Which disk failed libvirt does not say (go-libvirt cannot
// decode virDomainGetDiskErrors' reply), but its events do: if this
// session read the domain running (which a cont that reset every status
// preceded), every error since came as an event of this session, and the
// VM keeps what they said; otherwise the statuses are not known. So are
// they for a domain paused on an error that no disk holds: the resume and
// the error came on two subscriptions and were folded out of order.
func (ses *session) ioStatuses(d *domain, st *vmstate.State, status string, disks []vmstate.BlockEntry) {
	if status == "running" {
		d.ioSession = ses
		return
	}
	known := d.ioSession == ses
	if known && status == "io-error" {
		known = slices.ContainsFunc(disks, func(e vmstate.BlockEntry) bool {
			dev := st.Devices[vmstate.CleanLabel(e.Qdev)]
			return dev != nil && (dev.IOStatus == "failed" || dev.IOStatus == "nospace")
		})
	}
	for i := range disks {
		switch {
		case disks[i].IOStatus == "":
		case known:
			disks[i].KeepIOStatus = true
		default:
			disks[i].IOStatus = ""
		}
	}
}

// refused reports whether err is libvirtd's answer that it cannot make
// the call for that domain now (gone, not running, ...): the connection
// is fine, only that read is lost.
func refused(err error) bool {
	var e libvirt.Error
	return errors.As(err, &e)
}

// known returns the domain the source keeps for dom, or nil.
func (s *Source) known(dom libvirt.Domain) *domain {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.doms[uuidString(dom.UUID)]
}

// ensure returns the domain's VM, adding it to the fleet if it is new
// and there is room, and brings its identity up to date; nil when there
// is no room.
func (s *Source) ensure(dom libvirt.Domain, version string, now time.Time) *domain {
	uuid := uuidString(dom.UUID)
	s.mu.Lock()
	d := s.doms[uuid]
	if d == nil {
		d = s.addLocked(dom, uuid, now)
	}
	s.mu.Unlock()
	if d == nil {
		return nil
	}
	// Read first: an unchanged identity must not mark the VM changed,
	// or every refresh would render every domain's series again.
	st := d.vm.LockRead()
	changed := !st.Synced || st.Info.Name != vmstate.CleanLabel(dom.Name) || st.Info.Version != version
	d.vm.Unlock()
	if changed {
		d.vm.Lock().SetInfo(vmstate.Info{Name: dom.Name, UUID: uuid, Version: version})
		d.vm.Unlock()
	}
	return d
}

// addLocked adds a new domain, making room at MaxDomains by forgetting
// the one gone longest. Called with s.mu held.
func (s *Source) addLocked(dom libvirt.Domain, uuid string, now time.Time) *domain {
	if len(s.doms) >= s.opts.MaxDomains && !s.forgetOldestLocked() {
		if !s.full {
			s.full = true
			level.Warn(s.logger).Log("msg", "too many libvirt domains, all running; leaving new ones out", "max_domains", s.opts.MaxDomains, "domain", dom.Name)
		}
		return nil
	}
	vm, err := s.fleet.Add("libvirt\x00"+uuid, fleet.Meta{DefaultName: vmstate.CleanLabel(dom.Name), Labels: s.opts.Labels,
		HideWhenStale: true, Address: "libvirt:" + dom.Name, Kind: fleet.Libvirt}, now)
	if err != nil {
		level.Error(s.logger).Log("msg", "cannot keep libvirt domain", "domain", dom.Name, "err", err)
		return nil
	}
	d := &domain{vm: vm, name: dom.Name}
	s.doms[uuid] = d
	return d
}

// forgetOldestLocked forgets the domain that has been down longest, and
// reports whether there was one. Called with s.mu held.
func (s *Source) forgetOldestLocked() bool {
	var oldest string
	var since time.Time
	for uuid, d := range s.doms {
		st := d.vm.LockRead()
		down, at := !st.Up, st.DownSince
		d.vm.Unlock()
		if down && (oldest == "" || at.Before(since)) {
			oldest, since = uuid, at
		}
	}
	if oldest == "" {
		return false
	}
	s.fleet.Remove(s.doms[oldest].vm)
	delete(s.doms, oldest)
	return true
}

// reap forgets the domains that have been down for the fleet's
// StaleAfter: their series go.
func (s *Source) reap(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for uuid, d := range s.doms {
		stale := d.vm.LockRead().Stale(now, s.fleet.StaleAfter())
		d.vm.Unlock()
		if stale {
			s.fleet.Remove(d.vm)
			delete(s.doms, uuid)
		}
	}
}

func (s *Source) snapshot() []*domain {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*domain, 0, len(s.doms))
	for _, d := range s.doms {
		out = append(out, d)
	}
	return out
}

func (s *Source) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.doms)
}

// markAllDown marks every domain down: the connection to libvirtd is
// gone, so nothing is known of them until it is back.
func (s *Source) markAllDown(now time.Time) {
	for _, d := range s.snapshot() {
		d.vm.Lock().MarkDown(now)
		d.vm.Unlock()
	}
}

// conn is one connection's socket, with the timer that bounds each call
// (go-libvirt's calls take no context: a call that does not return in
// time closes the socket, which ends it).
type conn struct {
	dialer  guardedDialer
	timeout time.Duration

	mu    sync.Mutex
	nc    net.Conn
	cause error
	dead  chan struct{}
	once  sync.Once
}

// Dial implements socket.Dialer for go-libvirt.
func (c *conn) Dial() (net.Conn, error) {
	nc, err := c.dialer.Dial()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.nc = nc
	c.mu.Unlock()
	return nc, nil
}

// call runs fn, closing the socket if it takes longer than the timeout.
func (c *conn) call(fn func() error) error {
	t := time.AfterFunc(c.timeout, func() { c.fail(fmt.Errorf("libvirt did not answer within %s", c.timeout)) })
	err := fn()
	if !t.Stop() {
		return c.err()
	}
	return err
}

func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.cause == nil {
		c.cause = err
	}
	nc := c.nc
	c.mu.Unlock()
	if nc != nil {
		nc.Close()
	}
	c.once.Do(func() { close(c.dead) })
}

func (c *conn) close() { c.fail(errors.New("connection closed")) }

func (c *conn) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cause
}
