package qemulab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/citool"
	"github.com/qmp-exporter/qmp_exporter/internal/sockfile"
	"github.com/qmp-exporter/qmp_exporter/internal/tailbuf"
)

// Names of the lab devices added by Options.Devices.
const (
	// CDROMNamedDrive is the -drive id (BlockBackend name) of the first
	// CD-ROM; CDROMNamedID is its qdev id. Its DEVICE_TRAY_MOVED carries
	// {"device":"cd0","id":"cdrom0"}.
	CDROMNamedDrive = "cd0"
	CDROMNamedID    = "cdrom0"
	// CDROMAnonNode is the -blockdev node name behind the second CD-ROM,
	// whose qdev id is CDROMAnonID. Its BlockBackend is anonymous, so
	// DEVICE_TRAY_MOVED carries {"device":"","id":"mycd"}.
	CDROMAnonNode = "cd1"
	CDROMAnonID   = "mycd"
	// CDROMNoIDDrive is the -drive id of the third CD-ROM, which has no qdev
	// id: its DEVICE_TRAY_MOVED carries its QOM path as "id". Find that path
	// with VM.QdevOfDrive.
	CDROMNoIDDrive = "cd2"
	// XHCIBus is the USB bus of the qemu-xhci controller, for device_add.
	XHCIBus = "xhci.0"
)

// I/O ports and values the recipes write through qtest.
const (
	pvpanicPort     = 0x505 // pvpanic ISA port
	pvpanicPanicked = 1     // -> GUEST_PANICKED
	pvpanicCrash    = 2     // -> GUEST_CRASHLOADED
	pvpanicShutdown = 4     // -> GUEST_PVSHUTDOWN (QEMU 9.1 on)
	ib700TimerPort  = 0x443 // writing arms the ib700 watchdog
	ib700Timeout0s  = 15    // index of the 0 s timeout: it fires at once
	resetCtlPort    = 0xcf9 // PCI reset control register
	resetCtlHard    = 6     // SYS_RST|RST_CPU -> RESET {"guest": true}
)

// maxSocketPath is the longest unix socket path QEMU and the kernel accept:
// sun_path is 108 bytes including the terminating NUL.
const maxSocketPath = 107

// outputTail is how much of QEMU's stdout+stderr a VM keeps for errors.
const outputTail = 16 << 10

// killTimeout bounds the wait for a SIGKILLed QEMU to be reaped.
const killTimeout = 30 * time.Second

// FindQEMU returns the path of qemu-system-x86_64: $QEMU_BINARY if set
// (a path, or a name looked up in $PATH), else qemu-system-x86_64 in $PATH.
func FindQEMU() (string, error) {
	if b := os.Getenv("QEMU_BINARY"); b != "" {
		p, err := exec.LookPath(b)
		if err != nil {
			return "", fmt.Errorf("qemulab: $QEMU_BINARY: %w", err)
		}
		return p, nil
	}
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return "", fmt.Errorf("qemulab: qemu-system-x86_64 is missing (install Debian's qemu-system-x86 or set $QEMU_BINARY): %w", err)
	}
	return p, nil
}

// TB is the part of testing.TB that RequireQEMU uses.
type TB = citool.TB

// RequireQEMU returns the QEMU binary for a test. When it is missing the test
// is skipped, except when the environment variable CI is "true": a missing
// QEMU must fail CI rather than silently skip the end-to-end tests.
func RequireQEMU(t TB) string {
	t.Helper()
	return citool.Require(t, FindQEMU)
}

