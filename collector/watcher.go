package collector

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// Options configure every watcher of a Manager.
type Options struct {
	// DialTimeout bounds connecting plus the QMP handshake.
	DialTimeout time.Duration
	// CommandTimeout bounds each query. A query that times out means a
	// hung QEMU: the session is dropped and dialled again.
	CommandTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between failed attempts,
	// which doubles from MinBackoff, with jitter, up to MaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// RefreshInterval is how often a connected watcher re-reads the run
	// state. Besides correcting anything an event could not tell, it
	// notices a QEMU that stopped answering.
	RefreshInterval time.Duration
	// MaxMessageBytes bounds one QMP message; zero means the qmp default.
	MaxMessageBytes int
	// StaleAfter is how long a discovered VM, or one that dialled in, may
	// stay unreachable before its series are removed.
	StaleAfter time.Duration
	// Logger receives the watchers' logs; nil discards them.
	Logger log.Logger
}

func (o *Options) setDefaults() {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = 5 * time.Second
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
	if o.StaleAfter <= 0 {
		o.StaleAfter = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = log.NewNopLogger()
	}
}

// dialFunc opens a QMP session; a struct field so tests can substitute a
// fake QEMU.
type dialFunc func(ctx context.Context, network, address string, opts qmp.Options) (*qmp.Conn, error)

// lock takes w.mu for a change of state and marks the VM's rendered
// series out of date. Readers that change nothing may take w.mu directly.
func (w *watcher) lock() {
	w.mu.Lock()
	w.gen++
}

// watcherState is where a watcher is in its life, for logs and tests.
type watcherState int

const (
	stateDisconnected watcherState = iota
	stateConnecting
	stateSyncing
	stateConnected
)

func (s watcherState) String() string {
	switch s {
	case stateDisconnected:
		return "disconnected"
	case stateConnecting:
		return "connecting"
	case stateSyncing:
		return "syncing"
	case stateConnected:
		return "connected"
	}
	return "unknown"
}

// watcher keeps one VM's session alive and its state current. It runs as
// one goroutine (run) plus the qmp.Conn's reader, which calls onEvent.
type watcher struct {
	target Target
	opts   Options
	logger log.Logger
	dial   dialFunc
	// backoff returns the wait before attempt n+1 after n consecutive
	// failures; replaceable in tests.
	backoff func(n int) time.Duration

	mu sync.Mutex // guards st, phase, downSince and gen
	// gen changes whenever the watcher is locked through lock, which every
	// writer uses: a scrape re-renders the VM's series only when it moved.
	gen uint64
	// rendered is the VM's series as the last scrape wrote them (under
	// mu), reused while gen has not moved.
	rendered *renderedVM
	st       vmState
	phase    watcherState
	// downSince is when the VM was last seen up (or the watcher started);
	// zero while it is up.
	downSince time.Time
	// protocolLogged limits protocol-error logs to one per session, and
	// dataLogged malformed-event logs to one per VM.
	protocolLogged bool
	dataLogged     bool

	// early keeps (under mu, while collectEarly) the events of a session
	// that arrive before its sync has identified the VM, so that they can
	// be folded again if a different VM turns out to answer.
	early        []qmp.Event
	collectEarly bool

	// pending holds the queries events asked for (under mu); nudge tells
	// the session loop to run them. Size one: the event handler sends
	// without blocking, and many nudges collapse into one round of queries.
	pending need
	nudge   chan struct{}

	// unsupported remembers the queries QEMU answered with
	// CommandNotFound during this session. Only the watcher goroutine
	// touches it.
	unsupported map[string]bool

	// noFollowUps: events trigger no queries (golden tests only).
	noFollowUps bool

	// dialTimeout bounds dial; zero waits until ctx ends (a VM that dials
	// in arrives when it arrives).
	dialTimeout time.Duration

	// dynamic marks the watcher of a VM that dialled in; incoming carries
	// its next session from the listener.
	dynamic  bool
	incoming chan dialledIn

	// live is the current session's connection (under mu), so that a
	// newer dialled-in connection can replace it.
	live *qmp.Conn
}

func newWatcher(t Target, opts Options, dial dialFunc) *watcher {
	w := &watcher{
		target: t,
		opts:   opts,
		logger: log.With(opts.Logger, "vm", t.DefaultNameOrName(), "address", t.Address),
		dial:   dial,
		st:     newVMState(),
		nudge:  make(chan struct{}, 1),
		// Dialled-in VMs wait for QEMU as long as it takes.
		dialTimeout: opts.DialTimeout,
		downSince:   time.Now(),
	}
	w.backoff = w.jitteredBackoff
	return w
}

