package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
	"github.com/qmp-exporter/qmp_exporter/internal/virtlab"
)

// TestLibvirtEndToEnd runs the real binary against a real, private
// libvirtd through its read-only socket: a guestless domain is suspended,
// resumed, reset, its cdrom tray opened and closed, libvirtd restarted,
// the domain destroyed and started again, and /metrics must follow each
// step under the QMP names and the same series a QMP socket gives. At the
// end no domain is tainted: the exporter changed nothing.
func TestLibvirtEndToEnd(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, 4*time.Minute)
	defer cancel()
	d := virtlab.StartT(t, virtlab.Options{})
	dom, err := d.DefineAndStart(ctx, virtlab.DomainOptions{Name: "virtlab-web", CDROM: true, VNC: true, SPICE: true, Balloon: true})
	if err != nil {
		t.Fatal(err)
	}
	e := startExporter(t, ctx, bin, "--libvirt.socket="+d.SocketRO(), "--qmp.refresh-interval=2s", "--qmp.max-backoff=1s", "--log.level=debug")
	vm := `vm="virtlab-web"`
	has := func(series string, v float64) func(exporterproc.Metrics) bool {
		return func(m exporterproc.Metrics) bool { return m.Has(series, v) }
	}
	m := e.wait("the domain up and running", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_up{`+vm+`}`, 1) && m.Has(`qmp_vm_status{status="running",`+vm+`}`, 1) && hasInfo(m, dom.UUID(), vm) &&
			// The disks of the domain XML, their counters from 0.
			m.Has(`qmp_tray_open{device="ide0-1-0",`+vm+`}`, 0) && m.Has(`qmp_block_io_status{device="ide0-1-0",status="ok",`+vm+`}`, 1) &&
			// The balloon, as libvirt's memory statistics give it.
			m[`qmp_balloon_actual_bytes{`+vm+`}`] > 0 &&
			m.Has(`qmp_block_io_errors_total{action="report",device="ide0-1-0",operation="unknown",`+vm+`}`, 0)
	})
	// What only a QMP session of the exporter's own knows is absent.
	for _, series := range []string{`qmp_connection_attempts_total{` + vm + `}`, `qmp_protocol_errors_total{` + vm + `}`} {
		if v, ok := m.Value(series); ok {
			t.Errorf("%s = %v for a libvirt domain, want it absent", series, v)
		}
	}

	// Nova writes its instance metadata into the domain XML; the exporter
	// reads it at the next refresh.
	if out, err := d.Virsh(ctx, "metadata", dom.Name(), "--live", "--uri", "http://openstack.org/xmlns/libvirt/nova/1.1", "--key", "nova",
		"--set", `<instance><name>web-1</name><flavor name="m1.small"/><owner><user uuid="u-1">alice</user><project uuid="p-1">shop</project></owner></instance>`); err != nil {
		t.Fatalf("setting Nova's metadata: %v\n%s", err, out)
	}
	e.wait("Nova's metadata", has(`qmp_openstack_instance_info{flavor="m1.small",instance_name="web-1",project_id="p-1",project_name="shop",user_id="u-1",user_name="alice",`+vm+`}`, 1))

	step := func(what string, do func(context.Context) error, series string, v float64) {
		t.Helper()
		if err := do(ctx); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		e.wait(what, has(series, v))
	}
	step("suspend", dom.Suspend, `qmp_vm_status{status="paused",`+vm+`}`, 1)
	e.wait("STOP counted", has(`qmp_events_total{event="STOP",`+vm+`}`, 1))
	step("resume", dom.Resume, `qmp_events_total{event="RESUME",`+vm+`}`, 1)
	e.wait("running again", has(`qmp_vm_status{status="running",`+vm+`}`, 1))
	// The journal keeps libvirt's events too, under their QMP names.
	var events struct {
		Events []pageEvent `json:"events"`
	}
	e.getJSON("/events?vm=virtlab-web&format=json", &events)
	if len(events.Events) < 2 || events.Events[0].Event != "RESUME" || events.Events[1].Event != "STOP" || events.Events[0].Source != "libvirt" {
		t.Errorf("/events of the domain = %+v; want RESUME then STOP first, from libvirt", events.Events)
	}
	// QEMU resets once for virsh reset, then SeaBIOS resets the machine
	// again; libvirt relays one reboot event for the first and one for
	// the guest's resets (QEMU sent two of those, a fraction of a
	// millisecond apart).
	if err := dom.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	resets := e.wait("reset", func(m exporterproc.Metrics) bool {
		v, _ := m.Value(`qmp_events_total{event="RESET",` + vm + `}`)
		return v >= 1
	})[`qmp_events_total{event="RESET",`+vm+`}`]
	// libvirt ejects by opening the tray, removing the medium and closing
	// it again: two DEVICE_TRAY_MOVED, and the tray shown closed.
	if err := dom.EjectCDROM(ctx); err != nil {
		t.Fatal(err)
	}
	e.wait("the tray opened and closed", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_events_total{event="DEVICE_TRAY_MOVED",`+vm+`}`, 2) && m.Has(`qmp_tray_open{device="ide0-1-0",`+vm+`}`, 0)
	})

	// A VNC client: libvirt relays QEMU's connect, initialize and
	// disconnect of the domain's display.
	display, err := d.Virsh(ctx, "domdisplay", dom.Name())
	if err != nil {
		t.Fatal(err)
	}
	addr, err := vncAddress(display)
	if err != nil {
		t.Fatal(err)
	}
	client, err := qemulab.VNCHandshakeAt(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	e.wait("a VNC session", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_vnc_clients{`+vm+`}`, 1) && m.Has(`qmp_vnc_sessions_total{`+vm+`}`, 1) && m.Has(`qmp_vnc_connections_total{`+vm+`}`, 1)
	})
	client.Close()
	e.wait("the VNC client gone", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_vnc_clients{`+vm+`}`, 0) && m.Has(`qmp_vnc_handshake_failures_total{`+vm+`}`, 0)
	})

	// A SPICE client on the domain's second display: libvirt relays each
	// channel's connect, initialize and disconnect, told from VNC's by
	// the port. Which channel opened a session libvirt does not say, so
	// qmp_spice_sessions_total is absent rather than a made-up number.
	display, err = d.Virsh(ctx, "domdisplay", "--type", "spice", dom.Name())
	if err != nil {
		t.Fatal(err)
	}
	spiceAddr, ok := strings.CutPrefix(strings.TrimSpace(display), "spice://")
	if !ok {
		t.Fatalf("virsh domdisplay --type spice said %q", display)
	}
	spiceClient, err := qemulab.SPICEHandshakeAt(ctx, "tcp", spiceAddr)
	if err != nil {
		t.Fatal(err)
	}
	m = e.wait("a SPICE channel", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_spice_clients{`+vm+`}`, 1) && m.Has(`qmp_spice_connections_total{`+vm+`}`, 1) &&
			m.Has(`qmp_events_total{event="SPICE_INITIALIZED",`+vm+`}`, 1)
	})
	if v, ok := m.Value(`qmp_spice_sessions_total{` + vm + `}`); ok {
		t.Errorf("qmp_spice_sessions_total = %v for a libvirt domain, want it absent", v)
	}
	spiceClient.Close()
	e.wait("the SPICE channel gone", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_spice_clients{`+vm+`}`, 0) && m.Has(`qmp_spice_handshake_failures_total{`+vm+`}`, 0) &&
			m.Has(`qmp_vnc_connections_total{`+vm+`}`, 1)
	})

	// libvirtd away for a while: its domains are not known to be up.
	if err := d.StopLibvirtd(ctx); err != nil {
		t.Fatalf("stopping libvirtd: %v", err)
	}
	e.wait("down while libvirtd is away", has(`qmp_up{`+vm+`}`, 0))
	if err := d.StartLibvirtd(ctx); err != nil {
		t.Fatalf("starting libvirtd: %v", err)
	}
	e.wait("up again", has(`qmp_up{`+vm+`}`, 1))
	if err := d.Restart(ctx); err != nil {
		t.Fatalf("restarting libvirtd: %v", err)
	}
	e.wait("back after the libvirtd restart, counters kept", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_up{`+vm+`}`, 1) && m.Has(`qmp_events_total{event="STOP",`+vm+`}`, 1) &&
			m.Has(`qmp_vm_status{status="running",`+vm+`}`, 1)
	})

	step("destroy", dom.Destroy, `qmp_up{`+vm+`}`, 0)
	step("start again", dom.Start, `qmp_up{`+vm+`}`, 1)
	e.wait("the same VM, counters continued", func(m exporterproc.Metrics) bool {
		v, _ := m.Value(`qmp_events_total{event="RESET",` + vm + `}`)
		return v >= resets && m.Has(`qmp_events_total{event="STOP",`+vm+`}`, 1) && m.Has(`qmp_vm_status{status="running",`+vm+`}`, 1)
	})

	if taint, tainted, err := dom.Tainted(ctx); err != nil || tainted {
		t.Errorf("domain tainted=%v (%q), err %v: the exporter must change nothing", tainted, taint, err)
	}
	if logs := e.exp.Logs(); strings.Contains(logs, "not on the read-only allow-list") {
		t.Errorf("the exporter tried a call off its allow-list:\n%s", logs)
	}
}

// hasInfo reports whether qmp_vm_info shows the domain's UUID and a QEMU
// version, which is whatever QEMU libvirt runs.
func hasInfo(m exporterproc.Metrics, uuid, vm string) bool {
	for series, v := range m {
		if v == 1 && strings.HasPrefix(series, `qmp_vm_info{package="",qemu_version="`) &&
			!strings.Contains(series, `qemu_version="",`) && strings.HasSuffix(series, `,uuid="`+uuid+`",`+vm+`}`) {
			return true
		}
	}
	return false
}

