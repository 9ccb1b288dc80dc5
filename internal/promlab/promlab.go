// Package promlab runs a real, throwaway Prometheus server for end-to-end
// tests, and checks PromQL the way the dashboards and alert rules use it.
//
// Start writes a prometheus.yml that scrapes the given targets every second
// and evaluates the given rule files every second, starts the Prometheus
// binary on a free loopback port with a storage directory of its own, and
// waits until it is ready. Server.Query, Server.QueryRange and Server.Alerts
// read its HTTP API; Server.WaitAlert polls, bounded by a context, until an
// alert fires. Server.Close stops it (SIGTERM, then SIGKILL) and waits for
// it, so a test that calls Close in t.Cleanup leaves no process behind.
//
// Scan parses a PromQL expression, Grafana variables and all, with the
// Prometheus parser and lists its metric names, label matchers, function
// calls, ranges and offsets; CheckExprs asks promtool whether expressions
// parse; ShortenFor rewrites the `for` of every alerting rule of a rules
// file (for a test copy of the rules); Metrics lists the metrics the
// exporter describes.
//
// Releases lists the Prometheus releases the rules and dashboards are
// tested against (the system's, and Prometheus 3 built by `make
// prometheus3`), with the programs of each; ScrapeRecorder sits between
// Prometheus and a target and records what each scrape asked for and was
// served.
//
// This package is test tooling. It is not imported by the exporter.
package promlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/qmp-exporter/qmp_exporter/internal/citool"
	"github.com/qmp-exporter/qmp_exporter/internal/tailbuf"
)

// FindPrometheus returns the path of the Prometheus server binary:
// $PROMETHEUS_BINARY if set (a path, or a name looked up in $PATH), else
// prometheus in $PATH.
func FindPrometheus() (string, error) {
	return findTool("PROMETHEUS_BINARY", "prometheus")
}

// FindPromtool returns the path of promtool: $PROMTOOL if set, else promtool
// in $PATH.
func FindPromtool() (string, error) {
	return findTool("PROMTOOL", "promtool")
}

func findTool(env, name string) (string, error) {
	if b := os.Getenv(env); b != "" {
		p, err := exec.LookPath(b)
		if err != nil {
			return "", fmt.Errorf("promlab: $%s: %w", env, err)
		}
		return p, nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("promlab: %s is missing (install Debian's prometheus package or set $%s): %w", name, env, err)
	}
	return p, nil
}

// TB is the part of testing.TB that RequirePrometheus and RequirePromtool
// use.
type TB = citool.TB

// RequirePrometheus returns the Prometheus binary for a test. When it is
// missing the test is skipped, except when the environment variable CI is
// "true": there a missing Prometheus fails the test instead of silently
// skipping the end-to-end check.
func RequirePrometheus(t TB) string {
	t.Helper()
	return citool.Require(t, FindPrometheus)
}

// RequirePromtool is RequirePrometheus for promtool.
func RequirePromtool(t TB) string {
	t.Helper()
	return citool.Require(t, FindPromtool)
}

// Options configures Start.
type Options struct {
	// Dir receives prometheus.yml and the TSDB (Dir/data); it is created if
	// missing. Required.
	Dir string
	// Binary is the Prometheus server to run; empty means FindPrometheus.
	Binary string
	// Job is the scrape job's name; empty means "qmp".
	Job string
	// Targets are the host:port addresses the job scrapes.
	Targets []string
	// RuleFiles are rule files to load (absolute, or relative to Dir).
	RuleFiles []string
	// ScrapeInterval and EvaluationInterval default to one second.
	ScrapeInterval, EvaluationInterval time.Duration
	// Log, if set, receives Prometheus's output as well.
	Log io.Writer
}

// Server is a running Prometheus.
type Server struct {
	// URL is the base URL of its web API, http://127.0.0.1:<port>.
	URL string

	cmd    *exec.Cmd
	out    *tailbuf.Buffer
	exited chan struct{}
	err    error // cmd.Wait's result; read after exited is closed
	client *http.Client

	closeOnce sync.Once
	closeErr  error
}

// stopTimeout bounds the wait for Prometheus to exit after SIGTERM, before
// it is killed.
const stopTimeout = 10 * time.Second