// DefaultNameOrName is the configured name, else the default one; used in
// logs, where the name QEMU reports may not be known yet.
func (t Target) DefaultNameOrName() string {
	if t.Name != "" {
		return t.Name
	}
	return t.DefaultName()
}

// jitteredBackoff doubles from MinBackoff up to MaxBackoff and picks a
// random wait in the upper half of that, so that a thousand VMs restarted
// together do not redial in lock step.
func (w *watcher) jitteredBackoff(n int) time.Duration {
	d := w.opts.MinBackoff
	for i := 1; i < n && d < w.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, w.opts.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// maxEarlyEvents bounds the events kept from before a session's sync.
const maxEarlyEvents = 1024

// stableSession is how long a session must last for the backoff to start
// again from the minimum. Shorter sessions count as failures, so a QEMU
// that accepts and then drops every session is not hammered.
const stableSession = 10 * time.Second

// run dials, syncs and watches until ctx ends, reconnecting as needed.
func (w *watcher) run(ctx context.Context) {
	failures := 0
	for {
		lasted, err := w.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if lasted >= stableSession {
			failures = 0
		} else {
			failures++
		}
		if err != nil {
			lg := level.Debug(w.logger)
			if failures <= 1 {
				lg = level.Warn(w.logger)
			}
			lg.Log("msg", "qmp session failed", "state", w.phaseName(), "consecutive_failures", failures, "err", err)
		}
		w.setPhase(stateDisconnected)
		t := time.NewTimer(w.backoff(max(failures, 1)))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// session runs one connection from dial to death. It returns how long the
// session was up (zero if it never got there) and why it ended.
func (w *watcher) session(ctx context.Context) (time.Duration, error) {
	w.lock()
	w.st.attempts++
	w.phase = stateConnecting
	w.protocolLogged = false
	w.pending = 0
	w.early, w.collectEarly = nil, true
	w.mu.Unlock()
	w.unsupported = make(map[string]bool)

	dctx, cancel := context.WithCancel(ctx)
	if w.dialTimeout > 0 {
		dctx, cancel = context.WithTimeout(ctx, w.dialTimeout)
	}
	conn, err := w.dial(dctx, w.target.Network, w.target.Address, qmp.Options{
		OnEvent:         w.onEvent,
		OnProtocolError: w.onProtocolError,
		MaxMessageBytes: w.opts.MaxMessageBytes,
	})
	cancel()
	if err != nil {
		w.countFailure()
		return 0, err
	}
	w.lock()
	w.live = conn
	w.mu.Unlock()
	defer func() {
		w.lock()
		w.live = nil
		w.mu.Unlock()
		conn.Close()
		<-conn.Done()
	}()

	w.setPhase(stateSyncing)
	if err := w.sync(ctx, conn); err != nil {
		w.countFailure()
		return 0, err
	}
	w.lock()
	w.st.up = true
	w.downSince = time.Time{}
	w.phase = stateConnected
	name := w.st.info.name
	w.mu.Unlock()
	start := time.Now()
	level.Info(w.logger).Log("msg", "qmp session established", "qemu_name", name, "qemu_version", conn.Greeting().Version.String())

	refresh := time.NewTicker(w.opts.RefreshInterval)
	defer refresh.Stop()
	// migPoll ticks while a migration is in progress: without the events
	// capability, polling is the only way to see it end.
	var migPoll <-chan time.Time
	for {
		var n need
		select {
		case <-ctx.Done():
			w.markDown()
			return time.Since(start), nil
		case <-conn.Done():
			w.markDown()
			level.Info(w.logger).Log("msg", "qmp session lost", "err", conn.Err())
			return time.Since(start), nil
		case <-w.nudge:
			w.lock()
			n, w.pending = w.pending, 0
			w.mu.Unlock()
		case <-refresh.C:
			n = needAll
		case <-migPoll:
			n = needMigrate
		}
		if err := w.refresh(ctx, conn, n); err != nil {
			w.markDown()
			if ctx.Err() != nil {
				return time.Since(start), nil
			}
			level.Warn(w.logger).Log("msg", "dropping qmp session", "err", err)
			return time.Since(start), nil
		}
		migPoll = nil
		if w.migrationInProgress() {
			migPoll = time.After(migrationPollInterval)
		}
	}
}

// migrationPollInterval is how often query-migrate is read while a
// migration runs, so that no end (completed, failed, cancelled) is missed
// even when the events capability is off.
const migrationPollInterval = time.Second

func (w *watcher) migrationInProgress() bool {
	w.lock()
	defer w.mu.Unlock()
	return w.st.mig.inProgress()
}

// sync reads the absolute state that events only change: this is what
// makes the data right again after a reconnect.
func (w *watcher) sync(ctx context.Context, conn *qmp.Conn) error {
	var name struct {
		Name string `json:"name"`
	}
	var uuid struct {
		UUID string `json:"UUID"`
	}
	var ver qmp.Version
	for _, q := range []struct {
		cmd string
		out any
	}{{"query-name", &name}, {"query-uuid", &uuid}, {"query-version", &ver}} {
		if err := w.execute(ctx, conn, q.cmd, q.out); err != nil {
			return err
		}
	}
	w.lock()
	replaced := w.st.setInfo(vmInfo{name: name.Name, uuid: uuid.UUID, version: ver.String(), pkg: ver.Package})
	if replaced {
		// The events this session delivered before its identity was
		// known belong to the new VM: fold them again into its fresh
		// state.
		for _, ev := range w.early {
			w.st.apply(ev)
		}
	}
	w.early, w.collectEarly = nil, false
	w.mu.Unlock()
	if replaced {
		level.Info(w.logger).Log("msg", "a different VM answers on this socket; its counters start again", "qemu_name", name.Name, "uuid", uuid.UUID)
	}
	return w.refresh(ctx, conn, needAll)
}

// refresh runs the queries in n and applies their replies. A QEMU error
// reply (CommandNotFound from an older QEMU, DeviceNotActive for a VM
// without a balloon, ...) means that part is absent for this VM, not that
// the session failed; anything else (a timeout, a dead connection) is
// returned and ends the session.
func (w *watcher) refresh(ctx context.Context, conn *qmp.Conn, n need) error {
	for _, q := range queries {
		if n&q.need == 0 {
			continue
		}
		if w.unsupported[q.command] {
			continue
		}
		out := q.reply()
		err := w.execute(ctx, conn, q.command, out)
		var qe *qmp.Error
		switch {
		case errors.As(err, &qe):
			if qe.Class == "CommandNotFound" {
				w.unsupported[q.command] = true
			}
			w.lock()
			q.absent(&w.st)
			w.mu.Unlock()
		case err != nil:
			return err
		default:
			w.lock()
			q.apply(&w.st, out)
			w.mu.Unlock()
		}
	}
	return nil
}

func (w *watcher) execute(ctx context.Context, conn *qmp.Conn, cmd string, out any) error {
	cctx, cancel := context.WithTimeout(ctx, w.opts.CommandTimeout)
	defer cancel()
	err := conn.Execute(cctx, cmd, nil, out)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		w.lock()
		w.st.commandTimeouts++
		w.mu.Unlock()
		return errors.Join(errors.New("qemu did not answer "+cmd+" within "+w.opts.CommandTimeout.String()), err)
	}
	return err
}

// onEvent runs on the connection's reader goroutine: it takes the lock,
// folds, and at most nudges run. It never calls Execute.
func (w *watcher) onEvent(ev qmp.Event) {
	w.lock()
	if w.collectEarly && len(w.early) < maxEarlyEvents {
		ev.Data = bytes.Clone(ev.Data) // Data is only valid during the call
		w.early = append(w.early, ev)
	}
	before := w.st.dataErrors
	n := w.st.apply(ev)
	if w.noFollowUps {
		n = 0
	}
	w.pending |= n
	logData := w.st.dataErrors != before && !w.dataLogged
	if logData {
		w.dataLogged = true
	}
	w.mu.Unlock()
	if logData {
		level.Warn(w.logger).Log("msg", "qmp event with malformed data; it is counted, and further ones for this vm are only counted in qmp_event_data_errors_total", "event", ev.Name, "data", excerpt(ev.Data))
	}
	if n != 0 {
		select {
		case w.nudge <- struct{}{}:
		default:
		}
	}
}

func (w *watcher) onProtocolError(err error) {
	w.lock()
	w.st.protocolErrors++
	first := !w.protocolLogged
	w.protocolLogged = true
	w.mu.Unlock()
	if first {
		level.Warn(w.logger).Log("msg", "qmp protocol error; further ones in this session are only counted", "err", err)
	}
}

func (w *watcher) countFailure() {
	w.lock()
	w.st.failures++
	w.mu.Unlock()
}

func (w *watcher) markDown() {
	w.lock()
	if w.st.up {
		w.downSince = time.Now()
	}
	w.st.disconnected()
	w.mu.Unlock()
}

// stale reports whether the VM has been unreachable for longer than
// StaleAfter. Called with mu held.
func (w *watcher) stale(now time.Time) bool {
	return !w.st.up && !w.downSince.IsZero() && now.Sub(w.downSince) > w.opts.StaleAfter
}

func (w *watcher) setPhase(p watcherState) {
	w.lock()
	w.phase = p
	w.mu.Unlock()
}

func (w *watcher) phaseName() string {
	w.lock()
	defer w.mu.Unlock()
	return w.phase.String()
}

// excerpt returns at most 200 bytes of b, for a log line.
func excerpt(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
