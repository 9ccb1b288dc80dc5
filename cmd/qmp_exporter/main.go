// Command qmp_exporter keeps QMP sessions to QEMU virtual machines, folds
// the events they emit into counters and gauges, and serves them to
// Prometheus. This package only wires flags, logging, configuration and
// HTTP: the VMs live in internal/fleet, the QMP sockets are read by
// internal/source/qmpsock, and package collector turns their state into
// metrics (docs/architecture.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/alecthomas/units"
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
	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/journal"
	"github.com/qmp-exporter/qmp_exporter/internal/logging"
	"github.com/qmp-exporter/qmp_exporter/internal/pages"
	"github.com/qmp-exporter/qmp_exporter/internal/source/libvirtd"
	"github.com/qmp-exporter/qmp_exporter/internal/source/qmpsock"
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
	libvirtSocket  string
	libvirtMax     int
	maxMessage     int
	metricsPath    string
	noExporterMet  bool
	noCreated      bool
	maxRequests    int
	eventsKeep     int
	eventsMemory   units.Base2Bytes
	eventsLogFile  string
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
		Default(strconv.Itoa(qmpsock.DefaultMaxDialledIn)).IntVar(&f.listenMaxVMs)
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
	app.Flag("libvirt.socket", "Watch every domain of the libvirtd behind this socket, without changing or tainting any: give its read-only socket, /run/libvirt/libvirt-sock-ro. Overrides libvirt.socket of --config.file; off when neither is set.").
		PlaceHolder("PATH").StringVar(&f.libvirtSocket)
	app.Flag("libvirt.max-domains", "Most libvirt domains kept. At the bound a new domain replaces the one stopped longest, or is left out while all run.").
		Default(strconv.Itoa(libvirtd.DefaultMaxDomains)).IntVar(&f.libvirtMax)
	app.Flag("web.telemetry-path", "Path under which to expose metrics.").
		Default("/metrics").StringVar(&f.metricsPath)
	app.Flag("web.disable-exporter-metrics", "Exclude the exporter's own go_*, process_* and promhttp_* metrics from /metrics.").
		BoolVar(&f.noExporterMet)
	app.Flag("web.disable-openmetrics-created", "Leave the _created samples out of OpenMetrics (what Prometheus asks for). They tell a Prometheus run with --enable-feature=created-timestamp-zero-ingestion when each counter started from zero, so that it sees a counter's first increase; a Prometheus without that feature stores each as a series of its own (qmp_events_created, ...).").
		BoolVar(&f.noCreated)
	app.Flag("web.max-requests", "Maximum number of concurrent scrapes; 0 means no limit.").
		Default("40").IntVar(&f.maxRequests)
	app.Flag("events.keep", "Recent events kept per VM, with their data, for the /vms and /events pages.").
		Default(strconv.Itoa(journal.DefaultKeep)).IntVar(&f.eventsKeep)
	app.Flag("events.max-memory", "Most memory the recent events of all VMs may take (their data, and about 100 bytes each): over it, the VMs holding the most lose their oldest events first.").
		Default("64MiB").BytesVar(&f.eventsMemory)
	app.Flag("events.log-file", "Write every event as one JSON object per line to this file (- for standard output), for Loki and other log stores. Reopened on SIGHUP, for logrotate. Events the file cannot take in time are dropped and counted in qmp_event_log_dropped_total, never delaying the VMs.").
		PlaceHolder("PATH").StringVar(&f.eventsLogFile)
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

// newLogger returns the exporter's go-kit logger (each line with ts,
// caller and level) and a *slog.Logger for exporter-toolkit that writes
// through the same writer, format and level filter. The slog bridge adds
// a record's level, caller and time itself, so it logs to the logger
// before ts and caller are added, and its time is written as ts: every
// line carries each field once, whoever wrote it.
func newLogger(w io.Writer, lvl, format string) (log.Logger, *slog.Logger) {
	var base log.Logger
	if format == "json" {
		base = log.NewJSONLogger(log.NewSyncWriter(w))
	} else {
		base = log.NewLogfmtLogger(log.NewSyncWriter(w))
	}
	base = level.NewFilter(base, level.Allow(level.ParseDefault(lvl, level.InfoValue())))
	// logging.Caller rather than log.DefaultCaller: the sources wrap this
	// logger (a dialled-in VM's lines pass through the listener's
	// limiter), and a fixed frame count would name the wrapper.
	logger := log.With(base, "ts", log.DefaultTimestampUTC, "caller", log.Valuer(logging.Caller))
	sl := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}[lvl]
	return logger, slog.New(slogkit.NewGoKitHandler(timeAsTS(base), sl))
}

// timeAsTS writes the slog bridge's time field as ts, in the format of
// log.DefaultTimestampUTC.
func timeAsTS(next log.Logger) log.Logger {
	return log.LoggerFunc(func(kv ...any) error {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == slog.TimeKey {
				if t, ok := kv[i+1].(time.Time); ok {
					kv[i], kv[i+1] = "ts", t.UTC().Format(time.RFC3339Nano)
				}
			}
		}
		return next.Log(kv...)
	})
}

