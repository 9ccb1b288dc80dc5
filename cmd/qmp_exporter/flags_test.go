package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/qmp-exporter/qmp_exporter/config"
	"github.com/qmp-exporter/qmp_exporter/internal/source/qmpsock"
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