// Options describes a lab VM. Dir is required; the zero value of every
// other field is a sensible default.
type Options struct {
	// Dir holds the sockets, the firmware and the CD-ROM images (it is
	// created if missing), and is QEMU's working directory (relative paths in ExtraArgs resolve there).
	// If a socket path in Dir would exceed the 108-byte sun_path limit, Start
	// uses a short directory made with os.MkdirTemp instead (VM.Dir tells
	// which) and Close removes it.
	Dir string
	// QEMU is the binary to run; empty means FindQEMU.
	QEMU string
	// Name and UUID become -name and -uuid when set.
	Name string
	UUID string
	// ExporterSocket is the QMP server socket (server=on,wait=off) for the
	// program under test; empty means <Dir>/exporter.qmp. A stale socket file
	// left there by a killed QEMU is removed first.
	ExporterSocket string
	// NoExporterMonitor leaves out the exporter's QMP monitor.
	NoExporterMonitor bool
	// Paused adds -S: the VM starts in the "prelaunch" state until cont.
	Paused bool
	// Devices adds the lab devices: pvpanic, ib700, qemu-xhci (id "xhci",
	// bus XHCIBus) and three IDE CD-ROMs, one per shape of
	// DEVICE_TRAY_MOVED (see CDROMNamedDrive and the constants after it).
	Devices bool
	// VNC adds -vnc unix:<Dir>/vnc.sock (VM.VNCSocket).
	VNC bool
	// SPICE adds -spice unix=on,addr=<Dir>/spice.sock,disable-ticketing=on
	// (VM.SPICESocket; see SPICEHandshake).
	SPICE bool
	// Balloon adds a virtio-balloon-pci device with id BalloonID, which
	// makes query-balloon and balloon work (see VM.GuestBalloon).
	Balloon bool
	// FaultyDisk, if set, adds a legacy ISA IDE controller with one disk
	// whose sector FaultySector fails (see FaultyDisk and VM.DiskRead).
	FaultyDisk *FaultyDisk
	// PanicAction, if set, adds -action panic=<value>. QEMU 7.2 accepts
	// "pause" (the default), "shutdown", "exit-failure" and "none"; the
	// GUEST_PANICKED event (see VM.Panic) reports them as "pause",
	// "poweroff" (only if ShutdownAction is "poweroff", else "pause"),
	// "poweroff" and "run". After "poweroff" QEMU emits STOP and SHUTDOWN
	// {"guest": true, "reason": "guest-panic"}; it then exits (with status
	// 1 for "exit-failure") if ShutdownAction is "poweroff", else it stays
	// in "guest-panicked". With "run" the VM keeps running.
	PanicAction string
	// WatchdogAction, if set, adds -action watchdog=<value>: the action
	// of the ib700 watchdog (see VM.FireWatchdog), "reset" by default.
	// With "poweroff", QEMU 7.2 sends WATCHDOG {"action": "poweroff"}
	// and exits at once with status 0, whatever ShutdownAction says: no
	// STOP or SHUTDOWN follows.
	WatchdogAction string
	// ShutdownAction, if set, adds -action shutdown=<value> after
	// -no-shutdown, which the lab always passes (it means shutdown=pause:
	// a guest shutdown stops the VM instead of ending QEMU). "poweroff"
	// makes a guest shutdown or panic end QEMU.
	ShutdownAction string
	// ExtraArgs are appended to QEMU's command line.
	ExtraArgs []string
	// Log, if set, receives QEMU's stdout and stderr (writes are serialized).
	// That includes QEMU's qtest log, one line per qtest command and answer.
	Log io.Writer
}

// VM is a running lab QEMU. Call Close when done with it (t.Cleanup).
type VM struct {
	// ExporterSocket is the path of the exporter's QMP socket ("" with
	// NoExporterMonitor).
	ExporterSocket string
	// VNCSocket is the path of the VNC socket ("" without Options.VNC).
	VNCSocket string
	// SPICESocket is the path of the SPICE socket ("" without
	// Options.SPICE).
	SPICESocket string
	// Dir is the directory actually used (see Options.Dir).
	Dir string
	// Ctl is the control monitor, past qmp_capabilities. It receives every
	// event from QEMU's start on.
	Ctl *Monitor
	// QTest is the qtest connection.
	QTest *QTest
	// Pid is QEMU's process id.
	Pid int

	version Version // from Ctl's greeting

	cmd     *exec.Cmd
	out     *tailbuf.Buffer
	tmpDir  string        // made by Start because Dir was too long; removed by Close
	exited  chan struct{} // closed when cmd.Wait has returned
	waitErr error         // cmd.Wait's result; read only after exited is closed

	closeOnce sync.Once
	closeErr  error
}

