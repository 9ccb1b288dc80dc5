package architecture

import (
	"go/build"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/qmp-exporter/qmp_exporter"

// rule is what one package may not import directly (outside its tests).
// A forbidden entry ending in "/" forbids every package under that path.
type rule struct {
	pkg       string // relative to the module root
	forbidden []string
	why       string
}

var (
	clientGolang = "github.com/prometheus/"
	ourPackages  = module + "/"
)

// rules mirror the table of docs/architecture.md.
var rules = []rule{
	{"qmp", []string{ourPackages, clientGolang, "github.com/go-kit/"},
		"the protocol client is standalone: standard library only"},
	{"internal/vmstate", []string{"net", "net/", "os", "os/", "syscall", "sync", "log", clientGolang, "github.com/go-kit/",
		module + "/internal/fleet", module + "/internal/source", module + "/collector", module + "/config"},
		"the VM state is a pure fold: no I/O, no locks, no Prometheus"},
	{"internal/fleet", []string{"net", "net/", "os", "os/", clientGolang, module + "/internal/source", module + "/collector", module + "/config"},
		"the fleet is shared state: no I/O, no Prometheus, no sources"},
	{"internal/journal", []string{"net", "net/", ourPackages, clientGolang},
		"the journal keeps and logs events: it knows no VM, source or page"},
	{"internal/pages", []string{"net", "os", "syscall", clientGolang, module + "/qmp", module + "/internal/source", module + "/collector", module + "/config"},
		"the pages read the fleet and its journal, like a scrape: no socket, no source"},
	{"internal/source", []string{clientGolang, module + "/collector", module + "/config"},
		"sources feed the fleet and know nothing of Prometheus or the configuration file"},
	{"internal/source/qmpsock", []string{clientGolang, module + "/collector", module + "/config"},
		"sources feed the fleet and know nothing of Prometheus or the configuration file"},
	{"internal/source/libvirtd", []string{clientGolang, module + "/collector", module + "/config", module + "/internal/source/qmpsock"},
		"sources feed the fleet and know nothing of Prometheus, the configuration file or each other"},
	{"internal/logging", []string{ourPackages, clientGolang},
		"the logging plumbing wraps go-kit log and knows nothing of the exporter"},
	{"collector", []string{"net", "os", "syscall", module + "/qmp", module + "/internal/source", module + "/config", "github.com/fsnotify/"},
		"the exposition reads VM state and touches no socket"},
	{"config", []string{"github.com/fsnotify/", "net/http", ourPackages, clientGolang},
		"the configuration is data only: parsing, validation, defaults"},
}

func forbids(list []string, imp string) bool {
	for _, f := range list {
		if imp == f || strings.HasSuffix(f, "/") && strings.HasPrefix(imp, f) {
			return true
		}
	}
	return false
}

func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("module root not found from the test's directory: %v", err)
	}
	return dir
}

func imports(t *testing.T, dir string) []string {
	t.Helper()
	p, err := build.ImportDir(dir, 0)
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	return p.Imports
}

// TestImports checks each layer's rule.
func TestImports(t *testing.T) {
	r := root(t)
	for _, rl := range rules {
		t.Run(rl.pkg, func(t *testing.T) {
			for _, imp := range imports(t, filepath.Join(r, rl.pkg)) {
				if forbids(rl.forbidden, imp) {
					t.Errorf("%s imports %s, but %s", rl.pkg, imp, rl.why)
				}
			}
		})
	}
}

// TestNoPackageMixesSocketsAndPrometheus walks every non-test package of
// the module: none may import both the net package (sockets) and
// client_golang, so that a scrape can never reach a socket.
func TestNoPackageMixesSocketsAndPrometheus(t *testing.T) {
	r := root(t)
	checked := 0
	err := filepath.WalkDir(r, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if name := d.Name(); path != r && (strings.HasPrefix(name, ".") || name == "testdata") {
			return filepath.SkipDir
		}
		p, err := build.ImportDir(path, 0)
		if err != nil {
			return nil // no Go files here
		}
		checked++
		if slices.Contains(p.Imports, "net") && slices.ContainsFunc(p.Imports, func(s string) bool {
			return strings.HasPrefix(s, "github.com/prometheus/client_golang/")
		}) {
			rel, _ := filepath.Rel(r, path)
			t.Errorf("%s imports both net and client_golang", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 10 {
		t.Fatalf("only %d packages found; the walk is broken", checked)
	}
}

// TestRulesCoverEveryLayer fails when a package named in a rule is gone,
// so that a rule cannot silently check nothing after a move.
func TestRulesCoverEveryLayer(t *testing.T) {
	r := root(t)
	for _, rl := range rules {
		if len(imports(t, filepath.Join(r, rl.pkg))) == 0 {
			t.Errorf("%s imports nothing: is the rule still about a real package?", rl.pkg)
		}
	}
}