// Start writes Dir/prometheus.yml and starts Prometheus with it, listening
// on a free loopback port. It returns once /-/ready answers 200, or fails
// with the tail of Prometheus's output. Everything is bounded by ctx; the
// process itself lives until Close.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("promlab: Options.Dir is required")
	}
	bin := opts.Binary
	if bin == "" {
		var err error
		if bin, err = FindPrometheus(); err != nil {
			return nil, err
		}
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("promlab: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, fmt.Errorf("promlab: %w", err)
	}
	cfg, err := config(opts)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		return nil, fmt.Errorf("promlab: %w", err)
	}
	// The port is free when freePort returns but may be taken before
	// Prometheus binds it; a start that fails is retried on another port.
	var lastErr error
	for range 3 {
		addr, err := freePort()
		if err != nil {
			return nil, err
		}
		s, err := start(ctx, bin, dir, cfgPath, addr, opts.Log)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func start(ctx context.Context, bin, dir, cfgPath, addr string, log io.Writer) (*Server, error) {
	s := &Server{
		URL:    "http://" + addr,
		out:    tailbuf.New(64<<10, log),
		exited: make(chan struct{}),
		client: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second},
	}
	s.cmd = exec.Command(bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
	)
	s.cmd.Dir = dir
	s.cmd.Stdout = s.out
	s.cmd.Stderr = s.out
	s.cmd.WaitDelay = 5 * time.Second
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("promlab: %w", err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.exited)
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.ready(ctx) {
			return s, nil
		}
		select {
		case <-s.exited:
			s.Close()
			return nil, fmt.Errorf("promlab: prometheus exited (%v) before it was ready; output:\n%s", s.err, s.out)
		case <-ctx.Done():
			s.Close()
			return nil, fmt.Errorf("promlab: prometheus not ready on %s: %w; output:\n%s", addr, ctx.Err(), s.out)
		case <-tick.C:
		}
	}
}

func (s *Server) ready(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/-/ready", nil)
	if err != nil {
		return false
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// config renders prometheus.yml for opts.
func config(opts Options) ([]byte, error) {
	job := opts.Job
	if job == "" {
		job = "qmp"
	}
	scrape, eval := opts.ScrapeInterval, opts.EvaluationInterval
	if scrape <= 0 {
		scrape = time.Second
	}
	if eval <= 0 {
		eval = time.Second
	}
	targets := opts.Targets
	if targets == nil {
		targets = []string{}
	}
	type staticConfig struct {
		Targets []string `yaml:"targets"`
	}
	type scrapeConfig struct {
		JobName        string         `yaml:"job_name"`
		ScrapeInterval string         `yaml:"scrape_interval"`
		ScrapeTimeout  string         `yaml:"scrape_timeout"`
		StaticConfigs  []staticConfig `yaml:"static_configs"`
	}
	cfg := struct {
		Global struct {
			ScrapeInterval     string `yaml:"scrape_interval"`
			EvaluationInterval string `yaml:"evaluation_interval"`
		} `yaml:"global"`
		RuleFiles     []string       `yaml:"rule_files,omitempty"`
		ScrapeConfigs []scrapeConfig `yaml:"scrape_configs"`
	}{
		RuleFiles: opts.RuleFiles,
		ScrapeConfigs: []scrapeConfig{{
			JobName:        job,
			ScrapeInterval: scrape.String(),
			ScrapeTimeout:  scrape.String(),
			StaticConfigs:  []staticConfig{{Targets: targets}},
		}},
	}
	cfg.Global.ScrapeInterval = scrape.String()
	cfg.Global.EvaluationInterval = eval.String()
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("promlab: %w", err)
	}
	return b, nil
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("promlab: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Output returns the last few KiB of Prometheus's output.
func (s *Server) Output() string { return s.out.String() }

// Exited returns a channel that is closed once Prometheus has exited.
func (s *Server) Exited() <-chan struct{} { return s.exited }

// Close stops Prometheus: SIGTERM, then SIGKILL if it has not exited within
// a few seconds, and waits for it. It is idempotent. It returns nil when
// Prometheus exited on SIGTERM, or had already exited.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		defer s.client.CloseIdleConnections()
		select {
		case <-s.exited:
			return
		default:
		}
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(stopTimeout)
		defer t.Stop()
		select {
		case <-s.exited:
			if s.err != nil {
				s.closeErr = fmt.Errorf("promlab: prometheus exited with %v on SIGTERM; output:\n%s", s.err, s.out)
			}
		case <-t.C:
			_ = s.cmd.Process.Kill()
			<-s.exited
			s.closeErr = fmt.Errorf("promlab: prometheus still running %v after SIGTERM; killed", stopTimeout)
		}
	})
	return s.closeErr
}
