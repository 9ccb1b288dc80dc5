package qmpsock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/source"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// dialFunc opens a QMP session and returns the id of the QEMU process
// serving it (SO_PEERCRED), 0 when unknown; a struct field so tests can
// substitute a fake QEMU.
type dialFunc func(ctx context.Context, network, address string, opts qmp.Options) (*qmp.Conn, int32, error)

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
// one goroutine (run), which is also its connection's reader and calls
// onEvent, plus a worker for queries while there are some to run (see
// session).
type watcher struct {
	target Target
	opts   Options
	logger log.Logger
	dial   dialFunc
	// backoff returns the wait before attempt n+1 after n consecutive
	// failures; replaceable in tests.
	backoff func(n int) time.Duration

	// vm is the VM in the fleet whose state this watcher keeps. Its lock
	// guards the state and every field below that says "under the lock".
	vm    *fleet.VM
	phase watcherState // under the lock
	// protocolLogged limits protocol-error logs to one per session, and
	// dataLogged malformed-event logs to one per VM (under the lock).
	protocolLogged bool
	dataLogged     bool

	// early keeps (under the lock, while collectEarly) the events of a session
	// that arrive before its sync has identified the VM, so that they can
	// be folded again if a different VM turns out to answer.
	early        []qmp.Event
	collectEarly bool

	// pending holds the queries events asked for (under the lock); the event
	// handler starts sess's worker to run them, unless it runs already,
	// and many events collapse into one round of queries.
	pending vmstate.Need
	// sess is the current session once dialled (under the lock).
	sess *session

	// unsupported remembers the queries QEMU answered with
	// CommandNotFound during this session. Only the session's worker
	// touches it (open resets it before the first worker starts, and
	// workers run one at a time).
	unsupported map[string]bool

	// timeout bounds the current session's queries. open sets it before
	// the first worker starts and close clears it after the last ended;
	// in between only the worker uses it.
	timeout *queryTimer

	// noFollowUps: events trigger no queries (golden tests only).
	noFollowUps bool

	// dialTimeout bounds dial; zero waits until ctx ends (a VM that dials
	// in arrives when it arrives).
	dialTimeout time.Duration

	// dynamic marks the watcher of a VM that dialled in; incoming carries
	// its next session from the listener.
	dynamic  bool
	incoming chan dialledIn

	// live is the current session's connection (under the lock), so that a
	// newer dialled-in connection can replace it.
	live *qmp.Conn

	// label is the VM's vm label once a sync has learnt it (its -name
	// when no name is configured), for the vm field of the logs; nil
	// before. Lines are logged from the watcher's goroutine and its
	// worker alike, hence atomic.
	label atomic.Pointer[string]
}

func newWatcher(t Target, vm *fleet.VM, opts Options, dial dialFunc) *watcher {
	w := &watcher{
		target:      t,
		opts:        opts,
		dial:        dial,
		vm:          vm,
		dialTimeout: opts.DialTimeout,
	}
	w.logger = log.With(opts.Logger, "vm", log.Valuer(w.logName), "address", t.Address)
	w.backoff = w.jitteredBackoff
	return w
}

// logName is the vm field of the watcher's lines: the VM's label once a
// sync has learnt it, so that the logs name a VM as its series do, and
// the configured or default name before (for a VM that dialled in, its
// identity).
func (w *watcher) logName() any {
	if l := w.label.Load(); l != nil {
		return *l
	}
	return w.target.DefaultNameOrName()
}

// DefaultNameOrName is the configured name, else the default one; used in
// logs, where the name QEMU reports may not be known yet.
func (t Target) DefaultNameOrName() string {
	if t.Name != "" {
		return t.Name
	}
	return t.DefaultName()
}

// jitteredBackoff is source.Backoff between MinBackoff and MaxBackoff.
func (w *watcher) jitteredBackoff(n int) time.Duration {
	return source.Backoff(w.opts.MinBackoff, w.opts.MaxBackoff, n)
}

// maxEarlyEvents bounds the events kept from before a session's sync.
const maxEarlyEvents = 1024

// stableSession is how long a session must last for the backoff to start
// again from the minimum. Shorter sessions count as failures, so a QEMU
// that accepts and then drops every session is not hammered.
const stableSession = 10 * time.Second

