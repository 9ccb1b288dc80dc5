package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
)

// fleetStaleAfter is discovery.stale_after in the fleet test's
// configuration. It must comfortably exceed the time a killed VM takes to
// be restarted and reconnected (a few seconds), or the dialled-in VM would
// be forgotten, and its counters lost, before it comes back.
const fleetStaleAfter = 10 * time.Second

// TestFleetEndToEnd proves the three ways the exporter finds VMs without
// naming them one by one, on real QEMUs running at the same time: a VM
// listed in the configuration file ("static"), one discovered when its
// socket appears in a watched directory after the exporter started
// ("disc1", the plain-QEMU recipe) and two that dial the exporter's
// listener with a client-mode chardev, taken from the example files of
// the libvirt ("dialer") and Proxmox VE ("pve-guest") recipes (with
// reconnect-ms on a QEMU that has it, see recipeArgs). Each is
// stopped, killed and restarted; a discovered socket is left behind,
// deleted and removed by QEMU itself; the configuration is reloaded with a
// VM added and one removed, then broken, then fixed.
//
// stale_after is set in the file only, not with --qmp.stale-after, so the
// test also proves that the file's value is used.
func TestFleetEndToEnd(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, 90*time.Second)
	defer cancel()

	dir := t.TempDir()
	discDir := filepath.Join(dir, "disc")
	if err := os.Mkdir(discDir, 0o755); err != nil {
		t.Fatal(err)
	}
	listenPath := filepath.Join(dir, "listen.sock")
	cfgPath := filepath.Join(dir, "fleet.yml")
	fleetConfig := func(name string) string {
		return fmt.Sprintf("vms:\n  - name: %s\n    socket: %q\n"+
			"discovery:\n  socket_globs: [%q]\n  stale_after: %s\n"+
			"listen:\n  - path: %q\n    mode: 0660\n    allowed_uids: [%d]\n"+
			"labels:\n  site: lab\n",
			name, filepath.Join(dir, name+".qmp"), filepath.Join(discDir, "*.qmp"), fleetStaleAfter, listenPath, os.Getuid())
	}
	writeConfig := func(content string) {
		t.Helper()
		if err := os.WriteFile(cfgPath, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	opts := map[string]qemulab.Options{
		"static": {Dir: filepath.Join(dir, "vm-static"), Name: "static",
			UUID: "f1ee0000-0000-4000-8000-000000000001", ExporterSocket: filepath.Join(dir, "static.qmp")},
		"static2": {Dir: filepath.Join(dir, "vm-static2"), Name: "static2",
			UUID: "f1ee0000-0000-4000-8000-000000000002", ExporterSocket: filepath.Join(dir, "static2.qmp")},
		"disc1": {Dir: filepath.Join(dir, "vm-disc1"), Name: "disc1",
			UUID: "f1ee0000-0000-4000-8000-000000000003", ExporterSocket: filepath.Join(discDir, "disc1.qmp")},
	}
	// The two recipes that dial the listener, set once the static VM has
	// told which QEMU runs: the libvirt one, the arguments of its domain
	// XML snippet, as libvirt passes them with -name and -uuid; the
	// Proxmox VE one, its args: line, with the name and UUID given as
	// Proxmox does (the UUID only through SMBIOS).
	dialers := func(v qemulab.Version) {
		opts["dialer"] = qemulab.Options{Dir: filepath.Join(dir, "vm-dialer"), Name: "dialer",
			UUID: "f1ee0000-0000-4000-8000-000000000004", NoExporterMonitor: true,
			ExtraArgs: recipeArgs(t, "libvirt/domain-snippet.xml", listenPath, v)}
		opts["pve-guest"] = qemulab.Options{Dir: filepath.Join(dir, "vm-pve"), NoExporterMonitor: true,
			ExtraArgs: append([]string{"-name", "pve-guest,debug-threads=on", "-smbios", "type=1,uuid=f1ee0000-0000-4000-8000-000000000005"},
				recipeArgs(t, "proxmox/vmid.conf.snippet", listenPath, v)...)}
	}
	start := func(name string) *qemulab.VM {
		t.Helper()
		vm, err := qemulab.Start(ctx, opts[name])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { vm.Close() })
		return vm
	}
	// restartInPlace starts a new QEMU for a discovered VM whose killed
	// predecessor left its socket file behind. QEMU replaces a stale socket
	// file by unlinking it just before binding the new one, so the path is
	// missing for microseconds; qemulab instead removes it before starting
	// QEMU, which leaves it missing for the whole start-up, long enough for
	// discovery to see the VM go and forget it. Binding elsewhere and
	// renaming the socket over the stale one reproduces QEMU's own
	// behaviour without that gap.
	restartInPlace := func(name string) *qemulab.VM {
		t.Helper()
		o := opts[name]
		final := o.ExporterSocket
		o.ExporterSocket = filepath.Join(o.Dir, "staged.qmp")
		vm, err := qemulab.Start(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { vm.Close() })
		if err := os.Rename(vm.ExporterSocket, final); err != nil {
			t.Fatal(err)
		}
		return vm
	}
	kill := func(vm *qemulab.VM) {
		t.Helper()
		if err := vm.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	ctl := func(vm *qemulab.VM, cmd string) {
		t.Helper()
		if _, err := vm.Ctl.Execute(ctx, cmd, nil); err != nil {
			t.Fatalf("%s on the control monitor: %v", cmd, err)
		}
	}
	quit := func(vm *qemulab.VM) {
		t.Helper()
		qctx, qc := context.WithTimeout(ctx, 20*time.Second)
		defer qc()
		if err := vm.Quit(qctx); err != nil {
			t.Fatal(err)
		}
	}

	// Series of a VM, with the configuration's global label.
	up := func(vm string) string { return `qmp_up{site="lab",vm="` + vm + `"}` }
	stops := func(vm string) string { return `qmp_events_total{event="STOP",site="lab",vm="` + vm + `"}` }
	status := func(vm, s string) string { return `qmp_vm_status{site="lab",status="` + s + `",vm="` + vm + `"}` }
	const reloadOK = "qmp_exporter_config_last_reload_successful"
	// gone reports whether no series at all carries the VM.
	gone := func(m exporterproc.Metrics, vm string) bool {
		for s := range m {
			if strings.Contains(s, `vm="`+vm+`"`) {
				return false
			}
		}
		return true
	}
	// allUp reports whether every VM is up and running with its STOP
	// count at want (-1: no STOP series).
	allUp := func(m exporterproc.Metrics, want float64, vms ...string) bool {
		for _, vm := range vms {
			if !m.Has(up(vm), 1) || !m.Has(status(vm, "running"), 1) {
				return false
			}
			if _, ok := m.Value(stops(vm)); want < 0 && ok || want >= 0 && !m.Has(stops(vm), want) {
				return false
			}
		}
		return true
	}
	var e *e2e
	reload := func() (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+e.exp.Addr+"/-/reload", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	// The static VM runs before the exporter starts; the socket directory
	// is still empty and nothing has dialled in.
	writeConfig(fleetConfig("static"))
	vms := map[string]*qemulab.VM{"static": start("static")}
	dialers(vms["static"].Version())
	e = startExporter(t, ctx, bin, "--config.file="+cfgPath, "--log.level=debug",
		"--qmp.max-backoff=1s", "--qmp.dial-timeout=2s", "--qmp.command-timeout=2s")
	e.wait("static VM up", func(m exporterproc.Metrics) bool { return allUp(m, -1, "static") })
	if fi, err := os.Stat(listenPath); err != nil || fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("listener socket: %v %v, want a socket with mode 0660", fi, err)
	}

	// disc1's socket appears in the watched directory; the dialer's QEMU
	// connects to the listener. Neither is named anywhere in the
	// configuration: the vm label is QEMU's -name.
	vms["disc1"] = start("disc1")
	e.wait("disc1 discovered", func(m exporterproc.Metrics) bool { return allUp(m, -1, "disc1") })
	vms["dialer"] = start("dialer")
	vms["pve-guest"] = start("pve-guest")
	fleet := []string{"static", "disc1", "dialer", "pve-guest"}
	e.wait("the whole fleet up", func(m exporterproc.Metrics) bool { return allUp(m, -1, fleet...) })

	for _, name := range fleet {
		ctl(vms[name], "stop")
	}
	e.wait("STOP counted on each", func(m exporterproc.Metrics) bool {
		for _, vm := range fleet {
			if !m.Has(stops(vm), 1) || !m.Has(status(vm, "paused"), 1) {
				return false
			}
		}
		return true
	})

	// SIGKILL: every session drops and the counters stay.
	for _, name := range fleet {
		kill(vms[name])
	}
	e.wait("qmp_up 0 on each after SIGKILL", func(m exporterproc.Metrics) bool {
		for _, vm := range fleet {
			if !m.Has(up(vm), 0) || !m.Has(stops(vm), 1) {
				return false
			}
		}
		return true
	})

	// A new QEMU for each: the static and discovered ones on the same
	// socket, the two that dial in recognised by their UUID. Each continues
	// its series.
	vms["static"] = start("static")
	vms["disc1"] = restartInPlace("disc1")
	vms["dialer"] = start("dialer")
	vms["pve-guest"] = start("pve-guest")
	m := e.wait("the whole fleet back with its counters", func(m exporterproc.Metrics) bool { return allUp(m, 1, fleet...) })
	if v, _ := m.Value(`qmp_listener_connections_total{listener="` + listenPath + `",result="accepted"}`); v < 4 {
		t.Errorf("listener accepted %v connections, want at least 4 (one per QEMU that dialled in)\n%s", v, m.Filter("qmp_listener"))
	}

	// A discovered VM killed for good leaves its socket file behind:
	// connections are refused, and after stale_after its series are hidden.
	kill(vms["disc1"])
	e.wait("disc1 down", func(m exporterproc.Metrics) bool { return m.Has(up("disc1"), 0) })
	e.wait("disc1 hidden after stale_after", func(m exporterproc.Metrics) bool {
		return gone(m, "disc1") && allUp(m, 1, "static", "dialer", "pve-guest")
	})
	if fi, err := os.Stat(opts["disc1"].ExporterSocket); err != nil || fi.Mode()&fs.ModeSocket == 0 {
		t.Fatalf("the killed VM's socket file should still be there: %v", err)
	}
	// Hidden, not forgotten: when it comes back its counters continue.
	vms["disc1"] = restartInPlace("disc1")
	e.wait("disc1 back after being hidden, counters kept", func(m exporterproc.Metrics) bool { return allUp(m, 1, fleet...) })

	// Reload: static2 replaces static. The discovered and dialled-in VMs
	// keep their sessions and counters.
	vms["static2"] = start("static2")
	writeConfig(fleetConfig("static2"))
	if code, body := reload(); code != http.StatusOK {
		t.Fatalf("POST /-/reload = %d %s", code, body)
	}
	e.wait("static2 added, static removed", func(m exporterproc.Metrics) bool {
		return allUp(m, -1, "static2") && gone(m, "static") && allUp(m, 1, "disc1", "dialer", "pve-guest") && m.Has(reloadOK, 1)
	})

	// A broken file is refused; the running configuration stays.
	writeConfig(fleetConfig("static2") + "bogus: true\n")
	if code, body := reload(); code != http.StatusInternalServerError || !strings.Contains(body, "field bogus not found") {
		t.Fatalf("POST /-/reload of a broken file = %d %q, want 500 naming the unknown field", code, body)
	}
	e.wait("failed reload reported, everything still watched", func(m exporterproc.Metrics) bool {
		return m.Has(reloadOK, 0) && allUp(m, -1, "static2") && gone(m, "static") && allUp(m, 1, "disc1", "dialer", "pve-guest")
	})
	// Fixed, and reloaded with SIGHUP as systemd's ExecReload does.
	writeConfig(fleetConfig("static2"))
	if err := e.exp.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	e.wait("SIGHUP reload succeeded", func(m exporterproc.Metrics) bool {
		return m.Has(reloadOK, 1) && allUp(m, -1, "static2") && allUp(m, 1, "disc1", "dialer", "pve-guest")
	})

	// Deleting a discovered VM's socket file (a management tool cleaning
	// up after a crash) removes the VM: its series go, and a new QEMU on
	// that path starts from zero.
	kill(vms["disc1"])
	if err := os.Remove(opts["disc1"].ExporterSocket); err != nil {
		t.Fatal(err)
	}
	e.wait("disc1 removed with its socket", func(m exporterproc.Metrics) bool { return gone(m, "disc1") })
	vms["disc1"] = start("disc1")
	e.wait("disc1 rediscovered from zero", func(m exporterproc.Metrics) bool { return allUp(m, -1, "disc1") })
	ctl(vms["disc1"], "stop")
	e.wait("disc1 STOP counted", func(m exporterproc.Metrics) bool { return m.Has(stops("disc1"), 1) })

	// quit: QEMU removes its socket file itself, and the VM goes with it.
	// Started again, it is a new VM: no STOP counted.
	quit(vms["disc1"])
	if _, err := os.Stat(opts["disc1"].ExporterSocket); !os.IsNotExist(err) {
		t.Fatalf("QEMU left its socket after quit: %v", err)
	}
	e.wait("disc1 removed after quit", func(m exporterproc.Metrics) bool { return gone(m, "disc1") })
	vms["disc1"] = start("disc1")
	e.wait("disc1 back from zero after quit", func(m exporterproc.Metrics) bool {
		return allUp(m, -1, "disc1", "static2") && allUp(m, 1, "dialer", "pve-guest")
	})
}

// TestHelpSuggestsNoManagementSocket keeps --help in line with the
// recipes: a QMP server socket serves one client at a time, so an example
// pointing the exporter at the monitor Proxmox (qm, qmeventd) or libvirt
// already uses would, copied as is, make those tools hang.
func TestHelpSuggestsNoManagementSocket(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--help"}, &out, &errOut); code != 0 {
		t.Fatalf("--help exited %d: %s", code, errOut.String())
	}
	for _, p := range []string{"/run/qemu-server/", "qmeventd.sock", "/var/lib/libvirt/qemu/", "/run/libvirt/qemu/"} {
		if strings.Contains(out.String(), p) {
			t.Errorf("--help mentions %s, a management stack's own monitor; the exporter needs its own", p)
		}
	}
}