// run is the exporter's life: flags, logger, configuration, sources,
// HTTP, then waiting for a signal. It returns the exit code.
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
	logger, slogger := newLogger(stderr, f.logLevel, f.logFormat)

	conf := &configuration{f: f}
	if f.configCheck {
		return conf.check(stdout, stderr)
	}
	cfg, initial, err := conf.load()
	if err == nil && f.listenMaxVMs < 1 {
		err = fmt.Errorf("--qmp.listen-max-vms must be at least 1, got %d", f.listenMaxVMs)
	}
	if err == nil && f.libvirtMax < 1 {
		err = fmt.Errorf("--libvirt.max-domains must be at least 1, got %d", f.libvirtMax)
	}
	if err == nil && f.eventsKeep < 1 {
		err = fmt.Errorf("--events.keep must be at least 1, got %d", f.eventsKeep)
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
	conf.running = cfg
	conf.staleAfter = conf.staleAfterOf(cfg)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	events, eventLog, stopLog, err := newJournal(f, logger)
	if err != nil {
		level.Error(logger).Log("msg", "cannot open the event log", "err", err)
		return 1
	}
	defer stopLog() // after the sources stopped: their last events are written
	vms := fleet.New(fleet.Options{StaleAfter: conf.staleAfter, Logger: logger, Journal: events})
	src, stopSources, err := startSources(f, conf, initial, vms, logger)
	if err != nil {
		return 1
	}
	defer stopSources()

	productReg, exporterReg := newRegistries(f, src, vms, eventLog)
	conf.reloaded = newReloadMetrics(productReg)
	conf.src, conf.logger = src, logger
	if eventLog != nil {
		conf.reopen = eventLog.Reopen
	}
	stopReload := conf.reloadOnSIGHUP()
	defer stopReload()

	mux, err := newMux(f, vms, productReg, exporterReg, conf, logger)
	if err != nil {
		level.Error(logger).Log("msg", "cannot build the landing page", "err", err)
		return 1
	}
	return serve(ctx, f, mux, logger, slogger)
}

// targets turns the configuration and the --qmp.socket flags into the
// QMP source's targets.
func targets(cfg *config.Config, sockets []string) ([]qmpsock.Target, error) {
	var out []qmpsock.Target
	seen := map[string]bool{}
	if cfg != nil {
		for _, vm := range cfg.VMs {
			network, address := vm.Endpoint()
			t := qmpsock.Target{Network: network, Address: address, Labels: mergeLabels(cfg.Labels, vm.Labels)}
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
		out = append(out, qmpsock.Target{Network: network, Address: address, Labels: labels})
	}
	return out, nil
}

// mergeLabels returns the global labels overridden by a VM's own.
func mergeLabels(global, own map[string]string) map[string]string {
	if len(global) == 0 && len(own) == 0 {
		return nil
	}
	out := maps.Clone(global)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, own)
	return out
}

// startSources starts the QMP-socket source on vms: the configured
// sockets and globs, and a listener for each configured or flagged path.
// stop ends them and waits. A listener that cannot be opened is logged
// and returned as an error, with everything started so far stopped.
func startSources(f *flags, conf *configuration, initial []qmpsock.Target, vms *fleet.Fleet, logger log.Logger) (src *qmpsock.Source, stop func(), err error) {
	src = qmpsock.New(vms, qmpsock.Options{
		DialTimeout:     f.dialTimeout,
		CommandTimeout:  f.commandTimeout,
		MaxBackoff:      f.maxBackoff,
		RefreshInterval: f.refresh,
		MaxMessageBytes: f.maxMessage,
		Logger:          logger,
	})
	cfg := conf.running
	globs, rescan := conf.discovery(cfg)
	listens := slices.Clone(cfg.Listen)
	for _, p := range f.listens {
		listens = append(listens, config.Listen{Path: p, Mode: config.DefaultListenMode})
	}
	libvirtSocket := conf.libvirtSocket(cfg)
	if len(initial) == 0 && len(globs) == 0 && len(listens) == 0 && libvirtSocket == "" {
		level.Warn(logger).Log("msg", "no VMs to watch: pass --qmp.socket, --qmp.socket-glob, --qmp.listen or --libvirt.socket, or use --config.file")
	}
	src.Configure(initial, globs, rescan, mergeLabels(cfg.Labels, nil))
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	stop = func() { cancel(); wg.Wait() }
	wg.Go(func() { _ = src.Run(ctx) })
	if libvirtSocket != "" {
		lv := libvirtd.New(vms, libvirtd.Options{
			Socket:          libvirtSocket,
			DialTimeout:     f.dialTimeout,
			CallTimeout:     f.commandTimeout,
			MaxBackoff:      f.maxBackoff,
			RefreshInterval: f.refresh,
			MaxDomains:      f.libvirtMax,
			Labels:          mergeLabels(cfg.Labels, nil),
			Logger:          logger,
		})
		level.Info(logger).Log("msg", "watching libvirt domains", "libvirt", libvirtSocket)
		wg.Go(func() { _ = lv.Run(ctx) })
	}
	for _, l := range listens {
		ln, name, err := qmpsock.OpenListener(l.Path, l.Address, fs.FileMode(l.Mode))
		if err != nil {
			level.Error(logger).Log("msg", "cannot listen for QEMUs dialling in", "listener", name, "err", err)
			stop()
			return nil, nil, err
		}
		lo := qmpsock.ListenOptions{Name: name, AllowedUIDs: l.AllowedUIDs, Labels: mergeLabels(cfg.Labels, nil), MaxVMs: f.listenMaxVMs}
		level.Info(logger).Log("msg", "listening for QEMUs dialling in", "listener", name)
		wg.Go(func() { _ = src.Serve(ctx, ln, lo) })
	}
	return src, stop, nil
}

