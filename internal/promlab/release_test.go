package promlab

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestToolDir3 checks that the tests look for Prometheus 3 where
// `make prometheus3` builds it: .build/tools/prometheus-<version>/ in the
// module root, with the version of go.mod's require line (which the
// Makefile reads too).
func TestToolDir3(t *testing.T) {
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/prometheus/prometheus (v\S+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("go.mod does not require github.com/prometheus/prometheus")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ToolDir3()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, ".build", "tools", "prometheus-"+string(m[1])); got != want {
		t.Errorf("ToolDir3() = %s, want %s", got, want)
	}
}

// fakeTool writes a program that prints out as its --version.
func fakeTool(t *testing.T, out string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "prometheus")
	if err := os.WriteFile(p, []byte("#!/bin/sh\ncat <<'EOF'\n"+out+"\nEOF\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestReleaseMajor: a release that names a major version refuses a
// binary of another one, and a release that names none takes any.
func TestReleaseMajor(t *testing.T) {
	v2 := fakeTool(t, "prometheus, version 2.42.0+ds (branch: debian/sid, revision: 2.42.0+ds-5+b5)\n  build user: team")
	v3 := fakeTool(t, "promtool, version 3.16.0 (branch: , revision: unknown)\n  go version: go1.26.8")
	find := func(p string) func() (string, error) { return func() (string, error) { return p, nil } }
	for _, tc := range []struct {
		name    string
		major   int
		bin     string
		wantErr string
	}{
		{"any takes 2", 0, v2, ""},
		{"3 takes 3", 3, v3, ""},
		{"3 refuses 2", 3, v2, `reports version "2.42.0+ds", want 3.x`},
		{"3 refuses no version", 3, fakeTool(t, "usage: prometheus [<flags>]"), "no version in"},
	} {
		r := Release{Name: tc.name, Major: tc.major}
		got, err := r.checked(find(tc.bin))()
		switch {
		case tc.wantErr == "" && (err != nil || got != tc.bin):
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.bin)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: %q, %v; want an error with %q", tc.name, got, err, tc.wantErr)
		}
	}
}

func TestRequiredVersion(t *testing.T) {
	for gomod, want := range map[string]string{
		"module m\n\nrequire (\n\tgithub.com/prometheus/prometheus v0.316.0\n\tgithub.com/prometheus/prometheus/x v9\n)\n": "v0.316.0",
		"module m\nrequire github.com/prometheus/prometheus v0.300.1 // indirect\n":                                        "v0.300.1",
		"module m\nrequire github.com/prometheus/prometheus-x v1.0.0\n":                                                    "",
	} {
		if got := requiredVersion([]byte(gomod), prometheusModule); got != want {
			t.Errorf("requiredVersion(%q) = %q, want %q", gomod, got, want)
		}
	}
}
