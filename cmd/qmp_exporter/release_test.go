package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
)

// TestReleaseBuild builds as a release is built (make tarball, for one
// platform): the binary is static (no interpreter, no shared library),
// --version shows the version, revision and branch stamped in, and the
// tarball has the Prometheus layout, its checksum in sha256sums.txt.
func TestReleaseBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the release tarball")
	}
	makeBin, gitBin := requireTool(t, "make"), requireTool(t, "git")
	root := exporterproc.ModuleRoot(t)
	out := t.TempDir()
	cmd := exec.CommandContext(t.Context(), makeBin, "--no-print-directory", "-C", root, "tarball", "BUILD_ROOT="+out, "PLATFORMS=linux/amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make tarball: %v\n%s", err, b)
	}
	bin := filepath.Join(out, "linux-amd64", "qmp_exporter")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary has a %v program header: it is not static", p.Type)
		}
	}

	git := func(args ...string) string {
		b, err := exec.Command(gitBin, append([]string{"-C", root}, args...)...).Output()
		if err != nil {
			t.Fatalf("git %v: %v", args, err)
		}
		return strings.TrimSpace(string(b))
	}
	versionFile, err := os.ReadFile(filepath.Join(root, "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	version := strings.TrimSpace(string(versionFile))
	got, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("--version: %v\n%s", err, got)
	}
	for _, want := range []string{"version " + version, "revision: " + git("rev-parse", "HEAD"), "branch: " + git("rev-parse", "--abbrev-ref", "HEAD")} {
		if !strings.Contains(string(got), want) {
			t.Errorf("--version says %q, without %q", got, want)
		}
	}

	name := "qmp_exporter-" + version + ".linux-amd64"
	tarball := filepath.Join(out, "tarballs", name+".tar.gz")
	raw, err := os.ReadFile(tarball)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	sums, err := os.ReadFile(filepath.Join(out, "tarballs", "sha256sums.txt"))
	if err != nil || !strings.Contains(string(sums), hex.EncodeToString(sum[:])+"  "+name+".tar.gz") {
		t.Errorf("sha256sums.txt (%v) lacks the tarball's checksum:\n%s", err, sums)
	}
	zr, err := gzip.NewReader(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, h.Name)
	}
	for _, want := range []string{name + "/qmp_exporter", name + "/LICENSE", name + "/examples/plain-qemu.yml", name + "/examples/libvirt-readonly.yml"} {
		if !slices.Contains(files, want) {
			t.Errorf("the tarball lacks %s; it holds %q", want, files)
		}
	}
}