// TestLibvirtTwentyDomains: twenty domains at once all show up, each with
// its own series, and those destroyed go down while the others stay up.
func TestLibvirtTwentyDomains(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, 5*time.Minute)
	defer cancel()
	d := virtlab.StartT(t, virtlab.Options{})
	e := startExporter(t, ctx, bin, "--libvirt.socket="+d.SocketRO(), "--qmp.max-backoff=1s")
	const n = 20
	var doms []*virtlab.Domain
	for i := range n {
		dom, err := d.DefineAndStart(ctx, virtlab.DomainOptions{Name: fmt.Sprintf("virtlab-many-%02d", i), MemoryMiB: 16})
		if err != nil {
			t.Fatal(err)
		}
		doms = append(doms, dom)
	}
	up := func(m exporterproc.Metrics, v float64, doms []*virtlab.Domain) bool {
		for _, dom := range doms {
			if !m.Has(`qmp_up{vm="`+dom.Name()+`"}`, v) {
				return false
			}
		}
		return true
	}
	m := e.wait("all twenty domains up", func(m exporterproc.Metrics) bool { return up(m, 1, doms) })
	if v, ok := m.Value(`qmp_balloon_actual_bytes{vm="` + doms[0].Name() + `"}`); ok {
		t.Errorf("a domain without a balloon shows qmp_balloon_actual_bytes %v, want it absent", v)
	}
	for _, dom := range doms[:n/2] {
		if err := dom.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
	}
	e.wait("the destroyed half down, the rest up", func(m exporterproc.Metrics) bool {
		return up(m, 0, doms[:n/2]) && up(m, 1, doms[n/2:])
	})
	for _, dom := range doms {
		if taint, tainted, err := dom.Tainted(ctx); err != nil || tainted {
			t.Errorf("%s tainted=%v (%q), err %v", dom.Name(), tainted, taint, err)
		}
	}
}

