package virtlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) == "1" {
		crashChild()
	}
	goleak.VerifyTestMain(m)
}

// crashChildEnv makes the test binary play, instead of running the tests,
// a test process that crashes while its Daemon runs a domain.
const crashChildEnv = "VIRTLAB_CRASH_CHILD"

// crashChild starts a Daemon and a domain, prints "DOMAIN <name> <dir>"
// and exits without Close, as a test process that crashed would.
func crashChild() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d, err := Start(ctx, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	x, err := d.DefineAndStart(ctx, DomainOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("DOMAIN %s %s\n", x.Name(), d.Dir())
	os.Exit(0)
}

// TestLeftoversRemoved checks that a Daemon cleans up after a test process
// that died without Close: its daemons end with it, and the next Start
// destroys and undefines its domain, whose QEMU kept running.
func TestLeftoversRemoved(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real libvirtd and a QEMU domain")
	}
	Require(t)
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), crashChildEnv+"=1")
	var stderr strings.Builder
	child.Stderr = &stderr
	out, err := child.Output()
	if err != nil {
		t.Fatalf("crashing child: %v\n%s", err, stderr.String())
	}
	var name, dir string
	if _, err := fmt.Sscanf(string(out), "DOMAIN %s %s", &name, &dir); err != nil {
		t.Fatalf("child printed %q: %v", out, err)
	}
	defer os.RemoveAll(dir) // a crashed Daemon leaves its directory
	b, err := os.ReadFile(filepath.Join("/run/libvirt/qemu", name+".pid"))
	if err != nil {
		t.Fatal(err)
	}
	qemuPid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}

	d := StartT(t, Options{})
	for _, f := range []string{"libvirtd.pid", "virtlogd.pid"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if errors.Is(err, os.ErrNotExist) {
			continue // virtlogd was shared
		}
		if err != nil {
			t.Fatal(err)
		}
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); alive(pid) {
			t.Errorf("the crashed Daemon's %s (pid %d) still runs", strings.TrimSuffix(f, ".pid"), pid)
		}
	}
	if alive(qemuPid) {
		t.Errorf("QEMU of the leftover domain (pid %d) still runs", qemuPid)
	}
	names, err := d.domainNames(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if names[name] {
		t.Errorf("leftover domain %s still defined", name)
	}
	for _, p := range []string{filepath.Join(DomainLogDir, name+".log"), filepath.Join("/etc/libvirt/qemu", name+".xml")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want it removed", p, err)
		}
	}
}