// recipeArgs returns the QEMU arguments of an example snippet of
// examples/ (the libvirt domain XML or the Proxmox args: line), with the
// recipe's listener path replaced by listen. For QEMU 9.2 and later it
// writes reconnect-ms=5000 instead of reconnect=5, as the recipes tell.
func recipeArgs(t *testing.T, snippet, listen string, v qemulab.Version) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(exporterproc.ModuleRoot(t), "examples", snippet))
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	if filepath.Ext(snippet) == ".xml" {
		d := xml.NewDecoder(bytes.NewReader(data))
		for {
			tok, err := d.Token()
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", snippet, err)
			}
			if el, ok := tok.(xml.StartElement); ok && el.Name.Space == "http://libvirt.org/schemas/domain/qemu/1.0" && el.Name.Local == "arg" {
				for _, a := range el.Attr {
					if a.Name.Local == "value" {
						args = append(args, a.Value)
					}
				}
			}
		}
	} else {
		for line := range strings.Lines(string(data)) {
			if rest, ok := strings.CutPrefix(line, "args:"); ok {
				args = strings.Fields(rest)
			}
		}
	}
	const recipeListener, reconnect = "/run/qmp_exporter/qmp.sock", ",reconnect=5"
	replaced := 0
	for i, a := range args {
		if strings.Contains(a, "path="+recipeListener+",") && strings.HasSuffix(a, reconnect) {
			a = strings.Replace(a, "path="+recipeListener+",", "path="+listen+",", 1)
			if v.AtLeast(9, 2) {
				a = strings.TrimSuffix(a, reconnect) + ",reconnect-ms=5000"
			}
			args[i] = a
			replaced++
		}
	}
	if replaced != 1 {
		t.Fatalf("%s: want one chardev with path=%s ending in %s, got %q", snippet, recipeListener, reconnect, args)
	}
	return args
}
