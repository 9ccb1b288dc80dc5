package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
)

// TestSharedUUIDEndToEnd runs real QEMUs that share a -uuid, on sockets
// the exporter discovers and through its listener, and checks that each
// running QEMU is on /metrics exactly once:
//
//   - clone-a and clone-b (a cloned definition: one UUID, two names) are
//     two VMs, each followed on its own;
//   - two QEMU processes with one name and one UUID are two VMs, the
//     second under its socket's name (twin2);
//   - two-mon, one QEMU with two monitors on the watched directory, is
//     one VM, and so is dial-a, one QEMU with two monitors dialling in;
//   - dial-b dials in with dial-a's UUID and is a VM of its own.
//
// The three conflicts (clone-b, twin2, dial-b) are logged and counted in
// qmp_uuid_conflicts_total; the two QEMUs reached twice are logged as
// duplicates and not counted.
func TestSharedUUIDEndToEnd(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, 2*time.Minute)
	defer cancel()

	dir := t.TempDir()
	sockDir := filepath.Join(dir, "sock")
	if err := os.Mkdir(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	listen := filepath.Join(dir, "listen.sock")
	e := startExporter(t, ctx, bin, "--qmp.socket-glob="+filepath.Join(sockDir, "*.qmp"), "--qmp.listen="+listen,
		"--qmp.max-backoff=1s", "--qmp.dial-timeout=2s", "--qmp.command-timeout=2s")

	const (
		cloneUUID = "c10e0000-0000-4000-8000-000000000001"
		twinUUID  = "c10e0000-0000-4000-8000-000000000002"
		monUUID   = "c10e0000-0000-4000-8000-000000000003"
		dialUUID  = "c10e0000-0000-4000-8000-000000000004"
	)
	// monitor returns the arguments of one more QMP monitor: a server
	// socket at path, or (dialIn) a client that dials path.
	monitor := func(id, path string, dialIn bool) []string {
		mode := ",server=on,wait=off"
		if dialIn {
			mode = ",reconnect=1"
		}
		return []string{"-chardev", "socket,id=" + id + ",path=" + path + mode, "-mon", "chardev=" + id + ",mode=control"}
	}
	started := 0
	start := func(o qemulab.Options) *qemulab.VM {
		t.Helper()
		started++
		o.Dir = filepath.Join(dir, fmt.Sprintf("vm%d", started))
		vm, err := qemulab.Start(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { vm.Close() })
		return vm
	}
	sock := func(name string) string { return filepath.Join(sockDir, name+".qmp") }
	start(qemulab.Options{Name: "clone-a", UUID: cloneUUID, ExporterSocket: sock("clone-a")})
	cloneB := start(qemulab.Options{Name: "clone-b", UUID: cloneUUID, ExporterSocket: sock("clone-b")})
	start(qemulab.Options{Name: "twin", UUID: twinUUID, ExporterSocket: sock("twin1")})
	start(qemulab.Options{Name: "twin", UUID: twinUUID, ExporterSocket: sock("twin2")})
	start(qemulab.Options{Name: "two-mon", UUID: monUUID, ExporterSocket: sock("two-mon"),
		ExtraArgs: monitor("exp2", sock("two-mon-2"), false)})
	start(qemulab.Options{Name: "dial-a", UUID: dialUUID, NoExporterMonitor: true,
		ExtraArgs: append(monitor("in1", listen, true), monitor("in2", listen, true)...)})
	start(qemulab.Options{Name: "dial-b", UUID: dialUUID, NoExporterMonitor: true, ExtraArgs: monitor("in1", listen, true)})

	shown := []string{"clone-a", "clone-b", "twin", "twin2", "two-mon", "dial-a", "dial-b"}
	// Both duplicates are logged once their second session is up, and
	// only then is "one VM" a finding rather than a race.
	duplicates := func() int { return strings.Count(e.exp.Logs(), "two sources reach the same VM") }
	m := e.wait("every QEMU up once, both duplicates found", func(m exporterproc.Metrics) bool {
		for _, vm := range shown {
			if !m.Has(`qmp_up{vm="`+vm+`"}`, 1) {
				return false
			}
		}
		return duplicates() >= 2
	})
	var ups []string
	for s := range m {
		if strings.HasPrefix(s, "qmp_up{") {
			ups = append(ups, s)
		}
	}
	if len(ups) != len(shown) {
		t.Errorf("qmp_up series %v, want exactly one for each of %v", ups, shown)
	}
	for vm, uuid := range map[string]string{"clone-a": cloneUUID, "clone-b": cloneUUID, "twin": twinUUID, "twin2": twinUUID, "dial-b": dialUUID} {
		if want := fmt.Sprintf(`uuid="%s",vm="%s"} 1`, uuid, vm); !strings.Contains(m.Filter("qmp_vm_info"), want) {
			t.Errorf("qmp_vm_info lacks %s:\n%s", want, m.Filter("qmp_vm_info"))
		}
	}

	// Each clone is followed on its own: clone-b stops, clone-a runs on.
	if _, err := cloneB.Ctl.Execute(ctx, "stop", nil); err != nil {
		t.Fatal(err)
	}
	m = e.wait("clone-b paused, clone-a running, three conflicts counted", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_events_total{event="STOP",vm="clone-b"}`, 1) && m.Has(`qmp_vm_status{status="paused",vm="clone-b"}`, 1) &&
			m.Has(`qmp_vm_status{status="running",vm="clone-a"}`, 1) && m.Has("qmp_uuid_conflicts_total", 3)
	})
	if _, ok := m.Value(`qmp_events_total{event="STOP",vm="clone-a"}`); ok {
		t.Errorf("clone-b's STOP counted for clone-a:\n%s", m.Filter("qmp_events_total"))
	}

	logs := e.exp.Logs()
	var conflicts, dups []string
	for l := range strings.Lines(logs) {
		switch {
		case strings.Contains(l, "two different VMs report the same UUID"):
			conflicts = append(conflicts, l)
		case strings.Contains(l, "two sources reach the same VM"):
			dups = append(dups, l)
		}
	}
	// Which of dial-a and dial-b dialled in first decides which one is
	// "other_vm".
	for _, vms := range [][]string{{"vm=clone-b other_vm=clone-a"}, {"vm=twin2 other_vm=twin"},
		{"vm=dial-b other_vm=dial-a", "vm=dial-a other_vm=dial-b"}} {
		if !slices.ContainsFunc(vms, func(vm string) bool { return containsAny(conflicts, vm) }) {
			t.Errorf("no conflict logged with %s:\n%s", strings.Join(vms, " or "), strings.Join(conflicts, ""))
		}
	}
	if len(conflicts) != 3 {
		t.Errorf("%d conflicts logged, want 3:\n%s", len(conflicts), strings.Join(conflicts, ""))
	}
	// Either of two-mon's sockets may be the duplicate (key order).
	for _, vm := range []string{"vm=two-mon duplicate_address=" + filepath.Join(sockDir, "two-mon"), "vm=dial-a duplicate_address=uuid:" + dialUUID} {
		if !containsAny(dups, vm) {
			t.Errorf("no duplicate logged with %s:\n%s", vm, strings.Join(dups, ""))
		}
	}
	if len(dups) != 2 {
		t.Errorf("%d duplicates logged, want 2:\n%s", len(dups), strings.Join(dups, ""))
	}
}

// containsAny reports whether one of lines contains s.
func containsAny(lines []string, s string) bool {
	for _, l := range lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}