// run dials, syncs and watches until ctx ends, reconnecting as needed.
//
// The goroutine running it spends a session parked in the connection's
// read, so its frames are kept small (the work is in session's helpers):
// the garbage collector halves a parked goroutine's stack only while it
// uses less than a quarter of it, and an idle VM's cost is mostly that
// stack.
func (w *watcher) run(ctx context.Context) {
	failures := 0
	for {
		lasted, err := w.session(ctx)
		if !w.afterSession(ctx, lasted, err, &failures) {
			return
		}
	}
}

// afterSession counts and logs a session's end and waits the backoff. It
// reports false when ctx has ended.
func (w *watcher) afterSession(ctx context.Context, lasted time.Duration, err error, failures *int) bool {
	if ctx.Err() != nil {
		return false
	}
	if lasted >= stableSession {
		*failures = 0
	} else {
		*failures++
	}
	if err != nil {
		lg := level.Debug(w.logger)
		if *failures <= 1 {
			lg = level.Warn(w.logger)
		}
		lg.Log("msg", "qmp session failed", "state", w.phaseName(), "consecutive_failures", *failures, "err", err)
	}
	w.setPhase(stateDisconnected)
	t := time.NewTimer(w.backoff(max(*failures, 1)))
	select {
	case <-ctx.Done():
		t.Stop()
		return false
	case <-t.C:
		return true
	}
}

// session runs one connection from dial to death. It returns how long the
// session was up (zero if it never got there) and why it ended.
//
// The watcher's goroutine is the connection's reader
// (qmp.Options.ServeReader): it spends the session in conn.Serve, folding
// events as they arrive. Queries run on a worker goroutine that exists
// only while there is work (see startWorker): the sync, the queries
// events ask for, the periodic refresh and the polls of a migration in
// progress. An idle VM thus costs one parked goroutine, not two.
func (w *watcher) session(ctx context.Context) (time.Duration, error) {
	s, err := w.open(ctx)
	if err != nil {
		return 0, err
	}
	s.conn.Serve()
	return w.close(s)
}

// open dials and starts the session's worker on the sync.
func (w *watcher) open(ctx context.Context) (*session, error) {
	st := w.vm.Lock()
	st.Attempts++
	w.phase = stateConnecting
	w.protocolLogged = false
	w.pending = 0
	w.early, w.collectEarly = nil, true
	w.vm.Unlock()
	w.unsupported = nil

	// One context either way: a WithCancel made and then replaced would
	// never be cancelled, and would stay registered with ctx for the
	// watcher's life, one more per session.
	var dctx context.Context
	var cancel context.CancelFunc
	if w.dialTimeout > 0 {
		dctx, cancel = context.WithTimeout(ctx, w.dialTimeout)
	} else {
		dctx, cancel = context.WithCancel(ctx)
	}
	conn, pid, err := w.dial(dctx, w.target.Network, w.target.Address, qmp.Options{
		OnEvent:         w.onEvent,
		OnProtocolError: w.onProtocolError,
		MaxMessageBytes: w.opts.MaxMessageBytes,
		ServeReader:     true,
	})
	cancel()
	if err != nil {
		w.countFailure()
		return nil, err
	}
	s := &session{ctx: ctx, conn: conn}
	// Queries are executed without a context (see execute): the end of
	// ctx closes the connection instead, which ends any of them.
	s.stopOnCancel = context.AfterFunc(ctx, func() { conn.Close() })
	w.timeout = newQueryTimer(conn)
	s.wake = time.AfterFunc(time.Hour, func() { w.wakeUp(s) })
	s.wake.Stop()
	w.vm.Lock().PID = pid
	w.live = conn
	w.phase = stateSyncing
	w.sess = s
	w.startWorker(s) // the sync
	w.vm.Unlock()
	return s, nil
}