// vncAddress turns virsh domdisplay's vnc://HOST:DISPLAY into the TCP
// address of the display (port 5900 + DISPLAY).
func vncAddress(display string) (string, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(display), "vnc://")
	host, num, found := strings.Cut(rest, ":")
	n, err := strconv.Atoi(num)
	if !ok || !found || err != nil {
		return "", fmt.Errorf("virsh domdisplay said %q, not vnc://HOST:DISPLAY", display)
	}
	return net.JoinHostPort(host, strconv.Itoa(5900+n)), nil
}

// TestLibvirtGuestFailures: guests that panic, let their watchdog fire
// and write to a full disk, under a real libvirtd, each seen through the
// read-only socket as the QMP events libvirt's events stand for, with the
// run state libvirt reports.
func TestLibvirtGuestFailures(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, 4*time.Minute)
	defer cancel()
	d := virtlab.StartT(t, virtlab.Options{})
	// A domain the exporter sees first, so that it is subscribed before
	// the guests below act (about 150 ms after they start).
	witness, err := d.DefineAndStart(ctx, virtlab.DomainOptions{Name: "virtlab-witness"})
	if err != nil {
		t.Fatal(err)
	}
	e := startExporter(t, ctx, bin, "--libvirt.socket="+d.SocketRO(), "--qmp.refresh-interval=2s", "--qmp.max-backoff=1s")
	e.wait("subscribed", func(m exporterproc.Metrics) bool { return m.Has(`qmp_up{vm="`+witness.Name()+`"}`, 1) })

	for _, tc := range []struct {
		name   string
		guest  virtlab.GuestAction
		opts   virtlab.DomainOptions
		series []string // each must be 1
	}{
		{"panic", virtlab.GuestPanic, virtlab.DomainOptions{Panic: true, OnCrash: "preserve"}, []string{
			`qmp_guest_panics_total{action="pause",info="none",vm="virtlab-panic"}`,
			`qmp_vm_status{status="guest-panicked",vm="virtlab-panic"}`,
		}},
		{"watchdog", virtlab.GuestWatchdog, virtlab.DomainOptions{Watchdog: "pause", WatchdogModel: virtlab.WatchdogIB700}, []string{
			`qmp_watchdog_actions_total{action="pause",vm="virtlab-watchdog"}`,
			`qmp_vm_status{status="watchdog",vm="virtlab-watchdog"}`,
		}},
		{"disk", virtlab.GuestDiskWrite, virtlab.DomainOptions{FullDisk: true}, []string{
			`qmp_block_io_errors_total{action="stop",device="ide0-0-0",operation="unknown",vm="virtlab-disk"}`,
			`qmp_block_io_nospace_errors_total{device="ide0-0-0",vm="virtlab-disk"}`,
			`qmp_vm_status{status="io-error",vm="virtlab-disk"}`,
			`qmp_block_io_status{device="ide0-0-0",status="nospace",vm="virtlab-disk"}`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			image, err := d.GuestImage(tc.guest)
			if err != nil {
				t.Fatal(err)
			}
			tc.opts.Name, tc.opts.Kernel = "virtlab-"+tc.name, image
			dom, err := d.DefineAndStart(ctx, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			e.wait(tc.name, func(m exporterproc.Metrics) bool {
				for _, s := range tc.series {
					if !m.Has(s, 1) {
						return false
					}
				}
				return true
			})
			if taint, tainted, err := dom.Tainted(ctx); err != nil || tainted {
				t.Errorf("domain tainted=%v (%q), err %v", tainted, taint, err)
			}
		})
	}

	// After a libvirtd restart the disk's domain is still paused on the
	// error, but which disk failed libvirt does not say: the io-status
	// the events told is gone with the session, and shown as unknown
	// (absent) rather than guessed.
	if err := d.Restart(ctx); err != nil {
		t.Fatalf("restarting libvirtd: %v", err)
	}
	e.wait("the io-status unknown after the restart", func(m exporterproc.Metrics) bool {
		_, shown := m.Value(`qmp_block_io_status{device="ide0-0-0",status="nospace",vm="virtlab-disk"}`)
		return !shown && m.Has(`qmp_up{vm="virtlab-disk"}`, 1) && m.Has(`qmp_vm_status{status="io-error",vm="virtlab-disk"}`, 1) &&
			m.Has(`qmp_block_io_nospace_errors_total{device="ide0-0-0",vm="virtlab-disk"}`, 1)
	})
}

