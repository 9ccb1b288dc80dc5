package virtlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/citool"
	"github.com/qmp-exporter/qmp_exporter/internal/sockfile"
)

// Machine-wide paths of a privileged libvirt. They are compiled into
// libvirt; no option moves them.
const (
	// LockPath is the file whose flock serializes the Daemons of every
	// process on the machine (see the package documentation).
	LockPath = "/run/virtlab.lock"
	// SystemSocket is the read-write socket of a libvirtd that uses the
	// default socket directory. Start refuses to run while it accepts.
	SystemSocket = "/run/libvirt/libvirt-sock"
	// VirtlogdSocket is virtlogd's socket, which the QEMU driver dials to
	// hand over each domain's stdout and stderr.
	VirtlogdSocket = "/run/libvirt/virtlogd-sock"
	// DomainLogDir holds one log per domain, NAME.log, written by virtlogd.
	DomainLogDir = "/var/log/libvirt/qemu"
)

// maxSocketPath is the longest unix socket path the kernel accepts: sun_path
// is 108 bytes including the terminating NUL.
const maxSocketPath = 107

// outputTail is how much of the daemons' output Output returns.
const outputTail = 16 << 10

// Timeouts of the steps that take no context.
const (
	// killTimeout bounds the wait for a SIGKILLed daemon to be reaped.
	killTimeout = 30 * time.Second
	// closeTimeout bounds all of Close.
	closeTimeout = 2 * time.Minute
	// startTimeoutT bounds StartT's Start. Most of it is for the lock: the
	// tests of several packages (go test ./... runs them in parallel)
	// take turns.
	startTimeoutT = 5 * time.Minute
)

// pollInterval is how often the waits for a socket or a lock retry.
const pollInterval = 50 * time.Millisecond

// Tools are the libvirt programs a Daemon runs.
type Tools struct {
	Libvirtd string // the monolithic daemon (Debian 12 has no virtqemud)
	Virtlogd string // the log daemon the QEMU driver hands domain output to
	Virsh    string // the command-line client
}

// FindTools looks up libvirtd, virtlogd and virsh in $PATH, then in
// /usr/sbin and /usr/bin (a non-login root shell may lack /usr/sbin). It
// fails unless it runs as root on Linux: a Daemon is a privileged
// (qemu:///system) libvirtd.
func FindTools() (Tools, error) {
	if runtime.GOOS != "linux" {
		return Tools{}, errors.New("virtlab: libvirtd runs on Linux only")
	}
	if os.Geteuid() != 0 {
		return Tools{}, errors.New("virtlab: must run as root (a privileged libvirtd, qemu:///system)")
	}
	var t Tools
	var errs []error
	for _, f := range []struct {
		dst  *string
		name string
	}{{&t.Libvirtd, "libvirtd"}, {&t.Virtlogd, "virtlogd"}, {&t.Virsh, "virsh"}} {
		p, err := lookPath(f.name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		*f.dst = p
	}
	if len(errs) > 0 {
		return Tools{}, fmt.Errorf("virtlab: %w (install Debian's libvirt-daemon-system, libvirt-daemon-driver-qemu and libvirt-clients)", errors.Join(errs...))
	}
	return t, nil
}

func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is missing", name)
}

// TB is the part of testing.TB that Require uses.
type TB = citool.TB

// Require returns the libvirt tools for a test. When one is missing, or the
// test does not run as root, the test is skipped, except when the
// environment variable CI is "true": there it fails instead of silently
// skipping the end-to-end tests.
func Require(t TB) Tools {
	t.Helper()
	var tools Tools
	citool.Require(t, func() (string, error) {
		var err error
		tools, err = FindTools()
		return tools.Libvirtd, err
	})
	return tools
}

// Options configures Start. The zero value is ready to use.
type Options struct {
	// Tools are the programs to run; the zero value means FindTools.
	Tools Tools
	// TempDir is where Start creates the Daemon's directory; empty means
	// os.TempDir(). Every directory above it must be searchable by others
	// (o+x), because QEMU, running as libvirt-qemu, opens the CD-ROM media
	// there; a t.TempDir() (mode 0700) is not.
	TempDir string
}

