package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logfmt/logfmt"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
)

// TestLogLinesCarryEachFieldOnce starts the real exporter in both log
// formats and reads every line it wrote, ours and exporter-toolkit's
// (through the slog bridge): each has ts, caller, level and msg, and no
// key twice.
func TestLogLinesCarryEachFieldOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the exporter")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	bin := buildExporter(t, ctx)
	for _, format := range []string{"logfmt", "json"} {
		t.Run(format, func(t *testing.T) {
			exp, err := exporterproc.Start(ctx, bin, "--log.format="+format, "--qmp.socket=/nonexistent/vm.qmp")
			if err != nil {
				t.Fatal(err)
			}
			sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			if err := exp.Stop(sctx); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(exp.Logs()), "\n")
			toolkit := false
			for _, line := range lines {
				keys, err := logKeys(format, line)
				if err != nil {
					t.Errorf("%v: %s", err, line)
					continue
				}
				seen := map[string]int{}
				for _, k := range keys {
					seen[k]++
				}
				for k, n := range seen {
					if n > 1 {
						t.Errorf("key %s %d times in %s", k, n, line)
					}
				}
				for _, k := range []string{"ts", "caller", "level", "msg"} {
					if seen[k] != 1 {
						t.Errorf("no %s in %s", k, line)
					}
				}
				toolkit = toolkit || strings.Contains(line, "Listening on")
			}
			if !toolkit || len(lines) < 3 {
				t.Errorf("exporter-toolkit's line is missing from:\n%s", exp.Logs())
			}
		})
	}
}

// TestDialledInLogLines starts the real exporter with a listener and a
// real QEMU that dials in with the libvirt recipe's chardev, kills QEMU,
// and reads what the exporter logged of it: the watcher's lines name the
// VM by its label (its -name, as its series do), not by its identity
// (uuid:...), and their caller is the watcher's code, although a
// dialled-in VM's lines pass through the listener's limiter; the
// listener's own line names the listener.
func TestDialledInLogLines(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, time.Minute)
	defer cancel()
	dir := t.TempDir()
	listen := filepath.Join(dir, "listen.sock")
	exp, err := exporterproc.Start(ctx, bin, "--qmp.listen="+listen, "--qmp.command-timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		if err := exp.Stop(sctx); err != nil {
			t.Errorf("exporter did not stop cleanly: %v", err)
		}
		stopped = true
	}
	defer func() {
		if !stopped {
			stop()
		}
	}()
	qemuVersion, err := qemulab.BinaryVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := qemulab.Start(ctx, qemulab.Options{Dir: filepath.Join(dir, "vm"), Name: "dialer",
		UUID: "ba6b0000-0000-4000-8000-00000000d1a1", NoExporterMonitor: true,
		ExtraArgs: recipeArgs(t, "libvirt/domain-snippet.xml", listen, qemuVersion)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	waitUp := func(v float64) {
		t.Helper()
		wctx, c := context.WithTimeout(ctx, 30*time.Second)
		defer c()
		if _, err := exp.WaitFor(wctx, "qmp_up of the VM that dialled in", func(m exporterproc.Metrics) bool {
			return m.Has(`qmp_up{vm="dialer"}`, v)
		}); err != nil {
			t.Fatalf("%v\n%s", err, exp.Logs())
		}
	}
	waitUp(1)
	if err := vm.Kill(); err != nil {
		t.Fatal(err)
	}
	waitUp(0)
	stop()

	want := map[string][2]string{ // msg: vm, file of the caller
		"vm dialled in":           {"", "listener.go"},
		"qmp session established": {"dialer", "watcher.go"},
		"qmp session lost":        {"dialer", "watcher.go"},
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(exp.Logs()), "\n") {
		msg, vmField, caller := logField(line, "msg"), logField(line, "vm"), logField(line, "caller")
		w, ok := want[msg]
		if !ok {
			continue
		}
		seen[msg] = true
		if file, _, _ := strings.Cut(caller, ":"); vmField != w[0] || file != w[1] {
			t.Errorf("vm=%q caller=%q, want vm=%q and a caller in %s: %s", vmField, caller, w[0], w[1], line)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("want a line of each of %v in:\n%s", want, exp.Logs())
	}
}

// logKeys returns the keys of one log line, repeated ones included.
func logKeys(format, line string) ([]string, error) {
	var keys []string
	if format == "logfmt" {
		d := logfmt.NewDecoder(strings.NewReader(line))
		for d.ScanRecord() {
			for d.ScanKeyval() {
				keys = append(keys, string(d.Key()))
			}
		}
		return keys, d.Err()
	}
	d := json.NewDecoder(bytes.NewReader([]byte(line)))
	if _, err := d.Token(); err != nil { // {
		return nil, err
	}
	for d.More() {
		k, err := d.Token()
		if err != nil {
			return nil, err
		}
		keys = append(keys, k.(string))
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			return nil, err
		}
	}
	return keys, nil
}
