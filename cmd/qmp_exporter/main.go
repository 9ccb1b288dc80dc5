// Command qmp_exporter keeps QMP sessions to QEMU virtual machines, folds
// the events they emit into counters and gauges, and serves them to
// Prometheus. This file only wires flags, logging, configuration and HTTP;
// the work happens in the qmp and collector packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"
	slogkit "github.com/tjhop/slog-gokit"

	"github.com/qmp-exporter/qmp_exporter/collector"
	"github.com/qmp-exporter/qmp_exporter/config"
)

const (
	exporterName = "qmp_exporter"
	// defaultAddress: Prometheus' registry of exporter ports filled
	// 9100-9999 and now hands out 10000 upwards in order; 10714 is well
	// clear of it and of well-known services (see README).
	defaultAddress = ":10714"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// flags holds every command-line setting.
type flags struct {
	configFile     string
	configCheck    bool
	sockets        []string
	globs          []string
	listens        []string
	staleAfter     time.Duration
	staleAfterSet  bool // --qmp.stale-after was given
	listenMaxVMs   int
	dialTimeout    time.Duration
	commandTimeout time.Duration
	maxBackoff     time.Duration
	refresh        time.Duration
	maxMessage     int
	metricsPath    string
	noExporterMet  bool
	maxRequests    int
	logLevel       string
	logFormat      string
	web            *web.FlagConfig
}

func parseFlags(args []string, stdout, stderr io.Writer) (*flags, error) {
	app := kingpin.New(exporterName, "Prometheus exporter for QEMU virtual machines.\n\n"+
		"qmp_exporter keeps a QMP (QEMU Machine Protocol) session open to each VM's monitor socket, "+
		"counts the events the VM emits (STOP, RESET, GUEST_PANICKED, WATCHDOG, BLOCK_IO_ERROR, ...) and "+
		"keeps its run state current, and serves both on /metrics. Scrapes read kept state; they never "+
		"touch a socket. It only ever sends qmp_capabilities and read-only query-* commands.\n\n"+
		"Give each VM its own monitor for the exporter, for example:\n"+
		"  -chardev socket,id=mon-exp,path=/run/qemu/NAME.qmp,server=on,wait=off -mon chardev=mon-exp,mode=control\n"+
		"then pass --qmp.socket=/run/qemu/NAME.qmp, or list the VMs in --config.file.")
	app.UsageWriter(stdout)
	app.ErrorWriter(stderr)
	app.Terminate(nil)
	f := &flags{}
	app.Flag("config.file", "YAML file listing the VMs to watch (see README). Reloaded on SIGHUP and POST /-/reload.").
		PlaceHolder("PATH").StringVar(&f.configFile)
	app.Flag("config.check", "Check the --config.file and exit: 0 if it is valid, 1 with the problem otherwise.").
		BoolVar(&f.configCheck)
	app.Flag("qmp.socket", "A VM's QMP monitor socket: a unix socket path, or tcp:HOST:PORT. Repeatable. The vm label is QEMU's -name, else the socket file's base name without extension.").
		PlaceHolder("PATH").StringsVar(&f.sockets)
	app.Flag("qmp.socket-glob", "Watch every unix socket matching this glob (e.g. /run/vm-qmp/*.qmp; the exporter needs monitors of its own, never those a management stack uses): sockets that appear are connected within a second, those that disappear lose their series. Repeatable; added to discovery.socket_globs of --config.file.").
		PlaceHolder("GLOB").StringsVar(&f.globs)
	app.Flag("qmp.listen", "Create this unix socket and accept QEMUs that dial in to it (-chardev socket,path=PATH,reconnect=5 -mon chardev=...,mode=control). Repeatable; added to listen of --config.file.").
		PlaceHolder("PATH").StringsVar(&f.listens)
	app.Flag("qmp.listen-max-vms", "Most VMs kept from dialling in, over all listeners. At the bound a new VM replaces the one unreachable longest, or is refused while all are connected, so a client inventing identities cannot grow the exporter without limit.").
		Default(strconv.Itoa(collector.DefaultMaxDialledIn)).IntVar(&f.listenMaxVMs)
	app.Flag("qmp.stale-after", "Remove the series of a discovered or dialled-in VM that has been unreachable this long. Overrides discovery.stale_after of --config.file.").
		Default("5m").IsSetByUser(&f.staleAfterSet).DurationVar(&f.staleAfter)
	app.Flag("qmp.dial-timeout", "Limit on connecting to a monitor and completing the QMP handshake.").
		Default("5s").DurationVar(&f.dialTimeout)
	app.Flag("qmp.command-timeout", "Limit on each query. A VM that does not answer in time is treated as hung: its session is dropped and retried.").
		Default("5s").DurationVar(&f.commandTimeout)
	app.Flag("qmp.max-backoff", "Longest wait between attempts to reach an unreachable monitor (the wait doubles from 100ms, with jitter).").
		Default("30s").DurationVar(&f.maxBackoff)
	app.Flag("qmp.refresh-interval", "How often a connected VM's run state is re-read, which also detects a hung QEMU.").
		Default("30s").DurationVar(&f.refresh)
	app.Flag("qmp.max-message-bytes", "Largest QMP message accepted; a VM that sends a longer one is disconnected.").
		Default("1048576").IntVar(&f.maxMessage)
	app.Flag("web.telemetry-path", "Path under which to expose metrics.").
		Default("/metrics").StringVar(&f.metricsPath)
	app.Flag("web.disable-exporter-metrics", "Exclude the exporter's own go_*, process_* and promhttp_* metrics from /metrics.").
		BoolVar(&f.noExporterMet)
	app.Flag("web.max-requests", "Maximum number of concurrent scrapes; 0 means no limit.").
		Default("40").IntVar(&f.maxRequests)
	app.Flag("log.level", "Only log messages with the given severity or above. One of: [debug, info, warn, error]").
		Default("info").EnumVar(&f.logLevel, "debug", "info", "warn", "error")
	app.Flag("log.format", "Output format of log messages. One of: [logfmt, json]").
		Default("logfmt").EnumVar(&f.logFormat, "logfmt", "json")
	f.web = kingpinflag.AddFlags(app, defaultAddress)
	app.Version(version.Print(exporterName))
	app.HelpFlag.Short('h')
	exit := -1
	app.Terminate(func(code int) { exit = code })
	if _, err := app.Parse(args); err != nil {
		return nil, err
	}
	if exit >= 0 {
		return nil, errExit(exit)
	}
	return f, nil
}

// errExit reports that --help or --version has been served.
type errExit int

func (e errExit) Error() string { return fmt.Sprintf("exit %d", int(e)) }

func newLogger(w io.Writer, lvl, format string) (log.Logger, slog.Level) {
	var logger log.Logger
	if format == "json" {
		logger = log.NewJSONLogger(log.NewSyncWriter(w))
	} else {
		logger = log.NewLogfmtLogger(log.NewSyncWriter(w))
	}
	logger = level.NewFilter(logger, level.Allow(level.ParseDefault(lvl, level.InfoValue())))
	logger = log.With(logger, "ts", log.DefaultTimestampUTC, "caller", log.DefaultCaller)
	sl := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}[lvl]
	return logger, sl
}