// close ends a session whose connection is dead, once its worker has
// stopped, and returns what session returns.
func (w *watcher) close(s *session) (time.Duration, error) {
	w.vm.Lock()
	s.over = true
	w.sess = nil
	w.live = nil
	w.vm.Unlock()
	s.wake.Stop()
	s.stopOnCancel()
	s.wg.Wait()
	w.timeout.stop()
	w.timeout = nil
	w.logDrain(s)

	if !s.established {
		w.countFailure()
		if s.err != nil {
			return 0, s.err
		}
		return 0, s.conn.Err()
	}
	w.markDown()
	lasted := time.Since(s.start)
	// A query that failed because QEMU had hung up (its write broke and
	// the drain read to QEMU's end, or the reader saw the end first) is
	// a session lost, as when QEMU exits between queries: a VM powering
	// off is no reason for a warning.
	peerLeft := errors.Is(s.err, qmp.ErrClosed) && (s.conn.Drained().Complete || hungUp(s.err))
	switch {
	case s.ctx.Err() != nil:
	case s.err != nil && !peerLeft:
		level.Warn(w.logger).Log("msg", "dropping qmp session", "err", s.err)
	default:
		level.Info(w.logger).Log("msg", "qmp session lost", "err", s.conn.Err())
	}
	return lasted, nil
}

// hungUp reports whether the reader found the end of QEMU's side: EOF,
// between messages or in the middle of one (QEMU killed while writing),
// or a reset (QEMU exited with a query of ours unread).
func hungUp(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// logDrain says on one line what the end of the session read of what
// QEMU had sent before it (see qmp.Conn.Drain): the events it folded,
// and whether it read all of it or a bound cut it short, when the rest
// is lost. A drain that read nothing (a hung QEMU, or one that had
// nothing left to say) is only worth a debug line.
func (w *watcher) logDrain(s *session) {
	d := s.conn.Drained()
	if !d.Drained || s.ctx.Err() != nil {
		return
	}
	lg := level.Info(w.logger)
	switch {
	case d.Bytes == 0:
		lg = level.Debug(w.logger)
	case !d.Complete:
		lg = level.Warn(w.logger)
	}
	lg.Log("msg", "read what qemu had sent before the session ended", "events", d.Events, "bytes", d.Bytes, "complete", d.Complete, "end", d.End)
}

// session is the state of one connection's queries, shared by the
// watcher's goroutine, its worker, its timer and the event handler. The
// fields below ctx and conn are guarded by the watcher's mu, except where
// noted.
type session struct {
	ctx  context.Context
	conn *qmp.Conn
	// wake fires at the next periodic refresh or migration poll; it is
	// armed whenever the worker goes idle.
	wake         *time.Timer
	stopOnCancel func() bool
	wg           sync.WaitGroup // the worker

	working     bool         // a worker goroutine runs
	over        bool         // the connection is dead: no more workers
	due         vmstate.Need // queries wake asked for
	nextRefresh time.Time
	start       time.Time // when the sync ended
	established bool      // the sync succeeded
	err         error     // why the worker ended the session, if it did
	synced      bool      // the sync has run; only workers touch it, one at a time
}

// startWorker starts the session's worker unless one runs or the session
// is over. Called with the VM's lock held.
func (w *watcher) startWorker(s *session) {
	if s.working || s.over {
		return
	}
	s.working = true
	s.wg.Add(1)
	go w.work(s)
}

// work runs the sync if it has not run, then rounds of queries until none
// is due, and arms the timer for the next periodic one. A query that fails
// other than with a QEMU error ends the session.
func (w *watcher) work(s *session) {
	defer s.wg.Done()
	if !s.synced {
		s.synced = true
		if err := w.sync(s.ctx, s.conn); err != nil {
			w.endSession(s, err)
			return
		}
		st := w.vm.Lock()
		st.MarkUp(time.Now())
		w.phase = stateConnected
		name := st.Info.Name
		s.established = true
		s.start = time.Now()
		s.nextRefresh = s.start.Add(w.opts.RefreshInterval)
		w.vm.Unlock()
		level.Info(w.logger).Log("msg", "qmp session established", "qemu_name", name, "qemu_version", s.conn.Greeting().Version.String())
	}
	for {
		st := w.vm.LockRead() // pending and the session, not the state
		n := w.pending | s.due
		w.pending, s.due = 0, 0
		if n == 0 || s.over {
			s.working = false
			if !s.over {
				// The periodic refresh and, while a migration is in
				// progress (or its final figures are not out yet), a
				// poll migrationPollInterval after this round: without
				// the events capability, polling is the only way to see
				// it end.
				d := time.Until(s.nextRefresh)
				if st.Migration.Polled() {
					d = min(d, migrationPollInterval)
				}
				s.wake.Reset(d)
			}
			w.vm.Unlock()
			return
		}
		w.vm.Unlock()
		if err := w.refresh(s.ctx, s.conn, n); err != nil {
			w.endSession(s, err)
			return
		}
	}
}

// wakeUp runs on the session's timer: a periodic refresh, or a poll of a
// migration in progress.
func (w *watcher) wakeUp(s *session) {
	now := time.Now()
	w.vm.LockRead() // the session, not the state
	defer w.vm.Unlock()
	n := vmstate.NeedMigrate
	if !now.Before(s.nextRefresh) {
		n = vmstate.NeedAll
		s.nextRefresh = now.Add(w.opts.RefreshInterval)
	}
	s.due |= n
	w.startWorker(s)
}

// endSession records why the worker gives up on the session and ends
// the connection, which ends conn.Serve on the watcher's goroutine once
// the events QEMU already sent are folded (a drain; a no-op if the
// connection is already dead or draining). Only a protocol violation
// (a reply that does not decode) closes it at once: nothing more from
// that peer is worth reading.
func (w *watcher) endSession(s *session, err error) {
	w.vm.LockRead() // the session, not the state
	if s.err == nil {
		s.err = err
	}
	s.over = true
	s.working = false
	w.vm.Unlock()
	if errors.Is(err, qmp.ErrProtocol) {
		s.conn.Close()
		return
	}
	s.conn.Drain()
}

// migrationPollInterval is how often query-migrate is read while a
// migration runs, so that no end (completed, failed, cancelled) is missed
// even when the events capability is off.
const migrationPollInterval = time.Second

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
		if err := w.execute(ctx, conn, q.cmd, q.out, nil); err != nil {
			return err
		}
	}
	st := w.vm.Lock()
	replaced := st.SetInfo(vmstate.Info{Name: name.Name, UUID: uuid.UUID, Version: ver.String(), Package: ver.Package})
	if replaced {
		// The events this session delivered before its identity was
		// known belong to the new VM: fold them again into its fresh
		// state.
		for _, ev := range w.early {
			st.Apply(ev)
		}
	}
	w.early, w.collectEarly = nil, false
	label := w.vm.Label()
	w.vm.Unlock()
	w.label.Store(&label)
	if replaced {
		level.Info(w.logger).Log("msg", "a different VM answers on this socket; its counters start again", "qemu_name", name.Name, "uuid", uuid.UUID)
	}
	return w.refresh(ctx, conn, vmstate.NeedAll)
}