// Start writes the lab files into Dir, starts QEMU and connects the control
// monitor and qtest. It returns once the control monitor is past
// qmp_capabilities and the exporter socket exists, so the program under test
// may dial it at once. Everything is bounded by ctx. On failure QEMU is
// killed and the error includes the tail of QEMU's output.
func Start(ctx context.Context, opts Options) (*VM, error) {
	if opts.Dir == "" {
		return nil, errors.New("qemulab: Options.Dir is required")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("qemulab: start: %w", err)
	}
	bin := opts.QEMU
	if bin == "" {
		var err error
		if bin, err = FindQEMU(); err != nil {
			return nil, err
		}
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("qemulab: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("qemulab: %w", err)
	}
	v := &VM{out: tailbuf.New(outputTail, opts.Log), exited: make(chan struct{})}
	if len(filepath.Join(dir, "exporter.qmp")) > maxSocketPath {
		if dir, err = os.MkdirTemp("", "qlab"); err != nil {
			return nil, fmt.Errorf("qemulab: short directory for sockets: %w", err)
		}
		v.tmpDir = dir
	}
	v.Dir = dir
	if err := v.start(ctx, bin, opts); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}

func (v *VM) start(ctx context.Context, bin string, opts Options) error {
	dir := v.Dir
	if !opts.NoExporterMonitor {
		v.ExporterSocket = opts.ExporterSocket
		if v.ExporterSocket == "" {
			v.ExporterSocket = filepath.Join(dir, "exporter.qmp")
		}
		if len(v.ExporterSocket) > maxSocketPath {
			return fmt.Errorf("qemulab: exporter socket path longer than %d bytes: %s", maxSocketPath, v.ExporterSocket)
		}
	}
	if opts.VNC {
		v.VNCSocket = filepath.Join(dir, "vnc.sock")
	}
	if opts.SPICE {
		v.SPICESocket = filepath.Join(dir, "spice.sock")
	}
	ctlPath, qtestPath := filepath.Join(dir, "ctl.sock"), filepath.Join(dir, "qtest.sock")
	for _, p := range []string{v.ExporterSocket, v.VNCSocket, v.SPICESocket, ctlPath, qtestPath} {
		if err := removeStaleSocket(p); err != nil {
			return err
		}
	}
	if err := writeLabFiles(dir, opts.Devices); err != nil {
		return err
	}
	if opts.FaultyDisk != nil {
		if err := os.WriteFile(filepath.Join(dir, faultyDiskFile), make([]byte, faultyDiskSize), 0o644); err != nil {
			return fmt.Errorf("qemulab: faulty disk image: %w", err)
		}
	}

	lnCtl, err := net.Listen("unix", ctlPath)
	if err != nil {
		return fmt.Errorf("qemulab: %w", err)
	}
	defer lnCtl.Close()
	lnQTest, err := net.Listen("unix", qtestPath)
	if err != nil {
		return fmt.Errorf("qemulab: %w", err)
	}
	defer lnQTest.Close()

	// sctx also ends when QEMU exits, which aborts the accepts and the
	// handshake at once instead of waiting for ctx.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()

	v.cmd = exec.Command(bin, v.args(opts, ctlPath, qtestPath)...)
	v.cmd.Dir = dir
	v.cmd.Stdout = v.out
	v.cmd.Stderr = v.out
	v.cmd.SysProcAttr = sysProcAttr()
	v.cmd.WaitDelay = 5 * time.Second // bounds the output copy after exit
	if err := v.cmd.Start(); err != nil {
		v.cmd = nil
		return fmt.Errorf("qemulab: %w", err)
	}
	v.Pid = v.cmd.Process.Pid
	go func() {
		v.waitErr = v.cmd.Wait()
		close(v.exited)
		cancel()
	}()

	ctlConn, err := accept(sctx, lnCtl.(*net.UnixListener))
	if err != nil {
		return v.startErr("control monitor", err)
	}
	qtConn, err := accept(sctx, lnQTest.(*net.UnixListener))
	if err != nil {
		ctlConn.Close()
		return v.startErr("qtest", err)
	}
	v.QTest = newQTest(qtConn)
	if v.Ctl, err = NewMonitor(sctx, ctlConn, MonitorOptions{}); err != nil {
		return v.startErr("control monitor", err)
	}
	if v.version, err = greetingVersion(v.Ctl.Greeting()); err != nil {
		return err
	}
	if v.ExporterSocket != "" {
		if err := waitSocket(sctx, v.ExporterSocket); err != nil {
			return v.startErr("exporter socket", err)
		}
	}
	return nil
}

// startErr describes a startup failure, with QEMU's exit status if it has
// already exited, and the tail of its output.
func (v *VM) startErr(what string, err error) error {
	select {
	case <-v.exited:
		err = fmt.Errorf("qemu exited (%v): %w", v.waitErr, err)
	default:
	}
	return fmt.Errorf("qemulab: start: %s: %w\nqemu output:\n%s", what, err, v.out)
}

func (v *VM) args(opts Options, ctlPath, qtestPath string) []string {
	a := []string{}
	if opts.Name != "" {
		a = append(a, "-name", qemuOpt(opts.Name))
	}
	if opts.UUID != "" {
		a = append(a, "-uuid", opts.UUID)
	}
	a = append(a,
		"-machine", "q35", "-accel", "tcg",
		"-bios", filepath.Join(v.Dir, "halt.bin"),
		"-m", "128M", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-shutdown",
	)
	if opts.Paused {
		a = append(a, "-S")
	}
	a = append(a,
		"-qtest", "unix:"+qemuOpt(qtestPath),
		"-chardev", "socket,id=ctl,path="+qemuOpt(ctlPath),
		"-mon", "chardev=ctl,mode=control",
	)
	if v.ExporterSocket != "" {
		a = append(a,
			"-chardev", "socket,id=exp,path="+qemuOpt(v.ExporterSocket)+",server=on,wait=off",
			"-mon", "chardev=exp,mode=control",
		)
	}
	if opts.Devices {
		cd1, _ := json.Marshal(map[string]any{
			"driver": "raw", "node-name": CDROMAnonNode, "read-only": true,
			"file": map[string]any{"driver": "file", "read-only": true, "filename": filepath.Join(v.Dir, "cd1.iso")},
		})
		a = append(a,
			"-device", "pvpanic",
			"-device", "ib700",
			"-device", "qemu-xhci,id=xhci",
			"-drive", "if=none,id="+CDROMNamedDrive+",media=cdrom,format=raw,readonly=on,file="+qemuOpt(filepath.Join(v.Dir, "cd0.iso")),
			"-device", "ide-cd,bus=ide.0,drive="+CDROMNamedDrive+",id="+CDROMNamedID,
			"-blockdev", string(cd1),
			"-device", "ide-cd,bus=ide.1,drive="+CDROMAnonNode+",id="+CDROMAnonID,
			"-drive", "if=none,id="+CDROMNoIDDrive+",media=cdrom,format=raw,readonly=on,file="+qemuOpt(filepath.Join(v.Dir, "cd2.iso")),
			"-device", "ide-cd,bus=ide.2,drive="+CDROMNoIDDrive,
		)
	}
	if v.VNCSocket != "" {
		a = append(a, "-vnc", "unix:"+qemuOpt(v.VNCSocket))
	}
	if v.SPICESocket != "" {
		a = append(a, "-spice", "unix=on,addr="+qemuOpt(v.SPICESocket)+",disable-ticketing=on")
	}
	if opts.Balloon {
		a = append(a, "-device", balloonDevice)
	}
	if opts.FaultyDisk != nil {
		a = append(a, opts.FaultyDisk.args(v.Dir)...)
	}
	var actions []string
	if opts.PanicAction != "" {
		actions = append(actions, "panic="+qemuOpt(opts.PanicAction))
	}
	if opts.ShutdownAction != "" {
		actions = append(actions, "shutdown="+qemuOpt(opts.ShutdownAction))
	}
	if opts.WatchdogAction != "" {
		actions = append(actions, "watchdog="+qemuOpt(opts.WatchdogAction))
	}
	if len(actions) > 0 {
		a = append(a, "-action", strings.Join(actions, ","))
	}
	return append(a, opts.ExtraArgs...)
}

// qemuOpt escapes a value for QEMU's "key=value,..." option syntax.
func qemuOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// writeLabFiles writes the halting firmware and, with devices, the CD-ROM
// images into dir.
func writeLabFiles(dir string, devices bool) error {
	// 64 KiB BIOS image mapped just below 4 GiB; the reset vector is at
	// offset 0xFFF0: cli; hlt; jmp short back to the hlt.
	bios := make([]byte, 64<<10)
	copy(bios[0xFFF0:], []byte{0xFA, 0xF4, 0xEB, 0xFD})
	if err := os.WriteFile(filepath.Join(dir, "halt.bin"), bios, 0o644); err != nil {
		return fmt.Errorf("qemulab: firmware: %w", err)
	}
	if devices {
		iso := make([]byte, 16*2048) // 16 empty CD sectors
		for _, name := range []string{"cd0.iso", "cd1.iso", "cd2.iso"} {
			if err := os.WriteFile(filepath.Join(dir, name), iso, 0o644); err != nil {
				return fmt.Errorf("qemulab: cd-rom image: %w", err)
			}
		}
	}
	return nil
}

func accept(ctx context.Context, ln *net.UnixListener) (net.Conn, error) {
	release := bound(ctx, ln.SetDeadline)
	defer release()
	c, err := ln.Accept()
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	return c, nil
}

// waitSocket polls until path exists and is a socket.
func waitSocket(ctx context.Context, path string) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%s never appeared: %w", path, ctx.Err())
		}
	}
}

