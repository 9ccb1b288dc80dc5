package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/qmp-exporter/qmp_exporter/config"
	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/source/qmpsock"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

func TestRunExitCodes(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yml")
	bad := filepath.Join(dir, "bad.yml")
	if err := os.WriteFile(good, []byte("vms:\n  - name: web\n    socket: /run/qemu/web.qmp\n  - socket: tcp:127.0.0.1:4444\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("vms:\n  - name: web\n    sockett: /x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		code       int
		wantOut    string
		wantStderr string
	}{
		{"version", []string{"--version"}, 0, "", "qmp_exporter, version"},
		{"help explains the monitor to add", []string{"--help"}, 0, "-mon chardev=mon-exp,mode=control", ""},
		{"config check ok", []string{"--config.file=" + good, "--config.check"}, 0, "OK, 2 VMs", ""},
		{"config check bad", []string{"--config.file=" + bad, "--config.check"}, 1, "", `field sockett not found`},
		{"config check without file", []string{"--config.check"}, 2, "", "needs --config.file"},
		{"unknown flag", []string{"--nope"}, 2, "", "unknown long flag '--nope'"},
		{"bad socket", []string{"--qmp.socket=tcp:host:0"}, 1, "", "--qmp.socket"},
		{"no room for dialled-in VMs", []string{"--qmp.listen-max-vms=0"}, 1, "", "--qmp.listen-max-vms must be at least 1"},
		{"no room for libvirt domains", []string{"--libvirt.max-domains=0"}, 1, "", "--libvirt.max-domains must be at least 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(tc.args, &out, &errOut)
			if code != tc.code {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out.String(), errOut.String())
			}
			// kingpin prints --version to stderr or stdout depending on
			// its version; accept either.
			all := out.String() + errOut.String()
			if tc.wantOut != "" && !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("stdout %q does not contain %q", out.String(), tc.wantOut)
			}
			if tc.wantStderr != "" && !strings.Contains(all, tc.wantStderr) {
				t.Errorf("output %q does not contain %q", all, tc.wantStderr)
			}
		})
	}
}

func TestTargets(t *testing.T) {
	cfg, err := config.Parse([]byte("vms:\n  - name: web\n    socket: /run/qemu/web.qmp\n  - socket: /run/qemu/db.qmp\n"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := targets(cfg, []string{"/run/qemu/web.qmp", "tcp:127.0.0.1:4444", "/run/qemu/extra.sock"})
	if err != nil {
		t.Fatal(err)
	}
	want := []qmpsock.Target{
		{Name: "web", Network: "unix", Address: "/run/qemu/web.qmp"},
		// A derived name is left empty so that QEMU's -name can win.
		{Network: "unix", Address: "/run/qemu/db.qmp"},
		// The flag repeating a configured socket adds nothing.
		{Network: "tcp", Address: "127.0.0.1:4444"},
		{Network: "unix", Address: "/run/qemu/extra.sock"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
}

// TestMetricsFormats checks /metrics as newMux wires it: OpenMetrics with
// _created for Prometheus, the text format for curl, and OpenMetrics
// without _created under --web.disable-openmetrics-created.
func TestMetricsFormats(t *testing.T) {
	const prometheusAccept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
	vms := fleet.New(fleet.Options{})
	v, err := vms.Add("web", fleet.Meta{DefaultName: "web"}, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	v.Lock().Apply(qmp.Event{Name: "STOP"})
	v.Unlock()
	for _, tc := range []struct {
		name, accept string
		args         []string
		wantType     string
		want, absent []string
	}{
		{"Prometheus", prometheusAccept, nil, "application/openmetrics-text; version=1.0.0; charset=utf-8",
			[]string{`qmp_events_created{event="STOP",vm="web"} 1700000000` + "\n", "# TYPE promhttp_metric_handler_requests counter", "\n# EOF\n"}, nil},
		{"curl", "*/*", nil, "text/plain; version=0.0.4; charset=utf-8",
			[]string{`qmp_events_total{event="STOP",vm="web"} 1` + "\n"}, []string{"_created", "# EOF"}},
		{"Prometheus, no _created", prometheusAccept, []string{"--web.disable-openmetrics-created"}, "application/openmetrics-text; version=1.0.0; charset=utf-8",
			[]string{`qmp_events_total{event="STOP",vm="web"} 1` + "\n", "\n# EOF\n"}, []string{"_created"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseFlags(tc.args, io.Discard, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			mux, err := newMux(f, vms, prometheus.NewRegistry(), prometheus.NewRegistry(), &configuration{f: f}, log.NewNopLogger())
			if err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			req.Header.Set("Accept", tc.accept)
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			body := rec.Body.String()
			if got := rec.Header().Get("Content-Type"); rec.Code != http.StatusOK || got != tc.wantType {
				t.Fatalf("status %d, Content-Type %q, want %q", rec.Code, got, tc.wantType)
			}
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("the body lacks %q:\n%s", w, body)
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(body, a) {
					t.Errorf("the body has %q:\n%s", a, body)
				}
			}
		})
	}
}
