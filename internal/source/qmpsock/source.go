// Package qmpsock is the QMP-socket source: it keeps one QMP session per
// VM monitor it reaches, and folds what each VM says into that VM's state
// in the fleet.
//
// It reaches VMs three ways: configured sockets (unix or TCP), unix
// sockets that match globs (discovery.go, watched with fsnotify), and
// QEMUs that dial in to a listener (listener.go, admitted by SO_PEERCRED).
// Each VM has a watcher (watcher.go): one goroutine that dials, runs the
// handshake and the sync, reads events while the session lives, and
// reconnects with backoff when it dies. Queries run only from the
// read-only plan (queries.go), on a worker that exists only while there
// are some to run, and qmp.Conn refuses anything off its allow-list
// before it reaches the wire.
//
// The package knows nothing of Prometheus: what it learns goes into
// vmstate.State through the fleet, and the exposition reads it from there.
package qmpsock

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/source"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// Options configure every watcher of a Source.
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
	// Logger receives the watchers' logs; nil discards them.
	Logger log.Logger

	// Dial opens a QMP session to a target. Nil means dialPeer, which
	// also learns the QEMU process behind a unix socket (to tell apart
	// two QEMUs that share a UUID and a name); a substitute knows none.
	// Tests substitute a fake QEMU here.
	Dial func(ctx context.Context, network, address string, opts qmp.Options) (*qmp.Conn, error)
	// NoFollowUps stops events from triggering queries. Only for
	// replaying a recorded transcript, which holds the replies to the
	// sync's queries and no others.
	NoFollowUps bool
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
	if o.Logger == nil {
		o.Logger = log.NewNopLogger()
	}
}

// dialer returns the dialFunc behind Options.Dial: by default it reads
// who serves the socket before the handshake (dialPeer); a substitute
// knows no process.
func (o *Options) dialer() dialFunc {
	if o.Dial == nil {
		return dialPeer
	}
	dial := o.Dial
	return func(ctx context.Context, network, address string, opts qmp.Options) (*qmp.Conn, int32, error) {
		conn, err := dial(ctx, network, address, opts)
		return conn, 0, err
	}
}

// dialPeer is qmp.Dial that also returns the QEMU process behind a unix
// socket, as the kernel reports it (SO_PEERCRED); 0 for TCP, or when the
// process is outside the exporter's pid namespace.
func dialPeer(ctx context.Context, network, address string, opts qmp.Options) (*qmp.Conn, int32, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, 0, fmt.Errorf("qmp: %w", err)
	}
	var pid int32
	if cred, err := peerCred(nc); err == nil && cred.pid > 0 {
		pid = cred.pid
	}
	conn, err := qmp.NewConn(ctx, nc, opts)
	return conn, pid, err
}

// Source owns the watchers of the VMs it reaches, one per target and one
// per VM that dialled in, and their VMs in the fleet.
type Source struct {
	opts  Options
	fleet *fleet.Fleet
	dial  dialFunc
	// noFollowUps stops events from triggering queries (Options.NoFollowUps).
	noFollowUps bool

	mu       sync.Mutex
	watchers map[string]*managed
	// listenerCounts counts dialled-in connections by listener and result.
	listenerCounts map[[2]string]uint64
	ctx            context.Context // set by Run; nil before
	wg             sync.WaitGroup

	disc discovery // Configure's targets and globs
}

type managed struct {
	w      *watcher
	cancel context.CancelFunc
	// latest is the connection a listener last handed to the watcher of
	// a VM that dialled in (see dialInKeyLocked).
	latest handoff
}

// handoff is a dialled-in connection and what it said of its QEMU.
type handoff struct {
	conn *qmp.Conn
	pid  int32 // SO_PEERCRED; 0 when unknown
	name string
}

// alive reports whether the connection is still open.
func (h handoff) alive() bool {
	if h.conn == nil {
		return false
	}
	select {
	case <-h.conn.Done():
		return false
	default:
		return true
	}
}

