package collector

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/go-kit/log/level"

	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// Manager owns the set of watchers, one per Target.
type Manager struct {
	opts Options
	dial dialFunc
	// noFollowUps stops events from triggering queries (golden tests).
	noFollowUps bool

	mu       sync.Mutex
	watchers map[string]*managed
	// listenerCounts counts dialled-in connections by listener and result.
	listenerCounts map[[2]string]uint64
	// warned holds the watchers already reported as duplicates of another
	// source of the same VM.
	warned map[*watcher]bool
	ctx    context.Context // set by Run; nil before
	wg     sync.WaitGroup
}

type managed struct {
	w      *watcher
	cancel context.CancelFunc
}

// NewManager returns a Manager with no targets.
func NewManager(opts Options) *Manager {
	opts.setDefaults()
	return &Manager{opts: opts, dial: qmp.Dial, watchers: make(map[string]*managed),
		listenerCounts: make(map[[2]string]uint64), warned: make(map[*watcher]bool)}
}

// Sync makes the set of watched targets equal to targets: new ones start,
// removed ones stop and their series disappear at the next scrape, and
// unchanged ones keep their sessions and counters. It may be called before
// or while Run runs.
func (m *Manager) Sync(targets []Target) {
	m.mu.Lock()
	defer m.mu.Unlock()
	want := make(map[string]Target, len(targets))
	for _, t := range targets {
		want[t.key()] = t
	}
	for k, mw := range m.watchers {
		if mw.w.dynamic {
			continue // VMs that dialled in are not configured targets
		}
		if _, ok := want[k]; !ok {
			m.forgetLocked(k)
			level.Info(m.opts.Logger).Log("msg", "stopped watching vm", "vm", mw.w.target.DefaultNameOrName(), "address", mw.w.target.Address)
		}
	}
	for k, t := range want {
		if _, ok := m.watchers[k]; ok {
			continue
		}
		mw := &managed{w: newWatcher(t, m.opts, m.dial)}
		mw.w.noFollowUps = m.noFollowUps
		m.watchers[k] = mw
		if m.ctx != nil {
			m.start(mw)
		}
	}
}

// forgetLocked stops the watcher under key k and forgets it; its series go
// at the next scrape. Called with mu held.
func (m *Manager) forgetLocked(k string) {
	mw := m.watchers[k]
	if mw.cancel != nil {
		mw.cancel()
	}
	delete(m.watchers, k)
	delete(m.warned, mw.w)
}

// start runs a watcher under the Manager's context. Called with mu held.
func (m *Manager) start(mw *managed) {
	ctx, cancel := context.WithCancel(m.ctx)
	mw.cancel = cancel
	m.wg.Go(func() { mw.w.run(ctx) })
}

// Run starts the watchers and returns once ctx has ended and every watcher
// has stopped.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	m.ctx = ctx
	for _, mw := range m.watchers {
		m.start(mw)
	}
	m.mu.Unlock()
	reap := time.NewTicker(max(m.opts.StaleAfter/10, time.Second))
	defer reap.Stop()
	for {
		select {
		case <-ctx.Done():
			m.wg.Wait()
			return nil
		case now := <-reap.C:
			m.reap(now)
		}
	}
}

// reap forgets the VMs that dialled in and have not been back for
// StaleAfter: their watchers stop and their series go. (Discovered and
// configured targets are removed by Sync instead.)
func (m *Manager) reap(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, mw := range m.watchers {
		if !mw.w.dynamic {
			continue
		}
		mw.w.mu.Lock()
		stale := mw.w.stale(now)
		mw.w.mu.Unlock()
		if stale {
			m.forgetLocked(k)
			level.Info(m.opts.Logger).Log("msg", "forgot a vm that dialled in and did not come back", "identity", mw.w.target.Address)
		}
	}
}

// warnDuplicate logs, once, that w reaches the same VM (same UUID) as the
// VM already exported as first; w's series are left out.
func (m *Manager) warnDuplicate(w *watcher, first string) {
	m.mu.Lock()
	seen := m.warned[w]
	m.warned[w] = true
	m.mu.Unlock()
	if !seen {
		level.Warn(m.opts.Logger).Log("msg", "two sources reach the same VM (same UUID); reporting it once", "vm", first, "duplicate_address", w.target.Address)
	}
}

// sortedWatchers returns the watchers in a stable order (by target key),
// so that label collisions resolve the same way on every scrape.
func (m *Manager) sortedWatchers() []*watcher {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]string, 0, len(m.watchers))
	for k := range m.watchers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	ws := make([]*watcher, len(keys))
	for i, k := range keys {
		ws[i] = m.watchers[k].w
	}
	return ws
}