// TestLibvirtMigration: a virsh dump is QEMU migrating the domain into a
// file; libvirt relays its passes as migration-iteration events. The dump
// goes into a pipe the test does not read at first, which holds the
// migration running (the guest carries megabytes of data to move): the
// exporter shows it active with its figures, polled from libvirt's job
// statistics. Once the test reads the pipe the migration completes, as
// the completed job's statistics say, with its final figures, and the
// domain runs on. Then it migrates live to a second libvirtd and back.
func TestLibvirtMigration(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, 4*time.Minute)
	defer cancel()
	d := virtlab.StartT(t, virtlab.Options{})
	image, err := d.GuestImage(virtlab.GuestBallast)
	if err != nil {
		t.Fatal(err)
	}
	dom, err := d.DefineAndStart(ctx, virtlab.DomainOptions{Name: "virtlab-mig", MemoryMiB: 64, Kernel: image})
	if err != nil {
		t.Fatal(err)
	}
	e := startExporter(t, ctx, bin, "--libvirt.socket="+d.SocketRO(), "--qmp.max-backoff=1s", "--log.level=debug")
	vm := `vm="virtlab-mig"`
	m := e.wait("the domain up", func(m exporterproc.Metrics) bool { return m.Has(`qmp_up{`+vm+`}`, 1) })
	for _, series := range []string{`qmp_migration_status{status="active",` + vm + `}`, `qmp_migration_transferred_bytes{` + vm + `}`} {
		if v, ok := m.Value(series); ok {
			t.Errorf("%s = %v before any migration, want it absent", series, v)
		}
	}

	pipe := filepath.Join(d.Dir(), "dump-pipe")
	if err := syscall.Mkfifo(pipe, 0o600); err != nil {
		t.Fatal(err)
	}
	dumped := make(chan error, 1)
	go func() {
		out, err := d.Virsh(ctx, "dump", dom.Name(), pipe)
		if err != nil {
			err = fmt.Errorf("virsh dump: %w\n%s", err, out)
		}
		dumped <- err
	}()
	r, err := os.Open(pipe) // returns once libvirt opened it to write
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m = e.wait("the migration running", func(m exporterproc.Metrics) bool {
		total, _ := m.Value(`qmp_migration_total_bytes{` + vm + `}`)
		return m.Has(`qmp_migration_status{status="active",`+vm+`}`, 1) && total >= 64<<20 &&
			m[`qmp_events_total{event="MIGRATION_PASS",`+vm+`}`] >= 1
	})
	if moved := m[`qmp_migration_transferred_bytes{`+vm+`}`]; moved >= virtlab.BallastBytes {
		t.Errorf("%v bytes transferred while the pipe is not read, want fewer than the %d of the ballast", moved, virtlab.BallastBytes)
	}

	n, err := io.Copy(io.Discard, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-dumped; err != nil {
		t.Fatal(err)
	}
	t.Logf("the dump was %d bytes", n)
	m = e.wait("the migration completed", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_migration_status{status="completed",`+vm+`}`, 1) && m.Has(`qmp_vm_status{status="running",`+vm+`}`, 1)
	})
	if moved := m[`qmp_migration_transferred_bytes{`+vm+`}`]; moved < virtlab.BallastBytes {
		t.Errorf("the completed migration transferred %v bytes, want at least the %d of the ballast", moved, virtlab.BallastBytes)
	}
	for _, figure := range []string{"downtime", "total_time"} {
		if v, ok := m.Value(`qmp_migration_` + figure + `_seconds{` + vm + `}`); !ok || v <= 0 {
			t.Errorf("qmp_migration_%s_seconds = %v (present %v), want the real figure", figure, v, ok)
		}
	}
	if v, ok := m.Value(`qmp_migrations_total{result="completed",` + vm + `}`); ok {
		t.Errorf("qmp_migrations_total = %v for a libvirt domain, want it absent: libvirt does not tell every failed migration", v)
	}
	if taint, tainted, err := dom.Tainted(ctx); err != nil || tainted {
		t.Errorf("domain tainted=%v (%q), err %v: the exporter must change nothing", tainted, taint, err)
	}

	// A live migration to another libvirtd (a Peer: another host, as far
	// as libvirt can tell), slowed to 1 MiB/s so that the ballast takes
	// seconds: active with its figures, then the domain gone from this
	// host, stopped as migrated. Migrated back, it is the same VM again,
	// a new QEMU with no migration of its own.
	peer, err := d.StartPeer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	passes := m[`qmp_events_total{event="MIGRATION_PASS",`+vm+`}`]
	migrated := make(chan error, 1)
	go func() { migrated <- dom.MigrateTo(ctx, peer, 1) }()
	e.wait("the live migration running", func(m exporterproc.Metrics) bool {
		moved, _ := m.Value(`qmp_migration_transferred_bytes{` + vm + `}`)
		return m.Has(`qmp_migration_status{status="active",`+vm+`}`, 1) && moved > 0 && moved < virtlab.BallastBytes &&
			m[`qmp_events_total{event="MIGRATION_PASS",`+vm+`}`] > passes
	})
	if err := <-migrated; err != nil {
		t.Fatal(err)
	}
	e.wait("the domain gone to the peer", func(m exporterproc.Metrics) bool { return m.Has(`qmp_up{`+vm+`}`, 0) })
	if err := peer.MigrateBack(ctx, dom); err != nil {
		t.Fatal(err)
	}
	e.wait("migrated back: up, a new QEMU without migration", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_up{`+vm+`}`, 1) && m.Has(`qmp_migration_status{status="none",`+vm+`}`, 1) &&
			m.Has(`qmp_vm_status{status="running",`+vm+`}`, 1) && m[`qmp_events_total{event="MIGRATION_PASS",`+vm+`}`] > passes
	})
	if taint, tainted, err := dom.Tainted(ctx); err != nil || tainted {
		t.Errorf("domain tainted=%v (%q), err %v after the migrations", tainted, taint, err)
	}
	if logs := e.exp.Logs(); strings.Contains(logs, "reconnecting") {
		t.Errorf("the exporter lost its libvirt connection:\n%s", logs)
	}
}