// Daemon is a private libvirtd with a socket directory, configuration, pid
// files and media of its own, and the virtlogd it needs. Create it with
// Start or StartT; call Close when done.
type Daemon struct {
	tools    Tools
	dir      string // the Daemon's directory, removed by Close
	runDir   string // unix_sock_dir
	mediaDir string // world-readable CD-ROM images
	conf     string // libvirtd.conf
	outPath  string // libvirtd's and virtlogd's stdout and stderr
	out      *os.File
	lock     *os.File

	mu       sync.Mutex
	libvirtd *proc     // nil while stopped
	virtlogd *proc     // nil if an already running virtlogd is shared
	domains  []*Domain // defined by Define, removed by Close
	peer     *Peer     // started by StartPeer, closed by Close
	mounts   []string  // the full disks' tmpfs mounts, unmounted by Close
	closed   bool
	lastOut  string // the output's tail, kept when Close removes the file

	closeOnce sync.Once
	closeErr  error
}

// Start starts a private libvirtd (and virtlogd, unless one already runs) in
// a new directory under opts.TempDir, and returns once its read-only socket
// accepts and `virsh version` answers on the read-write one.
//
// It first takes the machine-wide lock LockPath, waiting for it as long as
// ctx allows: only one Daemon may run on a machine at a time (see the
// package documentation). It refuses to run beside a libvirtd that uses the
// default socket directory. It destroys and undefines domains whose names
// start with NamePrefix, left behind by a test run that crashed, and
// unmounts the tmpfs mounts of such a run's full disks.
//
// Everything is bounded by ctx; the daemons live until Close. On failure
// everything started is stopped, and the error includes the daemons'
// output.
func Start(ctx context.Context, opts Options) (*Daemon, error) {
	tools := opts.Tools
	if tools == (Tools{}) {
		var err error
		if tools, err = FindTools(); err != nil {
			return nil, err
		}
	}
	parent := opts.TempDir
	if parent == "" {
		parent = os.TempDir()
	}
	parent, err := filepath.Abs(parent)
	if err != nil {
		return nil, fmt.Errorf("virtlab: %w", err)
	}
	if err := checkSearchable(parent); err != nil {
		return nil, err
	}
	d := &Daemon{tools: tools}
	if err := d.start(ctx, parent); err != nil {
		if cerr := d.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, err
	}
	return d, nil
}

func (d *Daemon) start(ctx context.Context, parent string) error {
	if err := d.acquireLock(ctx); err != nil {
		return err
	}
	if accepts(ctx, SystemSocket) {
		return fmt.Errorf("virtlab: a libvirtd already listens on %s; a private one cannot run beside it (they share /run/libvirt)", SystemSocket)
	}
	dir, err := os.MkdirTemp(parent, "virtlab")
	if err != nil {
		return fmt.Errorf("virtlab: %w", err)
	}
	d.dir = dir
	d.runDir = filepath.Join(dir, "run")
	d.mediaDir = filepath.Join(dir, "media")
	d.conf = filepath.Join(dir, "libvirtd.conf")
	d.outPath = filepath.Join(dir, "daemons.log")
	if !safePath.MatchString(d.SocketRW()) {
		return fmt.Errorf("virtlab: socket path %q has characters that would need escaping in a libvirt URI", d.SocketRW())
	}
	if n := len(filepath.Join(d.runDir, "libvirt-admin-sock")); n > maxSocketPath {
		return fmt.Errorf("virtlab: socket paths under %s are longer than %d bytes; set Options.TempDir to a shorter directory", d.runDir, maxSocketPath)
	}
	// The Daemon's directory and media must be readable by libvirt-qemu.
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("virtlab: %w", err)
	}
	for _, sub := range []string{d.runDir, d.mediaDir, filepath.Join(dir, "domains")} {
		if err := os.Mkdir(sub, 0o755); err != nil {
			return fmt.Errorf("virtlab: %w", err)
		}
	}
	if err := os.WriteFile(d.conf, []byte(d.config()), 0o644); err != nil {
		return fmt.Errorf("virtlab: %w", err)
	}
	if _, err := d.NewMedia(defaultMedia); err != nil {
		return err
	}
	if d.out, err = os.OpenFile(d.outPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err != nil {
		return fmt.Errorf("virtlab: %w", err)
	}
	if err := d.startVirtlogd(ctx); err != nil {
		return err
	}
	if err := d.StartLibvirtd(ctx); err != nil {
		return err
	}
	if err := d.removeStale(ctx); err != nil {
		return err
	}
	if err := killOrphanGuests(); err != nil {
		return err
	}
	return unmountLeftovers()
}

// safePath matches paths that need no escaping in a libvirt URI.
var safePath = regexp.MustCompile(`^[A-Za-z0-9/._+-]+$`)

