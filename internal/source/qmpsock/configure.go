package qmpsock

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/go-kit/log/level"
)

// discovery is what Configure set: the configured targets, the globs and
// the sockets they match now, and the running Discoverer. Guarded by its
// own mutex (Source.mu guards the watchers, which Sync takes).
type discovery struct {
	// restart serializes restartDiscovery, so that a Configure and the
	// start of Run never run two discoveries.
	restart    sync.Mutex
	mu         sync.Mutex
	static     []Target
	discovered []string
	labels     map[string]string // for discovered VMs
	globs      []string
	rescan     time.Duration
	stop       context.CancelFunc
	done       chan struct{}
}

// Configure sets what the source watches: the static targets, plus every
// unix socket that matches one of globs (watched with fsnotify, rescanned
// every rescan), whose VMs get labels. A call with other globs or another
// rescan interval restarts the discovery; the others keep it, and every
// VM that stays keeps its session and counters. It may be called before
// or while Run runs (a configuration reload calls it again).
func (s *Source) Configure(static []Target, globs []string, rescan time.Duration, labels map[string]string) {
	d := &s.disc
	d.mu.Lock()
	d.static, d.labels = static, labels
	restart := !slices.Equal(globs, d.globs) || rescan != d.rescan
	if restart {
		d.globs, d.rescan = slices.Clone(globs), rescan
	}
	d.mu.Unlock()
	if restart {
		s.restartDiscovery()
	}
	s.syncDiscovered()
}

// restartDiscovery stops the running discovery, if any, and starts one
// for the configured globs once Run has started.
func (s *Source) restartDiscovery() {
	s.disc.restart.Lock()
	defer s.disc.restart.Unlock()
	s.stopDiscovery()
	s.mu.Lock()
	ctx := s.ctx
	s.mu.Unlock()
	d := &s.disc
	d.mu.Lock()
	defer d.mu.Unlock()
	d.discovered = nil
	if ctx == nil || len(d.globs) == 0 {
		return
	}
	disc := NewDiscoverer(d.globs, d.rescan)
	disc.OnError = func(err error) { level.Warn(s.opts.Logger).Log("msg", "socket discovery", "err", err) }
	dctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	d.stop, d.done = cancel, done
	go func() {
		defer close(done)
		err := disc.Run(dctx, func(sockets []string) {
			d.mu.Lock()
			d.discovered = sockets
			d.mu.Unlock()
			level.Info(s.opts.Logger).Log("msg", "discovered sockets changed", "sockets", len(sockets))
			s.syncDiscovered()
		})
		if err != nil {
			level.Error(s.opts.Logger).Log("msg", "socket discovery stopped", "err", err)
		}
	}()
}

// stopDiscovery stops the running discovery, if any, and waits for it.
func (s *Source) stopDiscovery() {
	d := &s.disc
	d.mu.Lock()
	cancel, done := d.stop, d.done
	d.stop, d.done = nil, nil
	d.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// syncDiscovered hands Sync the configured targets plus the discovered
// sockets that no configured target already watches.
func (s *Source) syncDiscovered() {
	d := &s.disc
	d.mu.Lock()
	ts := slices.Clone(d.static)
	seen := map[string]bool{}
	for _, t := range ts {
		seen[t.Network+" "+t.Address] = true
	}
	for _, path := range d.discovered {
		if !seen["unix "+path] {
			ts = append(ts, Target{Network: "unix", Address: path, Labels: d.labels, Discovered: true})
		}
	}
	d.mu.Unlock()
	s.Sync(ts)
}