// New returns a Source with no targets, whose VMs live in f.
func New(f *fleet.Fleet, opts Options) *Source {
	opts.setDefaults()
	return &Source{opts: opts, fleet: f, dial: opts.dialer(), noFollowUps: opts.NoFollowUps,
		watchers: make(map[string]*managed), listenerCounts: make(map[[2]string]uint64)}
}

// Sync makes the set of watched targets equal to targets: new ones start,
// removed ones stop and their series disappear at the next scrape, and
// unchanged ones keep their sessions and counters. It may be called before
// or while Run runs. (Configure calls it with the configured targets plus
// the discovered ones.)
func (s *Source) Sync(targets []Target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := make(map[string]Target, len(targets))
	for _, t := range targets {
		want[t.key()] = t
	}
	for k, mw := range s.watchers {
		if mw.w.dynamic {
			continue // VMs that dialled in are not configured targets
		}
		if _, ok := want[k]; !ok {
			s.forgetLocked(k)
			level.Info(s.opts.Logger).Log("msg", "stopped watching vm", "vm", mw.w.target.DefaultNameOrName(), "address", mw.w.target.Address)
		}
	}
	for k, t := range want {
		if _, ok := s.watchers[k]; ok {
			continue
		}
		vm, err := s.fleet.Add(k, t.meta(), time.Now())
		if err != nil {
			level.Error(s.opts.Logger).Log("msg", "cannot watch vm", "vm", t.DefaultNameOrName(), "err", err)
			continue
		}
		mw := &managed{w: newWatcher(t, vm, s.opts, s.dial)}
		mw.w.noFollowUps = s.noFollowUps
		s.watchers[k] = mw
		if s.ctx != nil {
			s.start(mw)
		}
	}
}

// forgetLocked stops the watcher under key k and forgets it and its VM;
// its series go at the next scrape. Called with mu held.
func (s *Source) forgetLocked(k string) {
	mw := s.watchers[k]
	if mw.cancel != nil {
		mw.cancel()
	}
	delete(s.watchers, k)
	s.fleet.Remove(mw.w.vm)
}

// start runs a watcher under the Source's context. Called with mu held.
func (s *Source) start(mw *managed) {
	ctx, cancel := context.WithCancel(s.ctx)
	mw.cancel = cancel
	s.wg.Go(func() { mw.w.run(ctx) })
}

// Run starts the watchers and the discovery of Configure's globs, and
// returns once ctx has ended and every watcher has stopped.
func (s *Source) Run(ctx context.Context) error {
	s.mu.Lock()
	s.ctx = ctx
	for _, mw := range s.watchers {
		s.start(mw)
	}
	s.mu.Unlock()
	s.restartDiscovery()
	reap := time.NewTicker(max(s.fleet.StaleAfter()/10, time.Second))
	defer reap.Stop()
	for {
		select {
		case <-ctx.Done():
			// Discovery first: it may still be starting watchers.
			s.stopDiscovery()
			s.wg.Wait()
			return nil
		case now := <-reap.C:
			s.reap(now)
		}
	}
}

// reap forgets the VMs that dialled in and have not been back for the
// fleet's StaleAfter: their watchers stop and their series go.
// (Discovered and configured targets are removed by Sync instead.)
func (s *Source) reap(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, mw := range s.watchers {
		if !mw.w.dynamic {
			continue
		}
		stale := mw.w.vm.LockRead().Stale(now, s.fleet.StaleAfter())
		mw.w.vm.Unlock()
		if stale {
			s.forgetLocked(k)
			level.Info(s.opts.Logger).Log("msg", "forgot a vm that dialled in and did not come back", "identity", mw.w.target.Address)
		}
	}
}

// EachListenerCount calls fn with each of the listeners' connection
// counters (results: accepted, refused, failed), sorted by listener,
// then result. fn must not call back into s.
func (s *Source) EachListenerCount(fn func(listener, result string, count uint64)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := slices.SortedFunc(maps.Keys(s.listenerCounts), func(a, b [2]string) int {
		return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1]))
	})
	for _, k := range keys {
		fn(k[0], k[1], s.listenerCounts[k])
	}
}

func (s *Source) countListener(name, result string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listenerCounts[[2]string{name, result}]++
}

var _ source.Source = (*Source)(nil)