// checkSearchable fails if dir or a directory above it is not searchable
// by others.
func checkSearchable(dir string) error {
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("virtlab: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("virtlab: %s (mode %v) is not searchable by others, so QEMU (user libvirt-qemu) could not open media under %s; use another Options.TempDir", p, fi.Mode().Perm(), dir)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// config renders the private libvirtd.conf. Everything not set here keeps
// libvirt's default (and the QEMU driver still reads the machine's
// /etc/libvirt/qemu.conf: no option moves it).
func (d *Daemon) config() string {
	return fmt.Sprintf(`# Written by internal/virtlab for a private libvirtd.
# The sockets live in the Daemon's directory, not /run/libvirt.
unix_sock_dir = %q
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
# No polkit (no D-Bus here): root reaches the read-write socket unasked.
auth_unix_ro = "none"
auth_unix_rw = "none"
# Only the unix sockets; these matter only with --listen, never passed.
listen_tls = 0
listen_tcp = 0
# Warnings and errors to stderr, which Start collects in daemons.log.
log_outputs = "3:stderr"
audit_level = 0
`, d.runDir)
}

// acquireLock waits, bounded by ctx, for the flock on LockPath.
func (d *Daemon) acquireLock(ctx context.Context) error {
	f, err := os.OpenFile(LockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("virtlab: lock: %w", err)
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		ok, err := tryLock(f)
		if err != nil {
			f.Close()
			return fmt.Errorf("virtlab: lock %s: %w", LockPath, err)
		}
		if ok {
			d.lock = f
			return d.endLeftovers(ctx)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			f.Close()
			return fmt.Errorf("virtlab: another Daemon (in this or another process) still holds %s; only one may run per machine: %w", LockPath, ctx.Err())
		}
	}
}

// recordPids writes the pids of the daemons the Daemon runs into the lock
// file, for endLeftovers.
func (d *Daemon) recordPids() error {
	d.mu.Lock()
	var b strings.Builder
	for _, p := range []*proc{d.libvirtd, d.virtlogd} {
		if p != nil && p.running() {
			fmt.Fprintf(&b, "%s %d\n", p.name, p.cmd.Process.Pid)
		}
	}
	d.mu.Unlock()
	if err := d.lock.Truncate(0); err != nil {
		return fmt.Errorf("virtlab: lock file: %w", err)
	}
	if _, err := d.lock.WriteAt([]byte(b.String()), 0); err != nil {
		return fmt.Errorf("virtlab: lock file: %w", err)
	}
	return nil
}

// endLeftovers makes sure the daemons of the lock's previous holder are
// gone. A holder that exited without Close released the lock at once, but
// its daemons die of their parent-death signal a moment later, and one
// still holding libvirt's state in /run/libvirt would make our libvirtd
// fail. A recorded process that still runs under its recorded name (not a
// reused pid) is killed, then waited for, bounded by ctx.
func (d *Daemon) endLeftovers(ctx context.Context) error {
	b, err := io.ReadAll(io.NewSectionReader(d.lock, 0, 1<<12))
	if err != nil {
		return fmt.Errorf("virtlab: lock file: %w", err)
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for _, line := range strings.Split(string(b), "\n") {
		var name string
		var pid int
		if _, err := fmt.Sscanf(line, "%s %d", &name, &pid); err != nil || pid <= 0 {
			continue
		}
		for processAlive(pid, name) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			select {
			case <-tick.C:
			case <-ctx.Done():
				return fmt.Errorf("virtlab: %s (pid %d), left by an earlier Daemon, still runs: %w", name, pid, ctx.Err())
			}
		}
	}
	return nil
}

// processAlive reports whether pid runs (and is not a zombie) with the
// command name comm.
func processAlive(pid int, comm string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) state ..."; comm may hold spaces and parentheses.
	s := string(b)
	i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if i < 0 || j < i || j+2 >= len(s) {
		return false
	}
	return s[i+1:j] == comm && s[j+2] != 'Z'
}

// accepts reports whether a unix socket at path accepts a connection.
func accepts(ctx context.Context, path string) bool {
	var dl net.Dialer
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := dl.DialContext(ctx, "unix", path)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// proc is a daemon started in the foreground as a child.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd.Wait has returned
	err    error         // cmd.Wait's result; read after exited is closed
}

func (d *Daemon) startProc(name, bin string, args ...string) (*proc, error) {
	p := &proc{name: name, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = d.dir
	p.cmd.Stdout = d.out
	p.cmd.Stderr = d.out
	p.cmd.SysProcAttr = sysProcAttr()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("virtlab: start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends sig and waits for the process to exit, bounded by ctx; then it
// kills it and waits up to killTimeout.
func (p *proc) stop(ctx context.Context, sig syscall.Signal) error {
	if !p.running() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("virtlab: signal %s: %w", p.name, err)
	}
	select {
	case <-p.exited:
		return nil
	case <-ctx.Done():
	}
	_ = p.cmd.Process.Kill()
	t := time.NewTimer(killTimeout)
	defer t.Stop()
	select {
	case <-p.exited:
		return fmt.Errorf("virtlab: %s did not exit on %v (%w); killed", p.name, sig, ctx.Err())
	case <-t.C:
		return fmt.Errorf("virtlab: %s (pid %d) still running %v after SIGKILL", p.name, p.cmd.Process.Pid, killTimeout)
	}
}

// startVirtlogd shares a virtlogd that already answers on VirtlogdSocket,
// or starts one and waits for its socket.
func (d *Daemon) startVirtlogd(ctx context.Context) error {
	if accepts(ctx, VirtlogdSocket) {
		return nil
	}
	p, err := d.startProc("virtlogd", d.tools.Virtlogd, "--pid-file", filepath.Join(d.dir, "virtlogd.pid"))
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.virtlogd = p
	d.mu.Unlock()
	if err := d.recordPids(); err != nil {
		return err
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for !accepts(ctx, VirtlogdSocket) {
		select {
		case <-p.exited:
			return fmt.Errorf("virtlab: virtlogd exited (%v) before %s accepted\n%s", p.err, VirtlogdSocket, d.outputHint())
		case <-ctx.Done():
			return fmt.Errorf("virtlab: %s never accepted: %w\n%s", VirtlogdSocket, ctx.Err(), d.outputHint())
		case <-tick.C:
		}
	}
	return nil
}

// StartLibvirtd starts libvirtd with the Daemon's configuration (after
// StopLibvirtd or KillLibvirtd) and waits, bounded by ctx, until it is
// ready: the read-only socket accepts and `virsh version` answers. libvirtd
// reconnects to the domains that kept running meanwhile. It fails if
// libvirtd already runs.
func (d *Daemon) StartLibvirtd(ctx context.Context) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return errors.New("virtlab: Daemon is closed")
	}
	if d.libvirtd != nil && d.libvirtd.running() {
		d.mu.Unlock()
		return errors.New("virtlab: libvirtd is already running")
	}
	// Sockets left by a killed libvirtd; the directory is the Daemon's own.
	for _, s := range []string{d.SocketRO(), d.SocketRW(), filepath.Join(d.runDir, "libvirt-admin-sock")} {
		if err := sockfile.RemoveStale(s); err != nil {
			d.mu.Unlock()
			return fmt.Errorf("virtlab: %w", err)
		}
	}
	p, err := d.startProc("libvirtd", d.tools.Libvirtd, "--config", d.conf, "--pid-file", filepath.Join(d.dir, "libvirtd.pid"))
	if err != nil {
		d.mu.Unlock()
		return err
	}
	d.libvirtd = p
	d.mu.Unlock()
	if err := d.recordPids(); err != nil {
		return err
	}

	// wctx also ends when libvirtd exits, which aborts a virsh call that
	// waits for a daemon that is gone.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.exited:
			cancel()
		case <-wctx.Done():
		}
	}()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var lastErr error
	for {
		if accepts(wctx, d.SocketRO()) {
			// libvirtd accepts connections while its drivers initialize
			// (the QEMU driver probes QEMU's capabilities on a first
			// start, a few seconds); virsh waits for the answer.
			if _, lastErr = d.Virsh(wctx, "version"); lastErr == nil {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("virtlab: libvirtd exited (%v) before it was ready\n%s", p.err, d.outputHint())
		case <-ctx.Done():
			return fmt.Errorf("virtlab: libvirtd not ready: %w (last virsh error: %v)\n%s", ctx.Err(), lastErr, d.outputHint())
		case <-tick.C:
		}
	}
}

// StopLibvirtd stops libvirtd with SIGTERM and waits, bounded by ctx (then
// it is killed), until it has exited. The domains keep running: their QEMU
// processes are not libvirtd's children. libvirtd removes its sockets on
// the way out, so clients get ENOENT until StartLibvirtd; connected clients
// see the connection end (virsh: "Disconnected ... due to end of file").
func (d *Daemon) StopLibvirtd(ctx context.Context) error {
	return d.stopLibvirtd(ctx, syscall.SIGTERM)
}

// KillLibvirtd kills libvirtd with SIGKILL, as a crash would, and waits
// until it has been reaped. Its socket files stay behind (connecting to
// them is refused) until StartLibvirtd removes them. The domains keep
// running.
func (d *Daemon) KillLibvirtd(ctx context.Context) error {
	return d.stopLibvirtd(ctx, syscall.SIGKILL)
}

func (d *Daemon) stopLibvirtd(ctx context.Context, sig syscall.Signal) error {
	d.mu.Lock()
	p := d.libvirtd
	d.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.stop(ctx, sig)
}

// Restart stops libvirtd (SIGTERM) and starts it again with the same
// configuration, bounded by ctx. The domains keep running throughout and
// the new libvirtd reconnects to them.
func (d *Daemon) Restart(ctx context.Context) error {
	if err := d.StopLibvirtd(ctx); err != nil {
		return err
	}
	return d.StartLibvirtd(ctx)
}

// LibvirtdPid returns the pid of the running libvirtd, or 0 while it is
// stopped.
func (d *Daemon) LibvirtdPid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.libvirtd == nil || !d.libvirtd.running() {
		return 0
	}
	return d.libvirtd.cmd.Process.Pid
}