// Exited returns a channel that is closed once the QEMU process has exited
// and been reaped.
func (v *VM) Exited() <-chan struct{} { return v.exited }

// ExitErr returns the result of waiting for QEMU (nil for exit status 0)
// once Exited is closed, and nil before.
func (v *VM) ExitErr() error {
	select {
	case <-v.exited:
		return v.waitErr
	default:
		return nil
	}
}

// Output returns the last few KiB of QEMU's stdout and stderr.
func (v *VM) Output() string { return v.out.String() }

// kill sends SIGKILL unless QEMU has already exited, and waits until it has.
func (v *VM) kill() error {
	if v.cmd == nil {
		return nil
	}
	select {
	case <-v.exited:
		return nil
	default:
	}
	if err := v.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("qemulab: kill: %w", err)
	}
	t := time.NewTimer(killTimeout)
	defer t.Stop()
	select {
	case <-v.exited:
		return nil
	case <-t.C:
		return fmt.Errorf("qemulab: qemu pid %d still running %v after SIGKILL", v.Pid, killTimeout)
	}
}

func (v *VM) closeConns() {
	if v.Ctl != nil {
		v.Ctl.Close()
	}
	if v.QTest != nil {
		v.QTest.Close()
	}
}

// Kill sends SIGKILL to QEMU, waits for it to exit and closes Ctl and QTest.
// Like a real crash, it leaves the exporter socket file behind (connecting
// to it is refused). Kill is a no-op on an exited VM.
func (v *VM) Kill() error {
	err := v.kill()
	v.closeConns()
	return err
}