// refresh runs the queries in n and applies their replies. A QEMU error
// reply (CommandNotFound from an older QEMU, DeviceNotActive for a VM
// without a balloon, ...) means that part is absent for this VM, not that
// the session failed; anything else (a timeout, a dead connection) is
// returned and ends the session.
func (w *watcher) refresh(ctx context.Context, conn *qmp.Conn, n vmstate.Need) error {
	for _, q := range queries {
		if n&q.need == 0 {
			continue
		}
		if w.unsupported[q.command] {
			continue
		}
		// The reply is applied while the reader waits, in wire order
		// among the events: an event QEMU sent after the reply (a
		// RESUME after a query-status that said paused, the MIGRATION
		// that ends a migration query-migrate saw active) always lands
		// after it, never under it. The decoding runs on this
		// goroutine, which ends when the queries do, so it does not
		// grow the stack of the reader, which stays parked for as long
		// as the VM is idle.
		out := q.reply()
		err := w.execute(ctx, conn, q.command, nil, func(ret []byte) error {
			if err := json.Unmarshal(ret, out); err != nil {
				return fmt.Errorf("%w: %s: decoding reply: %w", qmp.ErrProtocol, q.command, err)
			}
			q.apply(w.vm.Lock(), out)
			w.vm.Unlock()
			return nil
		})
		var qe *qmp.Error
		switch {
		case errors.As(err, &qe):
			if qe.Class == "CommandNotFound" {
				if w.unsupported == nil {
					w.unsupported = make(map[string]bool)
				}
				w.unsupported[q.command] = true
			}
			q.absent(w.vm.Lock())
			w.vm.Unlock()
		case err != nil:
			return err
		}
	}
	return nil
}

