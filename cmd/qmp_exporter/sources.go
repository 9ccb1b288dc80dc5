package main

import (
	"context"
	"io/fs"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/qmp-exporter/qmp_exporter/collector"
	"github.com/qmp-exporter/qmp_exporter/config"
	"github.com/qmp-exporter/qmp_exporter/internal/sockfile"
)

// sources keeps the Manager's targets equal to the configured VMs plus the
// sockets the globs currently match, and restarts the discovery when a
// reload changes the globs.
type sources struct {
	ctx    context.Context
	m      *collector.Manager
	logger log.Logger

	mu         sync.Mutex
	static     []collector.Target
	discovered []string
	labels     map[string]string // for discovered VMs
	globs      []string
	rescan     time.Duration
	stopDisc   context.CancelFunc
	discDone   chan struct{}
}

// apply installs a (re)loaded configuration.
func (s *sources) apply(static []collector.Target, globs []string, rescan time.Duration, labels map[string]string) {
	s.mu.Lock()
	s.static, s.labels = static, labels
	restart := !slices.Equal(globs, s.globs) || rescan != s.rescan
	s.mu.Unlock()
	if restart {
		s.stopDiscovery()
		s.mu.Lock()
		s.globs, s.rescan, s.discovered = slices.Clone(globs), rescan, nil
		s.mu.Unlock()
		if len(globs) > 0 {
			s.startDiscovery(globs, rescan)
		}
	}
	s.sync()
}

func (s *sources) startDiscovery(globs []string, rescan time.Duration) {
	d := config.NewDiscoverer(globs, rescan)
	d.OnError = func(err error) { level.Warn(s.logger).Log("msg", "socket discovery", "err", err) }
	ctx, cancel := context.WithCancel(s.ctx)
	done := make(chan struct{})
	s.mu.Lock()
	s.stopDisc, s.discDone = cancel, done
	s.mu.Unlock()
	go func() {
		defer close(done)
		err := d.Run(ctx, func(sockets []string) {
			s.mu.Lock()
			s.discovered = sockets
			s.mu.Unlock()
			level.Info(s.logger).Log("msg", "discovered sockets changed", "sockets", len(sockets))
			s.sync()
		})
		if err != nil {
			level.Error(s.logger).Log("msg", "socket discovery stopped", "err", err)
		}
	}()
}

// stopDiscovery stops the running discovery, if any, and waits for it.
func (s *sources) stopDiscovery() {
	s.mu.Lock()
	cancel, done := s.stopDisc, s.discDone
	s.stopDisc, s.discDone = nil, nil
	s.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// sync hands the Manager the configured targets plus the discovered ones
// that no configured target already watches.
func (s *sources) sync() {
	s.mu.Lock()
	ts := slices.Clone(s.static)
	seen := map[string]bool{}
	for _, t := range ts {
		seen[t.Network+" "+t.Address] = true
	}
	for _, path := range s.discovered {
		if !seen["unix "+path] {
			ts = append(ts, collector.Target{Network: "unix", Address: path, Labels: s.labels, Discovered: true})
		}
	}
	s.mu.Unlock()
	s.m.Sync(ts)
}

// mergeLabels returns the global labels overridden by a VM's own.
func mergeLabels(global, own map[string]string) map[string]string {
	if len(global) == 0 && len(own) == 0 {
		return nil
	}
	out := maps.Clone(global)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, own)
	return out
}

// listen opens a listener for QEMUs that dial in. A unix socket's stale
// file from an earlier run is replaced (only if it is a socket), and the
// socket gets the configured mode.
func listen(l config.Listen) (net.Listener, string, error) {
	if l.Address != "" {
		ln, err := net.Listen("tcp", l.Address)
		return ln, l.Address, err
	}
	if err := sockfile.RemoveStale(l.Path); err != nil {
		return nil, l.Path, err
	}
	ln, err := net.Listen("unix", l.Path)
	if err != nil {
		return nil, l.Path, err
	}
	if err := os.Chmod(l.Path, fs.FileMode(l.Mode)); err != nil {
		ln.Close()
		return nil, l.Path, err
	}
	return ln, l.Path, nil
}
