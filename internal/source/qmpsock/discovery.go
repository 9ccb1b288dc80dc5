package qmpsock

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Discoverer finds the QMP sockets that match a set of globs and reports
// the set whenever it changes. It watches the globs' directories with
// inotify, so a socket that appears is reported within a debounce delay
// (DiscoveryDebounce), and rescans periodically as a safety net for
// directories that did not exist yet or events inotify missed.
type Discoverer struct {
	globs  []string
	rescan time.Duration
	// OnError receives problems (a directory that cannot be watched, an
	// inotify failure); nil ignores them. Scanning goes on regardless.
	OnError func(error)
}

// defaultRescan is the rescan interval when none is given.
const defaultRescan = 30 * time.Second

// DiscoveryDebounce is how long the Discoverer waits after a filesystem
// event before rescanning, so that a burst of events costs one scan.
const DiscoveryDebounce = 100 * time.Millisecond

// NewDiscoverer returns a Discoverer for globs (filepath.Match syntax),
// rescanning every rescan.
func NewDiscoverer(globs []string, rescan time.Duration) *Discoverer {
	if rescan <= 0 {
		rescan = defaultRescan
	}
	return &Discoverer{globs: slices.Clone(globs), rescan: rescan}
}

// Scan returns the sorted, de-duplicated unix sockets that match the
// globs now. Files that are not sockets are skipped.
func (d *Discoverer) Scan() []string {
	var out []string
	for _, g := range d.globs {
		matches, _ := filepath.Glob(g) // the globs were validated
		for _, m := range matches {
			if fi, err := os.Stat(m); err == nil && fi.Mode()&os.ModeSocket != 0 {
				out = append(out, m)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// watchDirs returns the existing directories whose entries can match the
// globs: the globs' directory parts, expanded when they hold wildcards.
func (d *Discoverer) watchDirs() []string {
	var dirs []string
	for _, g := range d.globs {
		dir := filepath.Dir(g)
		if strings.ContainsAny(dir, `*?[\`) {
			m, _ := filepath.Glob(dir)
			dirs = append(dirs, m...)
		} else {
			dirs = append(dirs, dir)
		}
	}
	slices.Sort(dirs)
	return slices.Compact(dirs)
}

// Run reports the current set at once, then every change, to onChange,
// until ctx ends. onChange runs on Run's goroutine.
func (d *Discoverer) Run(ctx context.Context, onChange func(sockets []string)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	watched := map[string]bool{}
	syncWatches := func() {
		for _, dir := range d.watchDirs() {
			if watched[dir] {
				continue
			}
			if err := w.Add(dir); err != nil {
				d.report(err)
				continue
			}
			watched[dir] = true
		}
	}
	syncWatches()
	last := d.Scan()
	onChange(slices.Clone(last))

	ticker := time.NewTicker(d.rescan)
	defer ticker.Stop()
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Op&(fsnotify.Remove|fsnotify.Rename) != 0 && watched[ev.Name] {
				delete(watched, ev.Name) // a watched directory went away
			}
			if debounce == nil {
				debounce = time.After(DiscoveryDebounce)
			}
			continue
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			d.report(err)
			continue
		case <-debounce:
		case <-ticker.C:
			syncWatches()
		}
		debounce = nil
		if now := d.Scan(); !slices.Equal(now, last) {
			last = now
			onChange(slices.Clone(now))
		}
	}
}

func (d *Discoverer) report(err error) {
	if d.OnError != nil {
		d.OnError(err)
	}
}