// execute runs one query, bounded by CommandTimeout. Rather than a
// context with a timeout per query (a timer, a channel and a registration
// with ctx each time, on every follow-up query of thousands of VMs), the
// session's one queryTimer is armed around the call: if QEMU does not
// answer in time, the timer ends the connection (a drain: the events
// QEMU sent before are still folded), which ends the call and the
// session, as a timeout would. The end of ctx closes the connection at
// once (see session).
//
// The reply is decoded into out, or, if apply is not nil, handed to apply
// while the reader waits (see qmp.Conn.ExecuteFunc).
func (w *watcher) execute(ctx context.Context, conn *qmp.Conn, cmd string, out any, apply func([]byte) error) error {
	w.timeout.arm(w.opts.CommandTimeout)
	var err error
	if apply != nil {
		err = conn.ExecuteFunc(context.Background(), cmd, nil, apply)
	} else {
		err = conn.Execute(context.Background(), cmd, nil, out)
	}
	if w.timeout.disarm() && ctx.Err() == nil {
		w.vm.Lock().CommandTimeouts++
		w.vm.Unlock()
		return &commandTimeoutError{command: cmd, after: w.opts.CommandTimeout}
	}
	return err
}

// commandTimeoutError says which query QEMU did not answer in time.
type commandTimeoutError struct {
	command string
	after   time.Duration
}

func (e *commandTimeoutError) Error() string {
	return "qemu did not answer " + e.command + " within " + e.after.String()
}

// Unwrap makes the error match context.DeadlineExceeded, as a query whose
// context timed out would.
func (e *commandTimeoutError) Unwrap() error { return context.DeadlineExceeded }

// queryTimer bounds the session's queries, one at a time: armed before a
// query, disarmed after it; if it fires in between, it ends the
// connection with a drain. One timer serves the whole session.
type queryTimer struct {
	t     *time.Timer
	fired atomic.Bool
}

func newQueryTimer(conn *qmp.Conn) *queryTimer {
	qt := &queryTimer{}
	qt.t = time.AfterFunc(time.Hour, func() {
		qt.fired.Store(true)
		conn.Drain()
	})
	qt.t.Stop()
	return qt
}

func (qt *queryTimer) arm(d time.Duration) { qt.t.Reset(d) }

// disarm stops the timer and reports whether it fired.
func (qt *queryTimer) disarm() bool {
	if qt.t.Stop() {
		return false
	}
	return qt.fired.Load()
}

func (qt *queryTimer) stop() { qt.t.Stop() }

// onEvent runs on the connection's reader goroutine: it takes the lock,
// folds, and at most starts the session's worker for the queries the
// event asks for. It never calls Execute.
func (w *watcher) onEvent(ev qmp.Event) {
	st := w.vm.Lock()
	if w.collectEarly && len(w.early) < maxEarlyEvents {
		ev.Data = bytes.Clone(ev.Data) // Data is only valid during the call
		w.early = append(w.early, ev)
	}
	before := st.DataErrors
	n := w.vm.Apply(ev)
	if w.noFollowUps {
		n = 0
	}
	w.pending |= n
	if n != 0 && w.sess != nil {
		w.startWorker(w.sess)
	}
	logData := st.DataErrors != before && !w.dataLogged
	if logData {
		w.dataLogged = true
	}
	w.vm.Unlock()
	if logData {
		level.Warn(w.logger).Log("msg", "qmp event with malformed data; it is counted, and further ones for this vm are only counted in qmp_event_data_errors_total", "event", ev.Name, "data", excerpt(ev.Data))
	}
}

func (w *watcher) onProtocolError(err error) {
	w.vm.Lock().ProtocolErrors++
	first := !w.protocolLogged
	w.protocolLogged = true
	w.vm.Unlock()
	if first {
		level.Warn(w.logger).Log("msg", "qmp protocol error; further ones in this session are only counted", "err", err)
	}
}

func (w *watcher) countFailure() {
	w.vm.Lock().Failures++
	w.vm.Unlock()
}

func (w *watcher) markDown() {
	w.vm.Lock().MarkDown(time.Now())
	w.vm.Unlock()
}

func (w *watcher) setPhase(p watcherState) {
	w.vm.Lock()
	w.phase = p
	w.vm.Unlock()
}

func (w *watcher) phaseName() string {
	w.vm.LockRead()
	defer w.vm.Unlock()
	return w.phase.String()
}

// excerpt returns at most 200 bytes of b, for a log line.
func excerpt(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
