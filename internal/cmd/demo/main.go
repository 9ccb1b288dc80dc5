// Command demo shows qmp_exporter at work on a real QEMU, with nothing to set
// up but Go and Debian's qemu-system-x86 (which it offers to install).
//
// It builds the exporter, starts a guestless lab VM named "demo" (see
// internal/qemulab), points the exporter at the VM's QMP socket and serves
// /metrics on 127.0.0.1:10714. Then, every couple of seconds, it makes QEMU
// emit the next event of a fixed cycle (stop, cont, system_reset, a guest
// reset, a CD-ROM tray opening and closing, a VNC client, the watchdog, a
// guest panic and cont) through the lab's control monitor and qtest, and
// prints the qmp_ series of /metrics that changed.
//
// Run it from the repository with `make demo` or `go run ./internal/cmd/demo`.
// Ctrl-C stops the exporter and QEMU and removes the temporary files.
//
// Flags:
//
//	-listen ADDR       the exporter's listen address (default 127.0.0.1:10714)
//	-interval DURATION time between two events (default 2s)
//	-duration DURATION stop after this long once the events start (default 0: until Ctrl-C)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
)

// Identity of the demo VM, as it shows in the vm label and qmp_vm_info.
const (
	vmName = "demo"
	vmUUID = "5c0ffee0-0d15-4a7b-9e3c-0000000de770"
)

// Bounds on the steps of the demo, so that a stuck QEMU or exporter ends it
// with an error instead of hanging.
const (
	setupTimeout   = 5 * time.Minute  // apt-get, go build, QEMU start, first scrape
	eventTimeout   = 5 * time.Second  // for QEMU to emit the events of an action
	cleanupTimeout = 10 * time.Second // for the exporter to exit after SIGTERM
	pollEvery      = 50 * time.Millisecond
)

// options are the demo's flags.
type options struct {
	// Listen is the exporter's --web.listen-address, with a fixed port.
	Listen string
	// Interval is the pause between two actions.
	Interval time.Duration
	// Duration bounds the run once the first scrape is done; 0 means until
	// the context ends.
	Duration time.Duration
	// InstallQEMU lets the demo run apt-get (as root) when
	// qemu-system-x86_64 is missing.
	InstallQEMU bool
}

func main() {
	opts := options{InstallQEMU: true}
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	fs.StringVar(&opts.Listen, "listen", "127.0.0.1:10714", "the exporter's listen address (host:port)")
	fs.DurationVar(&opts.Interval, "interval", 2*time.Second, "time between two events")
	fs.DurationVar(&opts.Duration, "duration", 0, "stop after this long once the events start; 0 runs until Ctrl-C")
	_ = fs.Parse(os.Args[1:]) // ExitOnError: Parse exits on a bad flag

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, opts, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// run is the whole demo. It returns nil when ctx ends or opts.Duration has
// passed, after stopping the exporter and QEMU and removing its temporary
// directory; it returns an error if a step fails for another reason.
func run(ctx context.Context, opts options, out io.Writer) error {
	if opts.Interval <= 0 {
		return fmt.Errorf("interval must be positive, not %v", opts.Interval)
	}
	err := demo(ctx, opts, out)
	if ctx.Err() != nil {
		return nil // an error caused by ctx ending (Ctrl-C) is a normal exit
	}
	return err
}

// demo does what run says, but returns whatever error ended it.
func demo(ctx context.Context, opts options, out io.Writer) error {
	// Fail before the slow steps if the port is taken (StartAt checks again).
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return fmt.Errorf("-listen %s: %w", opts.Listen, err)
	}
	ln.Close()
	if err = ensureQEMU(ctx, out, opts.InstallQEMU); err != nil {
		return err
	}

	tmp, err := os.MkdirTemp("", "qmp-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	setupCtx, cancelSetup := context.WithTimeout(ctx, setupTimeout)
	defer cancelSetup()

	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	root, err := exporterproc.FindModuleRoot(wd)
	if err != nil {
		return fmt.Errorf("run the demo from the qmp_exporter repository: %w", err)
	}
	fmt.Fprintf(out, "%s building qmp_exporter\n", stamp())
	bin, err := exporterproc.Build(setupCtx, root, tmp)
	if err != nil {
		return err
	}

	fmt.Fprintf(out, "%s starting QEMU (guestless, -name %s)\n", stamp(), vmName)
	vm, err := qemulab.Start(setupCtx, qemulab.Options{
		Dir: filepath.Join(tmp, "vm"), Name: vmName, UUID: vmUUID, Devices: true, VNC: true,
	})
	if err != nil {
		return err
	}
	defer vm.Close()

	exp, err := exporterproc.StartAt(setupCtx, opts.Listen, bin, "--qmp.socket="+vm.ExporterSocket)
	if err != nil {
		return err
	}
	defer func() {
		// ctx may be over already: give the exporter its own time to exit.
		sctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		_ = exp.Stop(sctx) // its exit status tells nothing useful here
	}()
	fmt.Fprintf(out, "%s exporter: http://%s/metrics (QMP socket %s); Ctrl-C to stop\n", stamp(), exp.Addr, vm.ExporterSocket)

	up := fmt.Sprintf("qmp_up{vm=%q}", vmName)
	first, err := exp.WaitFor(setupCtx, up+" 1", func(m exporterproc.Metrics) bool { return m.Has(up, 1) })
	if err != nil {
		return err
	}
	prev := qmpSeries(first)
	fmt.Fprintf(out, "%s the exporter is connected; qmp_ series now:\n", stamp())
	printState(out, prev)
	cancelSetup()

	if opts.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Duration)
		defer cancel()
	}
	cycle := actions()
	for i := 0; ; i++ {
		if !sleep(ctx, opts.Interval) {
			return nil
		}
		a := cycle[i%len(cycle)]
		fmt.Fprintf(out, "%s %s\n", stamp(), a.what)
		if err := a.run(ctx, vm); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			select {
			case <-vm.Exited():
				return fmt.Errorf("QEMU exited (%v)\n%s", vm.ExitErr(), vm.Output())
			default:
			}
			fmt.Fprintf(out, "%s   failed: %v\n", stamp(), err)
			continue
		}
		cur, err := settle(ctx, exp, prev, opts.Interval)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("scrape: %w\nexporter log:\n%s", err, exp.Logs())
		}
		printChanges(out, prev, cur)
		prev = cur
	}
}

