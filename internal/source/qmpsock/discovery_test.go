package qmpsock

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func listenUnix(t *testing.T, path string) net.Listener {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestDiscovererScan(t *testing.T) {
	dir := t.TempDir()
	listenUnix(t, filepath.Join(dir, "a.qmp"))
	listenUnix(t, filepath.Join(dir, "b.qmp"))
	if err := os.WriteFile(filepath.Join(dir, "notasocket.qmp"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	listenUnix(t, filepath.Join(dir, "c.other"))
	d := NewDiscoverer([]string{filepath.Join(dir, "*.qmp"), filepath.Join(dir, "a.*")}, time.Minute)
	want := []string{filepath.Join(dir, "a.qmp"), filepath.Join(dir, "b.qmp")}
	if diff := cmp.Diff(want, d.Scan()); diff != "" {
		t.Errorf("Scan (-want +got):\n%s", diff)
	}
}

// runDiscoverer runs d and returns a function that waits for its next
// report.
func runDiscoverer(t *testing.T, d *Discoverer) func(within time.Duration) []string {
	t.Helper()
	changes := make(chan []string, 16)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, func(s []string) { changes <- s }) }()
	t.Cleanup(func() { cancel(); <-done })
	return func(within time.Duration) []string {
		t.Helper()
		select {
		case s := <-changes:
			return s
		case <-time.After(within):
			t.Fatalf("no change reported within %v", within)
			return nil
		}
	}
}

// TestDiscovererInotify: with a rescan interval of an hour, sockets that
// appear and disappear can only be reported through inotify.
func TestDiscovererInotify(t *testing.T) {
	dir := t.TempDir()
	next := runDiscoverer(t, NewDiscoverer([]string{filepath.Join(dir, "*.qmp")}, time.Hour))
	if got := next(5 * time.Second); len(got) != 0 {
		t.Fatalf("initial set = %v, want empty", got)
	}
	a := filepath.Join(dir, "a.qmp")
	ln := listenUnix(t, a)
	if diff := cmp.Diff([]string{a}, next(5*time.Second)); diff != "" {
		t.Errorf("after creating a.qmp (-want +got):\n%s", diff)
	}
	ln.Close() // removes the socket file
	if got := next(5 * time.Second); len(got) != 0 {
		t.Errorf("after removing a.qmp: %v", got)
	}
}

// TestDiscovererRescan: a directory created after the start is found by
// the periodic rescan.
func TestDiscovererRescan(t *testing.T) {
	dir := t.TempDir()
	later := filepath.Join(dir, "later")
	next := runDiscoverer(t, NewDiscoverer([]string{filepath.Join(later, "*.qmp")}, 200*time.Millisecond))
	if got := next(5 * time.Second); len(got) != 0 {
		t.Fatalf("initial set = %v, want empty", got)
	}
	if err := os.Mkdir(later, 0o755); err != nil {
		t.Fatal(err)
	}
	b := filepath.Join(later, "b.qmp")
	listenUnix(t, b)
	if diff := cmp.Diff([]string{b}, next(10*time.Second)); diff != "" {
		t.Errorf("socket in a directory created later (-want +got):\n%s", diff)
	}
}
