// Package exporterproc builds and runs the real qmp_exporter binary and
// reads its /metrics, for end-to-end tests and the demo. It is tooling,
// not part of the exporter.
package exporterproc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/tailbuf"
)

// Build compiles ./cmd/qmp_exporter of the module rooted at moduleDir into
// dir and returns the binary's path.
func Build(ctx context.Context, moduleDir, dir string) (string, error) {
	bin := filepath.Join(dir, "qmp_exporter")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/qmp_exporter")
	cmd.Dir = moduleDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// Process is a running exporter.
type Process struct {
	// Addr is host:port of its web listener.
	Addr string
	cmd  *exec.Cmd
	logs *tailbuf.Buffer
	done chan struct{}
	err  error
}

// Start runs bin with args plus a --web.listen-address on a free loopback
// port, and waits until it accepts connections.
func Start(ctx context.Context, bin string, args ...string) (*Process, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	return StartAt(ctx, addr, bin, args...)
}

// StartAt is Start on a given listen address, host:port with a fixed port
// (the demo uses the exporter's default, 127.0.0.1:10714). It fails at once
// if something else already listens there, rather than mistaking that
// program's /-/healthy for the exporter's.
func StartAt(ctx context.Context, addr, bin string, args ...string) (*Process, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen address %s is not free: %w", addr, err)
	}
	ln.Close()
	p := &Process{Addr: addr, logs: tailbuf.New(4<<20, nil), done: make(chan struct{})}
	p.cmd = exec.Command(bin, append(args, "--web.listen-address="+addr)...)
	p.cmd.Stdout = p.logs
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	for {
		if p.healthy(ctx) {
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("exporter exited: %v\n%s", p.err, p.Logs())
		case <-ctx.Done():
			p.Kill()
			return nil, fmt.Errorf("exporter did not answer on %s: %w\n%s", addr, ctx.Err(), p.Logs())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// healthy reports whether the exporter accepts connections on its
// address (plain HTTP or TLS alike), waiting at most a second.
func (p *Process) healthy(ctx context.Context) bool {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", p.Addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Logs returns everything the exporter logged so far.
func (p *Process) Logs() string { return p.logs.String() }

// Stop sends SIGTERM and waits for the exit; it returns the exit error.
func (p *Process) Stop(ctx context.Context) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		p.Kill()
		return ctx.Err()
	}
}

// Kill kills the exporter and waits for it.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Pid returns the exporter's process id, for reading its /proc entries.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the exporter.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Scrape fetches /metrics and returns the body and the parsed samples.
func (p *Process) Scrape(ctx context.Context) (Metrics, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Addr+"/metrics", nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, body, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	m, err := Parse(body)
	return m, body, err
}

// WaitFor scrapes until cond holds for the samples, or ctx ends; the error
// then shows what the last scrape held for the series cond looked at.
func (p *Process) WaitFor(ctx context.Context, what string, cond func(Metrics) bool) (Metrics, error) {
	var last Metrics
	for {
		m, _, err := p.Scrape(ctx)
		if err == nil {
			last = m
			if cond(m) {
				return m, nil
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("waiting for %s: %w\nlast scrape (qmp_ series):\n%s\nexporter log:\n%s", what, ctx.Err(), last.Filter("qmp_"), p.Logs())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Metrics maps a series, written as in the text format with labels sorted
// by name (qmp_up{vm="a"}), to its value.
type Metrics map[string]float64

// Parse reads the Prometheus text format.
func Parse(body []byte) (Metrics, error) {
	m := Metrics{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("malformed sample line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("malformed value in %q: %w", line, err)
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// Has reports whether series is present with value v.
func (m Metrics) Has(series string, v float64) bool {
	got, ok := m[series]
	return ok && got == v
}

// Value returns a series' value and whether it is present.
func (m Metrics) Value(series string) (float64, bool) {
	v, ok := m[series]
	return v, ok
}

// Filter returns the series whose name starts with prefix, sorted, one per
// line, for messages.
func (m Metrics) Filter(prefix string) string {
	var lines []string
	for s, v := range m {
		if strings.HasPrefix(s, prefix) {
			lines = append(lines, s+" "+strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// ErrNotFound is returned by FindModuleRoot outside a module.
var ErrNotFound = errors.New("go.mod not found")

// FindModuleRoot walks up from dir to the directory holding go.mod.
func FindModuleRoot(dir string) (string, error) {
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", ErrNotFound
		}
		dir = parent
	}
}

// TB is the part of testing.TB the test helpers below use.
type TB interface {
	Helper()
	Fatal(args ...any)
	TempDir() string
}

// ModuleRoot returns the module's root directory for a test running in
// one of its packages.
func ModuleRoot(t TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root, err := FindModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// BuildForTest builds the exporter into a temporary directory of the test.
func BuildForTest(ctx context.Context, t TB) string {
	t.Helper()
	bin, err := Build(ctx, ModuleRoot(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}