// Quit sends quit on Ctl, waits for its return (QEMU may drop a quit whose
// client hangs up at once), then for QEMU to exit; QEMU emits SHUTDOWN
// {"guest": false, "reason": "host-qmp-quit"} and removes the exporter
// socket. It closes Ctl and QTest and returns QEMU's exit error, if any.
func (v *VM) Quit(ctx context.Context) error {
	if _, err := v.Ctl.Execute(ctx, "quit", nil); err != nil && !errors.Is(err, ErrClosed) {
		return err
	}
	select {
	case <-v.exited:
	case <-ctx.Done():
		return fmt.Errorf("qemulab: quit: qemu still running: %w", ctx.Err())
	}
	v.closeConns()
	if v.waitErr != nil {
		return fmt.Errorf("qemulab: quit: %w", v.waitErr)
	}
	return nil
}

// Close kills QEMU if it still runs, closes every connection and removes
// the short directory Start made, if any. It is idempotent and safe after
// Kill or Quit; it returns the first error of its first call.
func (v *VM) Close() error {
	v.closeOnce.Do(func() {
		err := v.kill()
		v.closeConns()
		if v.tmpDir != "" {
			err = errors.Join(err, os.RemoveAll(v.tmpDir))
		}
		v.closeErr = err
	})
	return v.closeErr
}

