package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/qmp-exporter/qmp_exporter/config"
	"github.com/qmp-exporter/qmp_exporter/internal/source/qmpsock"
)

// configuration is the configuration file plus the flags that add to it,
// loaded at start and reloaded on SIGHUP and POST /-/reload.
type configuration struct {
	f *flags
	// running is the configuration in force; staleAfter is read once,
	// at start.
	running    *config.Config
	staleAfter time.Duration

	// Set once the sources and registries exist, for reloads.
	src      *qmpsock.Source
	logger   log.Logger
	reloaded reloadMetrics
	// reopen, when set, reopens the event log on SIGHUP (logrotate).
	reopen func()

	mu sync.Mutex // serializes reloads
}

// load reads --config.file (if any) and turns it and the --qmp.socket
// flags into targets; cfg is nil without a file.
func (c *configuration) load() (cfg *config.Config, ts []qmpsock.Target, err error) {
	if c.f.configFile != "" {
		if cfg, err = config.Load(c.f.configFile); err != nil {
			return nil, nil, err
		}
	}
	ts, err = targets(cfg, c.f.sockets)
	return cfg, ts, err
}

// check serves --config.check: 0 if the file is valid, 1 if not, 2
// without a file.
func (c *configuration) check(stdout, stderr io.Writer) int {
	if c.f.configFile == "" {
		fmt.Fprintln(stderr, "--config.check needs --config.file")
		return 2
	}
	_, initial, err := c.load()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: OK, %d VMs\n", c.f.configFile, len(initial))
	return 0
}

// discovery returns the globs and rescan interval of cfg plus the flags'.
func (c *configuration) discovery(cfg *config.Config) ([]string, time.Duration) {
	globs := append(slices.Clone(cfg.Discovery.SocketGlobs), c.f.globs...)
	slices.Sort(globs)
	return slices.Compact(globs), time.Duration(cfg.Discovery.RescanInterval)
}

// staleAfterOf is --qmp.stale-after if given, else the file's
// discovery.stale_after (which defaults to the flag's default).
func (c *configuration) staleAfterOf(cfg *config.Config) time.Duration {
	if c.f.staleAfterSet || c.f.configFile == "" || cfg == nil {
		return c.f.staleAfter
	}
	return time.Duration(cfg.Discovery.StaleAfter)
}

// libvirtSocket is --libvirt.socket if given, else the file's
// libvirt.socket. It is read once, at start.
func (c *configuration) libvirtSocket(cfg *config.Config) string {
	if c.f.libvirtSocket != "" || cfg == nil {
		return c.f.libvirtSocket
	}
	return cfg.Libvirt.Socket
}

// reloadMetrics are the two qmp_exporter_config_last_reload_* gauges.
type reloadMetrics struct{ ok, time prometheus.Gauge }

func newReloadMetrics(reg *prometheus.Registry) reloadMetrics {
	r := reloadMetrics{
		ok: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "qmp_exporter_config_last_reload_successful",
			Help: "Whether the last configuration reload (SIGHUP or POST /-/reload) succeeded; 1 before any reload.",
		}),
		time: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "qmp_exporter_config_last_reload_success_timestamp_seconds",
			Help: "Time of the last successful configuration load, in seconds since the epoch.",
		}),
	}
	reg.MustRegister(r.ok, r.time)
	r.ok.Set(1)
	r.time.SetToCurrentTime()
	return r
}

// reload loads the configuration again and hands the source its new
// targets and globs; on error the previous configuration stays.
func (c *configuration) reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg, ts, err := c.load()
	if err != nil {
		c.reloaded.ok.Set(0)
		level.Error(c.logger).Log("msg", "reload failed; keeping the previous configuration", "err", err)
		return err
	}
	if cfg == nil {
		cfg = c.running
	}
	globs, rescan := c.discovery(cfg)
	c.src.Configure(ts, globs, rescan, mergeLabels(cfg.Labels, nil))
	if ls := c.libvirtSocket(cfg); ls != c.libvirtSocket(c.running) {
		level.Warn(c.logger).Log("msg", "libvirt.socket changed; it takes effect when the exporter restarts", "running", c.libvirtSocket(c.running), "configured", ls)
	}
	if sa := c.staleAfterOf(cfg); sa != c.staleAfter {
		level.Warn(c.logger).Log("msg", "discovery.stale_after changed; it takes effect when the exporter restarts", "running", c.staleAfter, "configured", sa)
	}
	c.reloaded.ok.Set(1)
	c.reloaded.time.SetToCurrentTime()
	level.Info(c.logger).Log("msg", "configuration reloaded", "vms", len(ts))
	return nil
}

// reloadOnSIGHUP reloads on every SIGHUP until the returned stop is
// called.
func (c *configuration) reloadOnSIGHUP() (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-hup:
				if c.reopen != nil {
					c.reopen()
				}
				_ = c.reload()
			}
		}
	})
	return func() {
		signal.Stop(hup)
		close(done)
		wg.Wait()
	}
}

// serveReload is /-/reload: POST or PUT reloads the configuration.
func (c *configuration) serveReload(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		w.Header().Set("Allow", "POST, PUT")
		http.Error(w, "use POST or PUT to reload the configuration", http.StatusMethodNotAllowed)
		return
	}
	if err := c.reload(); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	_, _ = io.WriteString(w, "Reloaded\n")
}