// Dir returns the Daemon's directory: libvirtd.conf, the pid files,
// daemons.log, run/ (the sockets), media/ (CD-ROM and guest images),
// domains/ (the XML given to virsh define) and full/NAME (the tmpfs mount
// of a domain's full disk). Close removes it.
func (d *Daemon) Dir() string { return d.dir }

// SocketRO returns the path of libvirtd's read-only socket, open to every
// user (mode 0777), as a monitoring client uses it.
func (d *Daemon) SocketRO() string { return filepath.Join(d.runDir, "libvirt-sock-ro") }

// SocketRW returns the path of libvirtd's read-write socket (mode 0700,
// root only).
func (d *Daemon) SocketRW() string { return filepath.Join(d.runDir, "libvirt-sock") }

// URI returns the libvirt URI of the read-write socket,
// qemu:///system?socket=<SocketRW>.
func (d *Daemon) URI() string { return "qemu:///system?socket=" + d.SocketRW() }

// ReadOnlyURI returns the libvirt URI of the read-only socket; virsh needs
// -r (--readonly) with it.
func (d *Daemon) ReadOnlyURI() string { return "qemu:///system?socket=" + d.SocketRO() }

// Virsh runs virsh against the read-write socket, bounded by ctx, and
// returns its standard output with surrounding white space trimmed. virsh
// runs with LC_ALL=C, so its output is the untranslated text. A failure's
// error includes virsh's standard error and output.
func (d *Daemon) Virsh(ctx context.Context, args ...string) (string, error) {
	return d.virsh(ctx, append([]string{"-c", d.URI()}, args...)...)
}