// Panic makes the guest report a panic through pvpanic (needs Devices): QEMU
// emits GUEST_PANICKED {"action": "pause"} (with -no-shutdown), then STOP.
func (v *VM) Panic(ctx context.Context) error {
	return v.QTest.Outb(ctx, pvpanicPort, pvpanicPanicked)
}

// CrashLoaded makes the guest report a loaded crash kernel through pvpanic
// (needs Devices): QEMU emits GUEST_CRASHLOADED {"action": "run"}.
func (v *VM) CrashLoaded(ctx context.Context) error {
	return v.QTest.Outb(ctx, pvpanicPort, pvpanicCrash)
}

// PVShutdown makes the guest ask for a shutdown through pvpanic (needs
// Devices), as Linux does on power-off when the device offers it (reading
// its port gives 0x7 instead of 7.2's 0x3). QEMU 9.1 and later emit
// GUEST_PVSHUTDOWN, with no data, then SHUTDOWN {"guest": true, "reason":
// "guest-shutdown"} and, with -no-shutdown, STOP: the VM is left in
// "shutdown". QEMU 7.2 ignores the write and emits nothing.
func (v *VM) PVShutdown(ctx context.Context) error {
	return v.QTest.Outb(ctx, pvpanicPort, pvpanicShutdown)
}

// FireWatchdog arms the ib700 watchdog with a 0 s timeout (needs Devices),
// so it fires at once: QEMU emits WATCHDOG {"action": "reset"}, then RESET
// {"guest": true, "reason": "guest-reset"} (QEMU 7.2 reports the watchdog's
// reset as a guest reset). WATCHDOG is rate-limited by QEMU to one per
// second, so a second WATCHDOG within a second is delayed. With
// Options.WatchdogAction "poweroff", QEMU emits WATCHDOG {"action":
// "poweroff"} and exits (status 0) without another event.
func (v *VM) FireWatchdog(ctx context.Context) error {
	return v.QTest.Outb(ctx, ib700TimerPort, ib700Timeout0s)
}

// GuestReset resets the machine the way a guest does, through the reset
// control register: QEMU emits RESET {"guest": true, "reason": "guest-reset"}.
func (v *VM) GuestReset(ctx context.Context) error {
	return v.QTest.Outb(ctx, resetCtlPort, resetCtlHard)
}

// QdevOfDrive returns the "qdev" field of query-block for the BlockBackend
// named drive: the device's qdev id, or its QOM path when it has no id (as
// for CDROMNoIDDrive).
func (v *VM) QdevOfDrive(ctx context.Context, drive string) (string, error) {
	raw, err := v.Ctl.Execute(ctx, "query-block", nil)
	if err != nil {
		return "", err
	}
	var blocks []struct {
		Device string `json:"device"`
		Qdev   string `json:"qdev"`
	}
	if err := json.Unmarshal(raw, &blocks); err != nil {
		return "", fmt.Errorf("qemulab: query-block: %w", err)
	}
	for _, b := range blocks {
		if b.Device == drive {
			return b.Qdev, nil
		}
	}
	return "", fmt.Errorf("qemulab: query-block: no drive %q", drive)
}

// removeStaleSocket removes a socket file left by an earlier run. It refuses
// to remove anything that is not a socket.
func removeStaleSocket(path string) error {
	if path == "" {
		return nil
	}
	if err := sockfile.RemoveStale(path); err != nil {
		return fmt.Errorf("qemulab: remove stale socket: %w", err)
	}
	return nil
}
