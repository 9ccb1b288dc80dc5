package collector

import (
	"context"
	"sort"
	"sync"

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
	ctx      context.Context // set by Run; nil before
	wg       sync.WaitGroup
}

type managed struct {
	w      *watcher
	cancel context.CancelFunc
}

// NewManager returns a Manager with no targets.
func NewManager(opts Options) *Manager {
	opts.setDefaults()
	return &Manager{opts: opts, dial: qmp.Dial, watchers: make(map[string]*managed)}
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
		if _, ok := want[k]; !ok {
			if mw.cancel != nil {
				mw.cancel()
			}
			delete(m.watchers, k)
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
	<-ctx.Done()
	m.wg.Wait()
	return nil
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
