package qmpsock

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// fleetNames returns the default names of f's VMs, sorted.
func fleetNames(f *fleet.Fleet) []string {
	var names []string
	f.Visible(time.Now(), func(v *fleet.VM, _ string, _ *vmstate.State) {
		names = append(names, v.Meta().DefaultName)
	})
	slices.Sort(names)
	return names
}

// waitNames waits (bounded) until f's VMs are want.
func waitNames(t *testing.T, f *fleet.Fleet, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(fleetNames(f), want) {
		if time.Now().After(deadline) {
			t.Fatalf("fleet has %q, want %q", fleetNames(f), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConfigureWatchesGlobs: a socket that appears under a glob becomes a
// VM beside the configured ones, a socket a configured target already
// watches is not watched twice, and a reload without the glob lets go of
// the discovered VM but keeps the configured one.
func TestConfigureWatchesGlobs(t *testing.T) {
	dir := t.TempDir()
	f := fleet.New(fleet.Options{})
	src := New(f, Options{MaxBackoff: time.Second, Dial: func(context.Context, string, string, qmp.Options) (*qmp.Conn, error) {
		return nil, errors.New("no QEMU in this test")
	}})
	static := []Target{{Network: "unix", Address: filepath.Join(dir, "static.qmp")}}
	glob := filepath.Join(dir, "*.qmp")
	src.Configure(static, []string{glob}, time.Minute, map[string]string{"site": "a"})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { src.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	waitNames(t, f, "static")
	listenUnix(t, filepath.Join(dir, "found.qmp"))
	listenUnix(t, filepath.Join(dir, "static.qmp"))
	waitNames(t, f, "found", "static")
	f.Visible(time.Now(), func(v *fleet.VM, _ string, _ *vmstate.State) {
		if m := v.Meta(); m.DefaultName == "found" && (!m.HideWhenStale || m.Labels["site"] != "a") {
			t.Errorf("a discovered VM's meta is %+v, want hidden when stale and labelled site=a", m)
		}
	})

	src.Configure(static, nil, time.Minute, nil)
	waitNames(t, f, "static")
}