// ensureQEMU makes sure qemu-system-x86_64 is there. When it is missing and
// install is set, it runs apt-get as root, or prints the apt-get command to
// run and fails when not root.
func ensureQEMU(ctx context.Context, out io.Writer, install bool) error {
	_, err := qemulab.FindQEMU()
	if err == nil || !install || os.Getenv("QEMU_BINARY") != "" {
		return err
	}
	if os.Geteuid() != 0 {
		fmt.Fprint(out, "qemu-system-x86_64 is missing. Install it with:\n\n"+
			"    sudo apt-get update && sudo apt-get install -y qemu-system-x86\n\n"+
			"then run the demo again.\n")
		return errors.New("qemu-system-x86_64 is missing")
	}
	fmt.Fprintf(out, "%s qemu-system-x86_64 is missing; installing Debian's qemu-system-x86\n", stamp())
	for _, args := range [][]string{{"update"}, {"install", "-y", "qemu-system-x86"}} {
		fmt.Fprintf(out, "+ apt-get %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = out, out
		if rerr := cmd.Run(); rerr != nil {
			return fmt.Errorf("apt-get %s: %w", args[0], rerr)
		}
	}
	_, err = qemulab.FindQEMU()
	return err
}

// action is one step of the cycle: something done to the VM, and the events
// it makes QEMU emit, which run waits for on the control monitor.
type action struct {
	what   string
	events []string
	do     func(ctx context.Context, vm *qemulab.VM) error
}

// run does the action and waits until the control monitor has seen its
// events. Every QMP monitor receives every event, so by then the exporter's
// monitor has been sent them too.
func (a action) run(ctx context.Context, vm *qemulab.VM) error {
	exps := make([]*qemulab.Expectation, len(a.events))
	for i, ev := range a.events {
		exps[i] = vm.Ctl.Expect(ev) // before acting: an event may precede the reply
	}
	if err := a.do(ctx, vm); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, eventTimeout)
	defer cancel()
	for i, e := range exps {
		if _, err := e.Wait(ctx); err != nil {
			return fmt.Errorf("waiting for %s: %w", a.events[i], err)
		}
	}
	return nil
}

// command returns an action's do that sends a QMP command on the control
// monitor.
func command(name string, args any) func(context.Context, *qemulab.VM) error {
	return func(ctx context.Context, vm *qemulab.VM) error {
		_, err := vm.Ctl.Execute(ctx, name, args)
		return err
	}
}

// actions is the cycle the demo repeats.
func actions() []action {
	tray := map[string]string{"id": qemulab.CDROMNamedID}
	return []action{
		{"stop: pause the VM (QMP stop)", []string{"STOP"}, command("stop", nil)},
		{"cont: resume the VM (QMP cont)", []string{"RESUME"}, command("cont", nil)},
		{"system_reset: reset from the host (QMP system_reset)", []string{"RESET"}, command("system_reset", nil)},
		{"guest reset: the guest writes 6 to port 0xcf9 (qtest)", []string{"RESET"}, guestReset},
		{"open the tray of " + qemulab.CDROMNamedID + " (QMP blockdev-open-tray)", []string{"DEVICE_TRAY_MOVED"}, command("blockdev-open-tray", tray)},
		{"close the tray of " + qemulab.CDROMNamedID + " (QMP blockdev-close-tray)", []string{"DEVICE_TRAY_MOVED"}, command("blockdev-close-tray", tray)},
		{"a VNC client connects, completes the handshake and leaves", []string{"VNC_CONNECTED", "VNC_INITIALIZED", "VNC_DISCONNECTED"}, vncVisit},
		{"the ib700 watchdog fires (qtest), its action resets the VM", []string{"WATCHDOG", "RESET"}, fireWatchdog},
		{"the guest panics through pvpanic (qtest); QEMU pauses it", []string{"GUEST_PANICKED", "STOP"}, panicGuest},
		{"cont: resume the panicked VM (QMP cont)", []string{"RESUME"}, command("cont", nil)},
	}
}

