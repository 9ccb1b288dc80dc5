// Command qmp-loadgen plays many QEMU monitors at once, to load-test
// qmp_exporter (or any QMP client) on one machine.
//
// In socket mode it listens on N unix sockets, DIR/vm-00000.qmp and up,
// each speaking QMP as Debian's QEMU 7.2 does: the greeting, then
// qmp_capabilities, then realistic replies to the queries a read-only
// client sends (query-status, query-name, query-uuid, query-version,
// query-balloon, query-block, query-migrate, query-vnc, query-spice,
// query-jobs; shapes from collector/testdata/transcripts, with a name and
// UUID per VM), and CommandNotFound for any other query. Like QEMU, each
// socket serves one client at a time. In dial mode (-dial PATH) it instead
// connects to PATH N times, as QEMUs started with
// -chardev socket,...,reconnect=1 do, and redials a lost connection after
// -reconnect.
//
// Every command that a read-only client never sends (anything but
// qmp_capabilities and query-*) is answered with CommandNotFound, logged
// and counted as refused; the exit status is 1 if there was any. That is a
// second proof, beside qmp's allow-list, that the exporter only reads.
//
// Events. Right after negotiation each VM sends -burst events in the same
// write as the qmp_capabilities reply (the case where a client that
// switches readers after the handshake loses events). Then, during the
// sending window of -duration, each VM sends events from a fixed,
// realistic mix (80 to 300 bytes with CRLF, about a third of them causing
// follow-up queries; -mix quiet keeps only the others) at -rate per
// second, or with -rate 0 as fast as the socket takes them, in 64 KiB
// writes. The window opens once every VM has negotiated, or with
// -wait-signal when the process gets SIGUSR1.
//
// Output, one line each on standard output, for people and scripts:
//
//	listening vms=N dir=DIR            (or: dialing vms=N path=PATH)
//	negotiated vms=N                   every VM has negotiated once
//	sending vms=N rate=R duration=D    the window opened
//	sent vms=N events=E                the window closed; E counts every event written
//	status vms=N sent=... ...          on SIGUSR2
//	vm name=vm-00000 sent=E sessions=S commands=C unknown=U refused=R malformed=M
//	total vms=N sent=E sessions=S commands=C unknown=U refused=R malformed=M
//
// The vm and total lines come on SIGINT or SIGTERM, after the sockets are
// closed and removed. An event counts as sent once wholly written to the
// socket, so sent minus what the client counted is what the client lost.
//
// Example, 1,000 VMs at 10 events per second each for 30 s:
//
//	qmp-loadgen -dir /tmp/vms -n 1000 -rate 10 -duration 30s -config /tmp/vms.yml &
//	qmp_exporter --config.file=/tmp/vms.yml
//
// A process needs two file descriptors per VM in socket mode; run several
// processes with -first for more VMs than the open-file limit allows.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func parseFlags(args []string, stderr io.Writer) (config, string, error) {
	fs := flag.NewFlagSet("qmp-loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	var configOut string
	fs.IntVar(&cfg.n, "n", 1, "number of VMs")
	fs.IntVar(&cfg.first, "first", 0, "index of the first VM: names run from vm-FIRST (5 digits)")
	fs.StringVar(&cfg.dir, "dir", "", "socket mode: directory of the VMs' sockets (vm-00000.qmp, ...)")
	fs.StringVar(&cfg.dial, "dial", "", "dial mode: connect to this unix socket N times instead of listening")
	fs.DurationVar(&cfg.reconnect, "reconnect", time.Second, "dial mode: wait before redialling a lost or refused connection")
	fs.Float64Var(&cfg.rate, "rate", 10, "events per second per VM during the window; 0 sends as fast as possible")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "length of the sending window; 0 sends only the handshake bursts")
	fs.IntVar(&cfg.burst, "burst", 16, "events sent in the same write as each qmp_capabilities reply")
	fs.IntVar(&cfg.hang, "hang", 0, "the first HANG VMs hang after their first handshake: no reply, no event, no greeting again")
	fs.BoolVar(&cfg.waitSignal, "wait-signal", false, "open the sending window on SIGUSR1 rather than once every VM has negotiated")
	fs.BoolVar(&cfg.perVM, "per-vm", true, "print a line per VM at exit")
	fs.StringVar(&cfg.mix, "mix", "full", "event mix: full, or quiet (only the events after which qmp_exporter runs no query)")
	fs.StringVar(&configOut, "config", "", "write a qmp_exporter configuration file listing the sockets to this path")
	if err := fs.Parse(args); err != nil {
		return cfg, "", err
	}
	switch {
	case fs.NArg() > 0:
		return cfg, "", fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case (cfg.dir == "") == (cfg.dial == ""):
		return cfg, "", errors.New("set exactly one of -dir and -dial")
	case cfg.n < 1, cfg.first < 0, cfg.burst < 0, cfg.hang < 0, cfg.hang > cfg.n:
		return cfg, "", errors.New("want -n >= 1, -first >= 0, -burst >= 0 and 0 <= -hang <= -n")
	case cfg.rate < 0, cfg.duration < 0, cfg.reconnect <= 0:
		return cfg, "", errors.New("want -rate >= 0, -duration >= 0 and -reconnect > 0")
	case configOut != "" && cfg.dir == "":
		return cfg, "", errors.New("-config needs -dir")
	case mixes[cfg.mix] == nil:
		return cfg, "", fmt.Errorf("unknown -mix %q, want full or quiet", cfg.mix)
	}
	if cfg.dir != "" {
		abs, err := filepath.Abs(cfg.dir)
		if err != nil {
			return cfg, "", err
		}
		cfg.dir = abs
	}
	return cfg, configOut, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, configOut, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "qmp-loadgen: %v\n", err)
		return 2
	}
	f := newFleet(cfg, stdout, stderr)
	if configOut != "" {
		if err := f.writeConfig(configOut); err != nil {
			fmt.Fprintf(stderr, "qmp-loadgen: %v\n", err)
			return 1
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-sigs:
				if s == syscall.SIGUSR1 {
					f.startWindow()
				} else {
					f.report("status")
				}
			}
		}
	}()
	if err := f.run(ctx); err != nil {
		fmt.Fprintf(stderr, "qmp-loadgen: %v\n", err)
		return 1
	}
	f.report("total")
	if f.refusedAny.Load() {
		fmt.Fprintln(stderr, "qmp-loadgen: the client sent commands a read-only client never sends (see refused=)")
		return 1
	}
	return 0
}
