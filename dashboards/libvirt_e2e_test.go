package dashboards

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/promlab"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
	"github.com/qmp-exporter/qmp_exporter/internal/virtlab"
)

// The libvirt domains of TestLibvirtAlertsAndDashboards, their vm labels.
const (
	libvirtPanicVM    = "virtlab-panic"    // its guest panics (pvpanic), on_crash preserve
	libvirtWatchdogVM = "virtlab-watchdog" // its guest lets an ib700 fire, action pause
	libvirtDiskVM     = "virtlab-disk"     // its guest writes to a full disk, error policy stop
	libvirtDevicesVM  = "virtlab-devices"  // no guest: reset, CD-ROM ejected, VNC and SPICE clients
)

// libvirtVMs are every domain of the test.
var libvirtVMs = []string{libvirtDevicesVM, libvirtPanicVM, libvirtWatchdogVM, libvirtDiskVM}

// TestLibvirtAlertsAndDashboards: the shipped alert rules and dashboards
// work unchanged for libvirt domains seen through the read-only socket.
// Under a real libvirtd, three guests panic, let their watchdog pause
// them and fail a write on a full disk, and a fourth domain is reset,
// has its CD-ROM ejected, a balloon, and VNC and SPICE clients. For a
// real Prometheus of each release, scraping the real exporter:
//
//   - alerts: the rules, evaluated with `for` 0s, fire the alert each
//     guest stands for, on the domain's vm label. The second Prometheus
//     starts after the events: it first sees the counters above 0, the
//     case the rules' `unless ... offset` half covers.
//   - dashboards: every variable lists the domains, and every query of
//     every dashboard runs without error with vm set to each domain;
//     each query returns series for some domain unless libvirtEmpty says
//     why it cannot, and then it must return none; the queries of
//     libvirtShows show their domain's event (checkLibvirtDashboards).
func TestLibvirtAlertsAndDashboards(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	qemulab.RequireQEMU(t)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	lab := startLibvirtLab(ctx, t)

	rulesPath := immediateRules(t, t.TempDir())
	for _, r := range promlab.Releases() {
		t.Run(r.Name, func(t *testing.T) {
			since := time.Now()
			prom, err := promlab.Start(ctx, promlab.Options{
				Dir: filepath.Join(t.TempDir(), "prometheus"), Binary: r.RequirePrometheus(t),
				Job: "qmp", Targets: []string{lab.exp.Addr}, RuleFiles: []string{rulesPath},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := prom.Close(); err != nil {
					t.Error(err)
				}
			}()
			// The alerts first: once they fired, Prometheus has the
			// guests' events.
			t.Run("alerts", func(t *testing.T) { checkLibvirtAlerts(ctx, t, prom, lab) })
			t.Run("dashboards", func(t *testing.T) { checkLibvirtDashboards(ctx, t, prom, lab, since) })
		})
	}
}

// libvirtLab is a private libvirtd running the test's domains, and the
// exporter watching it through the read-only socket.
type libvirtLab struct {
	exp *exporterproc.Process
}

// startLibvirtLab starts libvirtd, the exporter and the domains, makes
// the devices domain's events happen, and returns once the exporter
// shows them. The guests act as soon as they start, on their own.
func startLibvirtLab(ctx context.Context, t *testing.T) *libvirtLab {
	t.Helper()
	bin := exporterproc.BuildForTest(ctx, t)
	d := virtlab.StartT(t, virtlab.Options{})
	exp, err := exporterproc.Start(ctx, bin, "--libvirt.socket="+d.SocketRO(), "--qmp.refresh-interval=2s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(exp.Kill)
	wait := func(what string, cond func(exporterproc.Metrics) bool) {
		t.Helper()
		wctx, c := context.WithTimeout(ctx, 30*time.Second)
		defer c()
		if _, err := exp.WaitFor(wctx, what, cond); err != nil {
			t.Fatalf("%v\nexporter log:\n%s", err, exp.Logs())
		}
	}

	// The devices domain first: once the exporter shows it, it is
	// subscribed to libvirt's events before the guests below act.
	dev, err := d.DefineAndStart(ctx, virtlab.DomainOptions{Name: libvirtDevicesVM, CDROM: true, VNC: true, SPICE: true, Balloon: true})
	if err != nil {
		t.Fatal(err)
	}
	wait("the devices domain up", func(m exporterproc.Metrics) bool { return m.Has(`qmp_up{vm="`+libvirtDevicesVM+`"}`, 1) })

	for _, g := range []struct {
		name  string
		guest virtlab.GuestAction
		opts  virtlab.DomainOptions
	}{
		{libvirtPanicVM, virtlab.GuestPanic, virtlab.DomainOptions{Panic: true, OnCrash: "preserve"}},
		{libvirtWatchdogVM, virtlab.GuestWatchdog, virtlab.DomainOptions{Watchdog: "pause", WatchdogModel: virtlab.WatchdogIB700}},
		{libvirtDiskVM, virtlab.GuestDiskWrite, virtlab.DomainOptions{FullDisk: true}},
	} {
		image, err := d.GuestImage(g.guest)
		if err != nil {
			t.Fatal(err)
		}
		g.opts.Name, g.opts.Kernel = g.name, image
		if _, err := d.DefineAndStart(ctx, g.opts); err != nil {
			t.Fatal(err)
		}
	}

	// The devices domain's events: a reset, a CD-ROM eject (its tray
	// opens and closes), a VNC and a SPICE client that stay, and a
	// migration: a virsh dump is QEMU migrating into a file.
	if err := dev.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := d.Virsh(ctx, "dump", libvirtDevicesVM, filepath.Join(t.TempDir(), "dump")); err != nil {
		t.Fatalf("virsh dump: %v\n%s", err, out)
	}
	if err := dev.EjectCDROM(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		typ  string
		dial func(context.Context, string, string) (net.Conn, error)
	}{{"vnc", qemulab.VNCHandshakeAt}, {"spice", qemulab.SPICEHandshakeAt}} {
		display, err := d.Virsh(ctx, "domdisplay", "--type", c.typ, libvirtDevicesVM)
		if err != nil {
			t.Fatal(err)
		}
		addr, err := displayAddress(display)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := c.dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("%s client: %v", c.typ, err)
		}
		t.Cleanup(func() { conn.Close() })
	}
	dv := `vm="` + libvirtDevicesVM + `"`
	wait("the devices domain's events", func(m exporterproc.Metrics) bool {
		resets, _ := m.Value(`qmp_events_total{event="RESET",` + dv + `}`)
		trays, _ := m.Value(`qmp_events_total{event="DEVICE_TRAY_MOVED",` + dv + `}`)
		spice, _ := m.Value(`qmp_spice_clients{` + dv + `}`)
		balloon, _ := m.Value(`qmp_balloon_actual_bytes{` + dv + `}`)
		return resets >= 1 && trays >= 2 && m.Has(`qmp_vnc_clients{`+dv+`}`, 1) && spice >= 1 && balloon > 0 &&
			m.Has(`qmp_migration_status{status="completed",`+dv+`}`, 1)
	})
	return &libvirtLab{exp: exp}
}

// displayAddress turns virsh domdisplay's vnc://HOST:DISPLAY (port 5900
// + DISPLAY) or spice://HOST:PORT into a TCP address.
func displayAddress(display string) (string, error) {
	display = strings.TrimSpace(display)
	if rest, ok := strings.CutPrefix(display, "spice://"); ok {
		return rest, nil
	}
	rest, ok := strings.CutPrefix(display, "vnc://")
	host, num, found := strings.Cut(rest, ":")
	n, err := strconv.Atoi(num)
	if !ok || !found || err != nil {
		return "", fmt.Errorf("virsh domdisplay said %q, not vnc://HOST:DISPLAY or spice://HOST:PORT", display)
	}
	return net.JoinHostPort(host, strconv.Itoa(5900+n)), nil
}

// checkLibvirtAlerts waits for the alert each guest stands for.
func checkLibvirtAlerts(ctx context.Context, t *testing.T, prom *promlab.Server, lab *libvirtLab) {
	for _, a := range []struct {
		name   string
		labels map[string]string
	}{
		{"QEMUGuestPanicked", map[string]string{"vm": libvirtPanicVM, "action": "pause"}},
		{"QEMUWatchdogFired", map[string]string{"vm": libvirtWatchdogVM, "action": "pause"}},
		{"QEMUVMPausedOnIOError", map[string]string{"vm": libvirtDiskVM}},
		{"QEMUBlockIOErrors", map[string]string{"vm": libvirtDiskVM, "device": "ide0-0-0"}},
	} {
		wctx, c := context.WithTimeout(ctx, 30*time.Second)
		got, err := prom.WaitAlertFunc(wctx, a.name, a.labels, nil)
		c()
		if err != nil {
			t.Fatalf("%s: %v\nexporter log:\n%s", a.name, err, lab.exp.Logs())
		}
		t.Logf("%s fired: %s", a.name, got.Annotations["summary"])
	}
}