func guestReset(ctx context.Context, vm *qemulab.VM) error   { return vm.GuestReset(ctx) }
func fireWatchdog(ctx context.Context, vm *qemulab.VM) error { return vm.FireWatchdog(ctx) }
func panicGuest(ctx context.Context, vm *qemulab.VM) error   { return vm.Panic(ctx) }

// vncVisit connects to the VM's VNC socket, does the RFB handshake and
// hangs up.
func vncVisit(ctx context.Context, vm *qemulab.VM) error {
	c, err := qemulab.VNCHandshake(ctx, vm.VNCSocket)
	if err != nil {
		return err
	}
	return c.Close()
}

// settle scrapes until the qmp_ series differ from prev and have then held
// still for a few polls (an action may bring several events), or until limit
// has passed. It returns the last qmp_ series seen.
func settle(ctx context.Context, exp *exporterproc.Process, prev exporterproc.Metrics, limit time.Duration) (exporterproc.Metrics, error) {
	quiet := min(limit/4, 150*time.Millisecond)
	deadline := time.Now().Add(limit)
	var last exporterproc.Metrics
	var lastChange time.Time
	for {
		m, _, err := exp.Scrape(ctx)
		if err != nil {
			return nil, err
		}
		cur := qmpSeries(m)
		now := time.Now()
		if last == nil || !equal(cur, last) {
			last, lastChange = cur, now
		}
		if (!equal(cur, prev) && now.Sub(lastChange) >= quiet) || now.After(deadline) {
			return last, nil
		}
		if !sleep(ctx, pollEvery) {
			return nil, ctx.Err()
		}
	}
}

// qmpSeries keeps the qmp_ series of a scrape.
func qmpSeries(m exporterproc.Metrics) exporterproc.Metrics {
	out := exporterproc.Metrics{}
	for s, v := range m {
		if strings.HasPrefix(s, "qmp_") {
			out[s] = v
		}
	}
	return out
}

func equal(a, b exporterproc.Metrics) bool {
	if len(a) != len(b) {
		return false
	}
	for s, v := range a {
		if w, ok := b[s]; !ok || w != v {
			return false
		}
	}
	return true
}

// printState prints every series but the qmp_vm_status ones that are 0.
func printState(out io.Writer, m exporterproc.Metrics) {
	t := stamp()
	for _, s := range sortedKeys(m) {
		if isStatus(s) && m[s] == 0 {
			continue
		}
		fmt.Fprintf(out, "%s   %s %s\n", t, s, format(m[s]))
	}
}

// printChanges prints the series whose value changed, appeared or went
// away between prev and cur. A qmp_vm_status series that appears with the
// value 0 is not a change worth a line.
func printChanges(out io.Writer, prev, cur exporterproc.Metrics) {
	t := stamp()
	n := 0
	for _, s := range sortedKeys(cur) {
		v := cur[s]
		old, ok := prev[s]
		switch {
		case !ok && isStatus(s) && v == 0:
		case !ok:
			fmt.Fprintf(out, "%s   %s %s  (new)\n", t, s, format(v))
			n++
		case old != v:
			fmt.Fprintf(out, "%s   %s %s  (was %s)\n", t, s, format(v), format(old))
			n++
		}
	}
	for _, s := range sortedKeys(prev) {
		if _, ok := cur[s]; !ok {
			fmt.Fprintf(out, "%s   %s gone  (was %s)\n", t, s, format(prev[s]))
			n++
		}
	}
	if n == 0 {
		fmt.Fprintf(out, "%s   (no qmp_ series changed)\n", t)
	}
}

func isStatus(series string) bool { return strings.HasPrefix(series, "qmp_vm_status{") }

func sortedKeys(m exporterproc.Metrics) []string {
	keys := make([]string, 0, len(m))
	for s := range m {
		keys = append(keys, s)
	}
	sort.Strings(keys)
	return keys
}

// format writes a sample value without exponent, so that timestamps read
// as seconds.
func format(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// stamp is the time prefix of every line.
func stamp() string { return time.Now().Format("15:04:05.000") }

// sleep waits for d and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
