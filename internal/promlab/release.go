package promlab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/citool"
	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
)

// Release is one Prometheus the rules and dashboards are tested against.
// Users run both the Prometheus 2 of their distribution (Debian 12's 2.42)
// and Prometheus 3, and 3 reads the same rules differently: range
// selectors and the lookback window are left-open, and it asks targets for
// OpenMetrics first. So every promtool check and every end-to-end test
// runs once per release.
type Release struct {
	// Name names the release's subtests: "system" for the Prometheus in
	// $PATH (or $PROMETHEUS_BINARY and $PROMTOOL), "v3" for Prometheus 3.
	Name string
	// Major, if not 0, is the major version the release's programs must
	// report; a v3 subtest that ran a Prometheus 2 would prove nothing.
	Major int

	prometheus, promtool func() (string, error)
}

// Releases returns the releases every test of the rules and dashboards
// runs against: the system's Prometheus, then Prometheus 3 (FindPrometheus3).
func Releases() []Release {
	return []Release{
		{Name: "system", prometheus: FindPrometheus, promtool: FindPromtool},
		{Name: "v3", Major: 3, prometheus: FindPrometheus3, promtool: FindPromtool3},
	}
}

// RequirePrometheus returns the release's Prometheus server for a test. A
// missing one skips the test, and fails it when CI is "true" (citool).
func (r Release) RequirePrometheus(t TB) string {
	t.Helper()
	return citool.Require(t, r.checked(r.prometheus))
}

// RequirePromtool is RequirePrometheus for the release's promtool.
func (r Release) RequirePromtool(t TB) string {
	t.Helper()
	return citool.Require(t, r.checked(r.promtool))
}

// checked wraps find with the check of the major version.
func (r Release) checked(find func() (string, error)) func() (string, error) {
	return func() (string, error) {
		p, err := find()
		if err != nil || r.Major == 0 {
			return p, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		v, err := Version(ctx, p)
		if err != nil {
			return "", err
		}
		if major := majorRE.FindStringSubmatch(v); major == nil || major[1] != fmt.Sprint(r.Major) {
			return "", fmt.Errorf("promlab: %s reports version %q, want %d.x", p, v, r.Major)
		}
		return p, nil
	}
}

var (
	majorRE   = regexp.MustCompile(`^(\d+)\.`)
	versionRE = regexp.MustCompile(`(?m)^\S+, version (\S+)`)
)

// Version returns the version a Prometheus or promtool binary reports
// (`prometheus, version 3.16.0 (branch: ...)` gives 3.16.0).
func Version(ctx context.Context, bin string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("promlab: %s --version: %w\n%s", bin, err, out)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("promlab: %s --version: no version in %.200q", bin, out)
	}
	return string(m[1]), nil
}

// prometheusModule is the Go module of Prometheus; its version v0.3XY.Z
// is Prometheus 3.XY.Z.
const prometheusModule = "github.com/prometheus/prometheus"

// FindPrometheus3 returns the path of a Prometheus 3 server:
// $PROMETHEUS3_BINARY if set, else prometheus in ToolDir3, where
// `make prometheus3` builds it.
func FindPrometheus3() (string, error) {
	return findTool3("PROMETHEUS3_BINARY", "prometheus")
}

// FindPromtool3 is FindPrometheus3 for promtool ($PROMTOOL3).
func FindPromtool3() (string, error) {
	return findTool3("PROMTOOL3", "promtool")
}

func findTool3(env, name string) (string, error) {
	if os.Getenv(env) != "" {
		return findTool(env, name)
	}
	dir, err := ToolDir3()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("promlab: Prometheus 3's %s is missing (run `make prometheus3` or set $%s): %w", name, env, err)
	}
	return p, nil
}

// ToolDir3 returns the directory `make prometheus3` builds Prometheus 3
// into: .build/tools/prometheus-<version>/ in the module's root, where
// version is the one go.mod requires of the Prometheus module.
func ToolDir3() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("promlab: %w", err)
	}
	root, err := exporterproc.FindModuleRoot(wd)
	if err != nil {
		return "", fmt.Errorf("promlab: module root of %s: %w", wd, err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", fmt.Errorf("promlab: %w", err)
	}
	version := requiredVersion(gomod, prometheusModule)
	if version == "" {
		return "", fmt.Errorf("promlab: %s does not require %s", filepath.Join(root, "go.mod"), prometheusModule)
	}
	return filepath.Join(root, ".build", "tools", "prometheus-"+version), nil
}

// requiredVersion returns the version go.mod requires of module, or "".
// (Test binaries carry no dependency versions in their build information.)
func requiredVersion(gomod []byte, module string) string {
	for line := range strings.Lines(string(gomod)) {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == "require" {
			f = f[1:]
		}
		if len(f) >= 2 && f[0] == module {
			return f[1]
		}
	}
	return ""
}