// newRegistries returns the registry of the product's own metrics
// (version, listeners, UUID conflicts, reloads) and the one of the process's (Go and
// process collectors, empty with --web.disable-exporter-metrics). The
// VMs' series are not in either: collector.TextWriter writes them.
func newRegistries(f *flags, src *qmpsock.Source, vms *fleet.Fleet, eventLog *journal.LogFile) (product, exporter *prometheus.Registry) {
	product = prometheus.NewRegistry()
	product.MustRegister(versioncollector.NewCollector(exporterName), collector.NewListenerCollector(src.EachListenerCount),
		collector.NewFleetCollector(vms))
	if eventLog != nil {
		product.MustRegister(collector.NewEventLogCollector(eventLog.Dropped))
	}
	exporter = prometheus.NewRegistry()
	if !f.noExporterMet {
		exporter.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	return product, exporter
}

// newJournal returns the journal of recent events and, with
// --events.log-file, the event log it feeds, with the function that
// stops the log's writer after writing what is queued.
func newJournal(f *flags, logger log.Logger) (*journal.Journal, *journal.LogFile, func(), error) {
	opts := journal.Options{Keep: f.eventsKeep, MaxBytes: int(min(int64(f.eventsMemory), math.MaxInt))}
	if f.eventsLogFile == "" {
		return journal.New(opts), nil, func() {}, nil
	}
	l, err := journal.OpenLog(f.eventsLogFile, 0, logger)
	if err != nil {
		return nil, nil, nil, err
	}
	opts.Log = l.Send
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(ctx)
	}()
	return journal.New(opts), l, func() { cancel(); <-done }, nil
}

// newMux serves /metrics, the health and reload endpoints and the landing
// page.
func newMux(f *flags, vms *fleet.Fleet, product, exporter *prometheus.Registry, conf *configuration, logger log.Logger) (*http.ServeMux, error) {
	// The VMs' series are written by collector.NewTextWriter, which keeps
	// each VM's rendered lines between scrapes; the registries hold only
	// the exporter's own few metrics.
	hopts := collector.HandlerOpts{
		MaxRequestsInFlight: f.maxRequests,
		ErrorLog:            func(err error) { level.Error(logger).Log("msg", "error gathering metrics", "err", err) },
		NoCreated:           f.noCreated,
	}
	var handler http.Handler
	if f.noExporterMet {
		handler = collector.NewHandler(collector.NewTextWriter(vms), product, hopts)
	} else {
		handler = promhttp.InstrumentMetricHandler(exporter,
			collector.NewHandler(collector.NewTextWriter(vms), prometheus.Gatherers{product, exporter}, hopts))
	}

	mux := http.NewServeMux()
	mux.Handle(f.metricsPath, handler)
	p := pages.New(vms)
	mux.HandleFunc("/vms", p.ServeVMs)
	mux.HandleFunc("/events", p.ServeEvents)
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "Healthy\n") })
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "Ready\n") })
	mux.HandleFunc("/-/reload", conf.serveReload)
	if f.metricsPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "QMP Exporter",
			Description: "Prometheus exporter for QEMU virtual machines, fed by QMP events",
			Version:     version.Info(),
			Links: []web.LandingLinks{
				{Address: f.metricsPath, Text: "Metrics"},
				{Address: "/vms", Text: "VMs"},
				{Address: "/events", Text: "Recent events"},
				{Address: "/-/healthy", Text: "Health"},
			},
		})
		if err != nil {
			return nil, err
		}
		mux.Handle("/", landing)
	}
	return mux, nil
}

// serve runs the HTTP server (TLS and basic auth through exporter-toolkit)
// until ctx ends, then shuts it down; it returns the exit code.
func serve(ctx context.Context, f *flags, mux *http.ServeMux, logger log.Logger, slogger *slog.Logger) int {
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