// TestDaemon starts a real private libvirtd and drives a real domain
// through every Domain method, restarting and killing libvirtd in the
// middle.
func TestDaemon(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real libvirtd and a QEMU domain")
	}
	began := time.Now()
	d := StartT(t, Options{})
	t.Logf("libvirtd ready after %v (pid %d, sockets in %s)", time.Since(began).Round(time.Millisecond), d.LibvirtdPid(), filepath.Dir(d.SocketRW()))
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	for _, s := range []string{d.SocketRO(), d.SocketRW()} {
		if fi, err := os.Stat(s); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("socket %s: %v %v", s, fi, err)
		}
	}
	if _, err := d.VirshReadOnly(ctx, "list", "--all"); err != nil {
		t.Fatal(err)
	}

	// A second Daemon waits for the machine-wide lock and gives up with
	// its context.
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := Start(short, Options{})
	cancelShort()
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), LockPath) {
		t.Fatalf("second Start: %v, want a lock timeout", err)
	}

	began = time.Now()
	x, err := d.DefineAndStart(ctx, DomainOptions{CDROM: true, VNC: true, Watchdog: "pause", Panic: true, Balloon: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("domain %s (%s) running after %v", x.Name(), x.UUID(), time.Since(began).Round(time.Millisecond))
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`).MatchString(x.UUID()) {
		t.Errorf("UUID %q", x.UUID())
	}
	if !strings.HasPrefix(x.Name(), NamePrefix) {
		t.Errorf("name %q lacks %q", x.Name(), NamePrefix)
	}
	wantState(t, ctx, x, "running (booted)")
	id1 := wantID(t, ctx, x, true)
	if _, err := d.VirshReadOnly(ctx, "suspend", x.Name()); err == nil || !strings.Contains(err.Error(), "read only access prevents") {
		t.Errorf("suspend on the read-only socket: %v, want it forbidden", err)
	}
	if got, err := d.VirshReadOnly(ctx, "domstate", "--reason", x.Name()); err != nil || got != "running (booted)" {
		t.Errorf("domstate on the read-only socket: %q %v", got, err)
	}
	xml, err := d.Virsh(ctx, "dumpxml", x.Name())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<watchdog model='i6300esb' action='pause'", "<panic model='isa'", "<memballoon model='virtio'", "<graphics type='vnc'", "device='cdrom'"} {
		if !strings.Contains(xml, want) {
			t.Errorf("live XML lacks %s:\n%s", want, xml)
		}
	}

	if err := x.Suspend(ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, ctx, x, "paused (user)")
	if err := x.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, ctx, x, "running (unpaused)")
	if err := x.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, ctx, x, "running (unpaused)")

	wantMedia(t, ctx, x, d.Media())
	if err := x.EjectCDROM(ctx); err != nil {
		t.Fatal(err)
	}
	wantMedia(t, ctx, x, "-")
	other, err := d.NewMedia("other.iso")
	if err != nil {
		t.Fatal(err)
	}
	if err := x.InsertCDROM(ctx, other); err != nil {
		t.Fatal(err)
	}
	wantMedia(t, ctx, x, other)

	// Restart libvirtd: the same QEMU process goes on running.
	qemuPid := domainPid(t, x)
	oldPid := d.LibvirtdPid()
	began = time.Now()
	if err := d.StopLibvirtd(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(began)
	if _, err := os.Stat(d.SocketRW()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after StopLibvirtd, %s: %v, want it removed", d.SocketRW(), err)
	}
	if _, err := d.Virsh(ctx, "version"); err == nil {
		t.Error("virsh answered while libvirtd was stopped")
	}
	if !alive(qemuPid) {
		t.Fatalf("QEMU (pid %d) died with libvirtd", qemuPid)
	}
	if err := d.StartLibvirtd(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("libvirtd stopped in %v, ready again after %v", stopped.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	if p := d.LibvirtdPid(); p == oldPid || p == 0 {
		t.Errorf("libvirtd pid %d after restart, was %d", p, oldPid)
	}
	wantState(t, ctx, x, "running (unpaused)")
	if got := domainPid(t, x); got != qemuPid {
		t.Errorf("QEMU pid %d after the restart, was %d", got, qemuPid)
	}
	if id := wantID(t, ctx, x, true); id != id1 {
		t.Errorf("ID %d after the restart, was %d", id, id1)
	}
	wantMedia(t, ctx, x, other)

	// A crash: sockets stay behind, StartLibvirtd copes; Restart works too.
	if err := d.KillLibvirtd(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.SocketRW()); err != nil {
		t.Errorf("after KillLibvirtd, %s: %v, want it left behind", d.SocketRW(), err)
	}
	if err := d.StartLibvirtd(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, ctx, x, "running (unpaused)")
	if got := domainPid(t, x); got != qemuPid {
		t.Errorf("QEMU pid %d after kill and restart, was %d", got, qemuPid)
	}

	if err := x.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, ctx, x, "shut off (destroyed)")
	wantID(t, ctx, x, false)
	if alive(qemuPid) {
		t.Errorf("QEMU (pid %d) still runs after Destroy", qemuPid)
	}
	if err := x.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, ctx, x, "running (booted)")
	if id := wantID(t, ctx, x, true); id == id1 {
		t.Errorf("ID %d unchanged by Destroy and Start", id)
	}
	if uuid, err := d.Virsh(ctx, "domuuid", x.Name()); err != nil || uuid != x.UUID() {
		t.Errorf("UUID after Start: %q %v, want %q", uuid, err, x.UUID())
	}
	wantMedia(t, ctx, x, d.Media())

	if taint, ok, err := x.Tainted(ctx); err != nil || ok || taint != "" {
		t.Errorf("Tainted: %q %v %v, want no taint", taint, ok, err)
	}
	// A monitor command behind libvirt's back taints the domain.
	if _, err := d.Virsh(ctx, "qemu-monitor-command", x.Name(), "--hmp", "info status"); err != nil {
		t.Fatal(err)
	}
	if taint, ok, err := x.Tainted(ctx); err != nil || !ok || taint != "tainted: custom monitor control commands issued" {
		t.Errorf("Tainted after qemu-monitor-command: %q %v %v", taint, ok, err)
	}
	if log, err := x.Log(); err != nil || !strings.Contains(log, "is tainted: custom-monitor") {
		t.Errorf("domain log lacks the taint (%v):\n%s", err, log)
	}

	// Undefined while running, the domain is transient and vanishes when
	// destroyed; Close copes with that.
	if err := x.Undefine(ctx); err != nil {
		t.Fatal(err)
	}
	if info, err := d.Virsh(ctx, "dominfo", x.Name()); err != nil || !regexp.MustCompile(`(?m)^Persistent: +no$`).MatchString(info) {
		t.Errorf("dominfo after Undefine (%v):\n%s", err, info)
	}
	wantState(t, ctx, x, "running (booted)")
	qemuPid = domainPid(t, x)
	if err := x.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if names, err := d.domainNames(ctx); err != nil || names[x.Name()] {
		t.Errorf("domains after Undefine and Destroy: %v %v", names, err)
	}
	y, err := d.DefineAndStart(ctx, DomainOptions{Name: NamePrefix + "second"})
	if err != nil {
		t.Fatal(err)
	}
	wantState(t, ctx, y, "running (booted)")

	// Close removes everything and may be called twice (StartT's cleanup
	// calls it again).
	yPid := domainPid(t, y)
	dir, logPath := d.Dir(), x.LogPath()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if alive(qemuPid) || alive(yPid) {
		t.Errorf("QEMU (pid %d or %d) still runs after Close", qemuPid, yPid)
	}
	for _, p := range []string{dir, logPath, y.LogPath(), filepath.Join("/etc/libvirt/qemu", y.Name()+".xml")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Close, %s: %v, want it removed", p, err)
		}
	}
	if !strings.Contains(d.Output(), "libvirt version") {
		t.Errorf("Output after Close lacks libvirtd's banner:\n%s", d.Output())
	}
}

func wantState(t *testing.T, ctx context.Context, x *Domain, want string) {
	t.Helper()
	got, err := x.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("state %q, want %q", got, want)
	}
}

// wantID checks that the domain has an ID (active) or -1 and returns it.
func wantID(t *testing.T, ctx context.Context, x *Domain, active bool) int {
	t.Helper()
	id, err := x.ID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if active != (id > 0) {
		t.Fatalf("ID %d, active %v", id, active)
	}
	return id
}

// wantMedia checks the CD-ROM's source in virsh domblklist ("-" if empty).
func wantMedia(t *testing.T, ctx context.Context, x *Domain, want string) {
	t.Helper()
	out, err := x.d.Virsh(ctx, "domblklist", x.Name())
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == CDROMTarget {
			if f[1] != want {
				t.Fatalf("%s holds %q, want %q", CDROMTarget, f[1], want)
			}
			return
		}
	}
	t.Fatalf("no %s in domblklist:\n%s", CDROMTarget, out)
}

// domainPid returns the pid of the domain's QEMU from libvirt's pid file.
func domainPid(t *testing.T, x *Domain) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/run/libvirt/qemu", x.Name()+".pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// alive reports whether pid is a process that has not exited (a zombie
// has).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) STATE ...; comm may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

func TestParseTaints(t *testing.T) {
	out := `Id:             3
Name:           virtlab-1
Security DOI:   0
Messages:       tainted: custom monitor control commands issued
                deprecated configuration: machine type 'pc-1.0'
                tainted: use of host cpu passthrough
`
	got := parseTaints(out)
	want := []string{"tainted: custom monitor control commands issued", "tainted: use of host cpu passthrough"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("parseTaints = %q, want %q", got, want)
	}
	if got := parseTaints("Name:           a\nSecurity DOI:   0\n"); got != nil {
		t.Errorf("no messages: %q", got)
	}
}

func TestDomainXML(t *testing.T) {
	d := &Daemon{mediaDir: "/tmp/v/media"}
	got := d.domainXML("a<b", DomainOptions{MemoryMiB: 48, CDROM: true, VNC: true, Watchdog: "reset", Panic: true})
	for _, want := range []string{
		"<domain type='qemu'>", "<name>a&lt;b</name>", "<memory unit='MiB'>48</memory>",
		"machine='pc'", "<source file='/tmp/v/media/cd.iso'/>", "<target dev='hdc' bus='ide'/>",
		"<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>",
		"<watchdog model='i6300esb' action='reset'/>", "<panic model='isa'/>", "<memballoon model='none'/>",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("XML lacks %s:\n%s", want, got)
		}
	}
	if got := d.domainXML("b", DomainOptions{Balloon: true}); strings.Contains(got, "cdrom") || strings.Contains(got, "watchdog") || !strings.Contains(got, "<memballoon model='virtio'/>") {
		t.Errorf("minimal XML:\n%s", got)
	}
}

// TestEndLeftovers checks that a process recorded in the lock file by an
// earlier holder is killed, and that one whose name differs (a reused pid)
// is left alone.
func TestEndLeftovers(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("needs /proc")
	}
	start := func() *exec.Cmd {
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Skip(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		return c
	}
	victim, bystander := start(), start()
	lock, err := os.Create(filepath.Join(t.TempDir(), "lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	fmt.Fprintf(lock, "sleep %d\nlibvirtd %d\n", victim.Process.Pid, bystander.Process.Pid)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// endLeftovers waits for the victim to be gone; here the test is its
	// parent, so reap it meanwhile.
	reaped := make(chan struct{})
	go func() { victim.Wait(); close(reaped) }()
	d := &Daemon{lock: lock}
	if err := d.endLeftovers(ctx); err != nil {
		t.Fatal(err)
	}
	<-reaped
	if !processAlive(bystander.Process.Pid, "sleep") {
		t.Error("a process under another name was killed")
	}
}
