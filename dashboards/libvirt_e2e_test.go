package dashboards

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/promlab"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
	"github.com/qmp-exporter/qmp_exporter/internal/virtlab"
)

// TestLibvirtAlerts: the shipped alert rules work unchanged for libvirt
// domains seen through the read-only socket. Under a real libvirtd, three
// guests panic, let their watchdog pause them and fail a write on a full
// disk; a real Prometheus of each release, evaluating the rules with
// `for` 0s, fires the alert each stands for, on the domain's vm label.
// The second Prometheus starts after the events: it first sees the
// counters above 0, the case the rules' `unless ... offset` half covers.
func TestLibvirtAlerts(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	qemulab.RequireQEMU(t)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	bin := exporterproc.BuildForTest(ctx, t)
	d := virtlab.StartT(t, virtlab.Options{})

	exp, err := exporterproc.Start(ctx, bin, "--libvirt.socket="+d.SocketRO(), "--qmp.refresh-interval=2s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(exp.Kill)
	for _, g := range []struct {
		name  string
		guest virtlab.GuestAction
		opts  virtlab.DomainOptions
	}{
		{"virtlab-panic", virtlab.GuestPanic, virtlab.DomainOptions{Panic: true, OnCrash: "preserve"}},
		{"virtlab-watchdog", virtlab.GuestWatchdog, virtlab.DomainOptions{Watchdog: "pause", WatchdogModel: virtlab.WatchdogIB700}},
		{"virtlab-disk", virtlab.GuestDiskWrite, virtlab.DomainOptions{FullDisk: true}},
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

	rulesPath := immediateRules(t, t.TempDir())
	for _, r := range promlab.Releases() {
		t.Run(r.Name, func(t *testing.T) {
			prom, err := promlab.Start(ctx, promlab.Options{
				Dir: filepath.Join(t.TempDir(), "prometheus"), Binary: r.RequirePrometheus(t),
				Job: "qmp", Targets: []string{exp.Addr}, RuleFiles: []string{rulesPath},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := prom.Close(); err != nil {
					t.Error(err)
				}
			}()
			for _, a := range []struct {
				name   string
				labels map[string]string
			}{
				{"QEMUGuestPanicked", map[string]string{"vm": "virtlab-panic", "action": "pause"}},
				{"QEMUWatchdogFired", map[string]string{"vm": "virtlab-watchdog", "action": "pause"}},
				{"QEMUVMPausedOnIOError", map[string]string{"vm": "virtlab-disk"}},
				{"QEMUBlockIOErrors", map[string]string{"vm": "virtlab-disk", "device": "ide0-0-0"}},
			} {
				wctx, c := context.WithTimeout(ctx, 30*time.Second)
				got, err := prom.WaitAlertFunc(wctx, a.name, a.labels, nil)
				c()
				if err != nil {
					t.Fatalf("%s: %v\nexporter log:\n%s", a.name, err, exp.Logs())
				}
				t.Logf("%s fired: %s", a.name, got.Annotations["summary"])
			}
		})
	}
}
