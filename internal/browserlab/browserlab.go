// Package browserlab drives a real, headless Chromium (Debian's chromium
// package) for tests of the exporter's pages: the DOM it built from a
// page, and a screenshot of it. It is test tooling, not part of the
// exporter.
package browserlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/qmp-exporter/qmp_exporter/internal/citool"
)

// Find returns the path of Chromium: $CHROMIUM if set, else chromium or
// chromium-browser in $PATH.
func Find() (string, error) {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return exec.LookPath(p)
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("browserlab: chromium is missing (install Debian's chromium or set $CHROMIUM)")
}

// Require returns Chromium's path; a missing Chromium skips the test,
// except under CI=true, where it fails it.
func Require(t testing.TB) string {
	t.Helper()
	return citool.Require(t, Find)
}

// Browser runs one headless Chromium per call, with a profile of its own.
type Browser struct {
	Path string
	// Dir holds the profiles; a test's TempDir.
	Dir string
}

// run runs Chromium headless with args and the URL, and returns what it
// printed on standard output.
func (b Browser) run(ctx context.Context, url string, args ...string) ([]byte, error) {
	profile, err := os.MkdirTemp(b.Dir, "chromium-")
	if err != nil {
		return nil, err
	}
	base := []string{
		"--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
		"--disable-extensions", "--disable-sync", "--user-data-dir=" + profile,
		// Root has no user namespace sandbox in a container; these pages
		// come from the test's own exporter.
		"--no-sandbox",
		// Give scripts the page may (wrongly) contain time to run before
		// the DOM is taken.
		"--virtual-time-budget=2000",
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, b.Path, append(append(base, args...), url)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("chromium %s: %w\n%s", url, err, stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// DumpDOM returns the DOM Chromium built from url, serialized, after its
// scripts (if any) ran.
func (b Browser) DumpDOM(ctx context.Context, url string) (string, error) {
	out, err := b.run(ctx, url, "--dump-dom")
	return string(out), err
}

// Screenshot saves a PNG of url, width×height pixels, to path.
func (b Browser) Screenshot(ctx context.Context, url, path string, width, height int) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return err
	}
	if _, err := b.run(ctx, url, "--screenshot="+abs, fmt.Sprintf("--window-size=%d,%d", width, height), "--hide-scrollbars"); err != nil {
		return err
	}
	if fi, err := os.Stat(abs); err != nil || fi.Size() == 0 {
		return fmt.Errorf("chromium wrote no screenshot to %s: %v", abs, err)
	}
	return nil
}