// targets turns the configuration and the --qmp.socket flags into the
// collector's targets.
func targets(cfg *config.Config, sockets []string) ([]collector.Target, error) {
	var out []collector.Target
	seen := map[string]bool{}
	if cfg != nil {
		for _, vm := range cfg.VMs {
			network, address := vm.Endpoint()
			t := collector.Target{Network: network, Address: address, Labels: mergeLabels(cfg.Labels, vm.Labels)}
			if vm.NameFromConfig {
				t.Name = vm.Name
			}
			seen[network+" "+address] = true
			out = append(out, t)
		}
	}
	for _, s := range sockets {
		network, address, err := config.ParseSocket(s)
		if err != nil {
			return nil, fmt.Errorf("--qmp.socket=%q: %w", s, err)
		}
		if seen[network+" "+address] {
			continue
		}
		seen[network+" "+address] = true
		var labels map[string]string
		if cfg != nil {
			labels = mergeLabels(cfg.Labels, nil)
		}
		out = append(out, collector.Target{Network: network, Address: address, Labels: labels})
	}
	return out, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	f, err := parseFlags(args, stdout, stderr)
	if err != nil {
		var ex errExit
		if errors.As(err, &ex) {
			return int(ex)
		}
		fmt.Fprintf(stderr, "%s: error: %v, try --help\n", exporterName, err)
		return 2
	}
	logger, slevel := newLogger(stderr, f.logLevel, f.logFormat)
	slogger := slog.New(slogkit.NewGoKitHandler(logger, slevel))

	loadConfig := func() (*config.Config, []collector.Target, error) {
		var cfg *config.Config
		if f.configFile != "" {
			c, err := config.Load(f.configFile)
			if err != nil {
				return nil, nil, err
			}
			cfg = c
		}
		ts, err := targets(cfg, f.sockets)
		return cfg, ts, err
	}
	cfg, initial, err := loadConfig()
	if f.configCheck {
		if f.configFile == "" {
			fmt.Fprintln(stderr, "--config.check needs --config.file")
			return 2
		}
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s: OK, %d VMs\n", f.configFile, len(initial))
		return 0
	}
	if err == nil && f.listenMaxVMs < 1 {
		err = fmt.Errorf("--qmp.listen-max-vms must be at least 1, got %d", f.listenMaxVMs)
	}
	if err != nil {
		level.Error(logger).Log("msg", "cannot start", "err", err)
		return 1
	}
	level.Info(logger).Log("msg", "starting "+exporterName, "version", version.Info())
	level.Info(logger).Log("msg", "build context", "build_context", version.BuildContext())
	if cfg == nil {
		cfg = &config.Config{Discovery: config.Discovery{RescanInterval: config.Duration(config.DefaultRescanInterval)}}
	}
	// discovery returns the globs and rescan interval of a configuration
	// plus the flags'.
	discovery := func(c *config.Config) ([]string, time.Duration) {
		globs := append(slices.Clone(c.Discovery.SocketGlobs), f.globs...)
		slices.Sort(globs)
		return slices.Compact(globs), time.Duration(c.Discovery.RescanInterval)
	}
	listens := slices.Clone(cfg.Listen)
	for _, p := range f.listens {
		listens = append(listens, config.Listen{Path: p, Mode: config.DefaultListenMode})
	}
	if globs, _ := discovery(cfg); len(initial) == 0 && len(globs) == 0 && len(listens) == 0 {
		level.Warn(logger).Log("msg", "no VMs to watch: pass --qmp.socket, --qmp.socket-glob or --qmp.listen, or use --config.file")
	}

	// staleAfter is the flag if given, else the file's discovery.stale_after
	// (which defaults to the flag's default). It is read once: a reload
	// that changes it only warns.
	staleAfter := func(c *config.Config) time.Duration {
		if f.staleAfterSet || f.configFile == "" || c == nil {
			return f.staleAfter
		}
		return time.Duration(c.Discovery.StaleAfter)
	}
	runningStaleAfter := staleAfter(cfg)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	m := collector.NewManager(collector.Options{
		DialTimeout:     f.dialTimeout,
		CommandTimeout:  f.commandTimeout,
		MaxBackoff:      f.maxBackoff,
		RefreshInterval: f.refresh,
		MaxMessageBytes: f.maxMessage,
		StaleAfter:      runningStaleAfter,
		Logger:          logger,
	})
	var wg sync.WaitGroup
	mctx, cancelManager := context.WithCancel(context.Background())
	wg.Go(func() { _ = m.Run(mctx) })
	defer func() { cancelManager(); wg.Wait() }()
	src := &sources{ctx: mctx, m: m, logger: logger}
	defer src.stopDiscovery()
	globs, rescan := discovery(cfg)
	src.apply(initial, globs, rescan, mergeLabels(cfg.Labels, nil))
	for _, l := range listens {
		ln, name, err := listen(l)
		if err != nil {
			level.Error(logger).Log("msg", "cannot listen for QEMUs dialling in", "listener", name, "err", err)
			return 1
		}
		lo := collector.ListenOptions{Name: name, AllowedUIDs: l.AllowedUIDs, Labels: mergeLabels(cfg.Labels, nil), MaxVMs: f.listenMaxVMs}
		level.Info(logger).Log("msg", "listening for QEMUs dialling in", "listener", name)
		wg.Go(func() { _ = m.Serve(mctx, ln, lo) })
	}

	productReg := prometheus.NewRegistry()
	productReg.MustRegister(versioncollector.NewCollector(exporterName), collector.NewListenerCollector(m))
	exporterReg := prometheus.NewRegistry()
	reloadOK := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "qmp_exporter_config_last_reload_successful",
		Help: "Whether the last configuration reload (SIGHUP or POST /-/reload) succeeded; 1 before any reload.",
	})
	reloadTime := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "qmp_exporter_config_last_reload_success_timestamp_seconds",
		Help: "Time of the last successful configuration load, in seconds since the epoch.",
	})
	productReg.MustRegister(reloadOK, reloadTime)
	reloadOK.Set(1)
	reloadTime.SetToCurrentTime()

	var reloadMu sync.Mutex
	reload := func() error {
		reloadMu.Lock()
		defer reloadMu.Unlock()
		c, ts, err := loadConfig()
		if err != nil {
			reloadOK.Set(0)
			level.Error(logger).Log("msg", "reload failed; keeping the previous configuration", "err", err)
			return err
		}
		if c == nil {
			c = cfg
		}
		globs, rescan := discovery(c)
		src.apply(ts, globs, rescan, mergeLabels(c.Labels, nil))
		if sa := staleAfter(c); sa != runningStaleAfter {
			level.Warn(logger).Log("msg", "discovery.stale_after changed; it takes effect when the exporter restarts", "running", runningStaleAfter, "configured", sa)
		}
		reloadOK.Set(1)
		reloadTime.SetToCurrentTime()
		level.Info(logger).Log("msg", "configuration reloaded", "vms", len(ts))
		return nil
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	wg.Go(func() {
		for {
			select {
			case <-mctx.Done():
				return
			case <-hup:
				_ = reload()
			}
		}
	})

	// The VMs' series are written by collector.NewTextWriter, which keeps
	// each VM's rendered lines between scrapes; the registries hold only
	// the exporter's own few metrics.
	hopts := collector.HandlerOpts{
		MaxRequestsInFlight: f.maxRequests,
		ErrorLog:            func(err error) { level.Error(logger).Log("msg", "error gathering metrics", "err", err) },
	}
	var handler http.Handler
	if f.noExporterMet {
		handler = collector.NewHandler(collector.NewTextWriter(m), productReg, hopts)
	} else {
		exporterReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		handler = promhttp.InstrumentMetricHandler(exporterReg,
			collector.NewHandler(collector.NewTextWriter(m), prometheus.Gatherers{productReg, exporterReg}, hopts))
	}

	mux := http.NewServeMux()
	mux.Handle(f.metricsPath, handler)
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "Healthy\n") })
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "Ready\n") })
	mux.HandleFunc("/-/reload", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost && r.Method != http.MethodPut {
			w.Header().Set("Allow", "POST, PUT")
			http.Error(w, "use POST or PUT to reload the configuration", http.StatusMethodNotAllowed)
			return
		}
		if err := reload(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "Reloaded\n")
	})
	if f.metricsPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "QMP Exporter",
			Description: "Prometheus exporter for QEMU virtual machines, fed by QMP events",
			Version:     version.Info(),
			Links: []web.LandingLinks{
				{Address: f.metricsPath, Text: "Metrics"},
				{Address: "/-/healthy", Text: "Health"},
			},
		})
		if err != nil {
			level.Error(logger).Log("msg", "cannot build the landing page", "err", err)
			return 1
		}
		mux.Handle("/", landing)
	}

	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- web.ListenAndServe(srv, f.web, slogger) }()

	select {
	case <-ctx.Done():
		level.Info(logger).Log("msg", "shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-serveErr
		return 0
	case err := <-serveErr:
		level.Error(logger).Log("msg", "http server failed", "err", err)
		return 1
	}
}