// VirshReadOnly is Virsh against the read-only socket (virsh -r): commands
// that change anything fail with "operation forbidden".
func (d *Daemon) VirshReadOnly(ctx context.Context, args ...string) (string, error) {
	return d.virsh(ctx, append([]string{"-r", "-c", d.ReadOnlyURI()}, args...)...)
}

func (d *Daemon) virsh(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, d.tools.Virsh, args...)
	cmd.Env = virshEnv()
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return "", fmt.Errorf("virtlab: virsh %s: %w\n%s%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return strings.TrimSpace(stdout.String()), nil
}

// virshEnv is the environment without the variables that pick a default
// URI, and with untranslated messages.
func virshEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "LIBVIRT_DEFAULT_URI", "VIRSH_DEFAULT_CONNECT_URI", "LC_ALL", "LANG", "LANGUAGE":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

// Output returns the last few KiB of the output of libvirtd (every start of
// it) and of virtlogd, if the Daemon started one. libvirtd logs warnings and
// errors there; a few errors at every start are normal on a machine without
// KVM, D-Bus, dnsmasq or /dev/mem (see the package documentation). It still
// works after Close.
func (d *Daemon) Output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return d.lastOut
	}
	return d.readOutput()
}

func (d *Daemon) readOutput() string {
	if d.outPath == "" {
		return ""
	}
	f, err := os.Open(d.outPath)
	if err != nil {
		return fmt.Sprintf("(output unavailable: %v)", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > outputTail {
		if _, err := f.Seek(fi.Size()-outputTail, io.SeekStart); err != nil {
			return fmt.Sprintf("(output unavailable: %v)", err)
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(output unavailable: %v)", err)
	}
	return string(b)
}

// outputHint returns the output for an error message, with a hint when
// libvirtd failed because another libvirtd holds the machine-wide state.
func (d *Daemon) outputHint() string {
	out := d.Output()
	s := "libvirtd/virtlogd output:\n" + out
	if strings.Contains(out, "Failed to acquire pid file") {
		s += "\n(another libvirtd holds the driver state in /run/libvirt: stop it; only one libvirtd may run per machine)"
	}
	return s
}

// Close destroys and undefines the domains Define made (starting libvirtd
// again for that if it is stopped), stops libvirtd and the virtlogd it
// started (SIGTERM, then SIGKILL), removes the domains' logs, unmounts the
// full disks' tmpfs mounts, removes the Daemon's directory, and releases
// the machine-wide lock. It is idempotent and returns the first error of
// its first call. Output keeps working.
func (d *Daemon) Close() error {
	d.closeOnce.Do(func() { d.closeErr = d.close() })
	return d.closeErr
}

func (d *Daemon) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	var errs []error
	d.mu.Lock()
	domains := d.domains
	p, peer := d.libvirtd, d.peer
	d.mu.Unlock()
	if peer != nil {
		if err := peer.close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("virtlab: close: %w", err))
		}
	}
	if len(domains) > 0 {
		if p == nil || !p.running() {
			if err := d.StartLibvirtd(ctx); err != nil {
				errs = append(errs, fmt.Errorf("virtlab: close: restart libvirtd to remove the domains: %w", err))
			}
		}
		if d.LibvirtdPid() != 0 {
			for i := len(domains) - 1; i >= 0; i-- {
				if err := d.removeDomain(ctx, domains[i].name); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	d.mu.Lock()
	d.closed = true
	lv, lg := d.libvirtd, d.virtlogd
	d.mu.Unlock()
	if lv != nil {
		if err := lv.stop(ctx, syscall.SIGTERM); err != nil {
			errs = append(errs, err)
		}
	}
	// virtlogd goes last: QEMU's stdout and stderr are pipes to it.
	if lg != nil {
		if err := lg.stop(ctx, syscall.SIGTERM); err != nil {
			errs = append(errs, err)
		}
	}
	for _, x := range domains {
		if err := os.Remove(x.LogPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("virtlab: close: %w", err))
		}
	}
	// Before RemoveAll, which must not descend into a mounted tmpfs.
	if err := d.unmountAll(); err != nil {
		errs = append(errs, fmt.Errorf("virtlab: close: %w", err))
	}
	d.mu.Lock()
	d.lastOut = d.readOutput()
	d.mu.Unlock()
	if d.out != nil {
		d.out.Close()
	}
	if d.dir != "" {
		if err := os.RemoveAll(d.dir); err != nil {
			errs = append(errs, fmt.Errorf("virtlab: close: %w", err))
		}
	}
	if d.lock != nil {
		// Every daemon has exited (or Close failed above): no leftovers.
		if len(errs) == 0 {
			_ = d.lock.Truncate(0)
		}
		d.lock.Close() // releases the flock
	}
	return errors.Join(errs...)
}

// StartT starts a Daemon for a test, bounded by the test's context and five
// minutes, most of which is for waiting for the machine-wide lock while
// the tests of other packages use their Daemons. It calls Require when
// opts.Tools is zero (skipping or, under CI=true, failing the test when
// libvirt is missing), fails the test if Start fails, and registers a
// cleanup that logs the daemons' output and every domain's log if the test
// failed, then closes the Daemon.
func StartT(t testing.TB, opts Options) *Daemon {
	t.Helper()
	if opts.Tools == (Tools{}) {
		opts.Tools = Require(t)
	}
	ctx, cancel := context.WithTimeout(t.Context(), startTimeoutT)
	defer cancel()
	d, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("libvirtd/virtlogd output:\n%s", d.Output())
			for _, x := range d.Domains() {
				log, err := x.Log()
				if err != nil {
					log = err.Error()
				}
				t.Logf("log of domain %s:\n%s", x.Name(), log)
			}
		}
		if err := d.Close(); err != nil {
			t.Errorf("virtlab: Close: %v", err)
		}
	})
	return d
}
