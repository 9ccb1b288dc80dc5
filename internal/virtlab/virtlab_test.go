package virtlab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
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

// crashChild starts a Daemon and a domain with a full disk, prints
// "DOMAIN <name> <dir>" and exits without Close, as a test process that
// crashed would.
func crashChild() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d, err := Start(ctx, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	x, err := d.DefineAndStart(ctx, DomainOptions{FullDisk: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("DOMAIN %s %s\n", x.Name(), d.Dir())
	os.Exit(0)
}

// TestLeftoversRemoved checks that a Daemon cleans up after a test process
// that died without Close: its daemons end with it, and the next Start
// destroys and undefines its domain, whose QEMU kept running, and
// unmounts the tmpfs of its full disk.
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
	mnt := filepath.Join(dir, "full", name)
	if mnts, err := fullDiskMounts(); err != nil || !slices.Contains(mnts, mnt) {
		t.Fatalf("the crashed Daemon's full disk: mounts %q %v, want %s", mnts, err, mnt)
	}

	d := StartT(t, Options{})
	if mnts, err := fullDiskMounts(); err != nil || len(mnts) > 0 {
		t.Errorf("full disk mounts after Start: %q %v, want none", mnts, err)
	}
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
	got := d.domainXML("a<b", DomainOptions{MemoryMiB: 48, CDROM: true, VNC: true, Watchdog: "reset", Panic: true}, "")
	for _, want := range []string{
		"<domain type='qemu'>", "<name>a&lt;b</name>", "<memory unit='MiB'>48</memory>",
		"machine='pc'", "<source file='/tmp/v/media/cd.iso'/>", "<target dev='hdc' bus='ide'/>",
		"<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>",
		"<watchdog model='i6300esb' action='reset'/>", "<panic model='isa'/>", "<memballoon model='none'/>", "<on_crash>destroy</on_crash>",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("XML lacks %s:\n%s", want, got)
		}
	}
	got = d.domainXML("c", DomainOptions{Kernel: "/tmp/v/media/guest-panic.img", OnCrash: "preserve", Watchdog: "pause", WatchdogModel: WatchdogIB700}, "/tmp/v/full/c/disk.raw")
	for _, want := range []string{
		"<kernel>/tmp/v/media/guest-panic.img</kernel>", "<on_crash>preserve</on_crash>", "<watchdog model='ib700' action='pause'/>",
		"<driver name='qemu' type='raw' error_policy='stop' rerror_policy='stop'/>", "<source file='/tmp/v/full/c/disk.raw'/>", "<target dev='hda' bus='ide'/>",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("XML lacks %s:\n%s", want, got)
		}
	}
	if got := d.domainXML("b", DomainOptions{Balloon: true}, ""); strings.Contains(got, "cdrom") || strings.Contains(got, "watchdog") || strings.Contains(got, "<kernel>") || strings.Contains(got, "<disk") || !strings.Contains(got, "<memballoon model='virtio'/>") {
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

// TestGuestActions boots tiny guests (GuestImage) that panic through
// pvpanic, let an ib700 watchdog fire, and write to a full disk, and
// checks the domain's state (virsh domstate --reason) and the events a
// client of the read-only socket sees (virsh event --all), one domain at a
// time, then the states after a libvirtd restart. -v logs each domain's
// events with their times.
func TestGuestActions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real libvirtd and QEMU domains")
	}
	d := StartT(t, Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	img := map[GuestAction]string{}
	for _, k := range []GuestAction{GuestPanic, GuestCrashLoaded, GuestWatchdog, GuestDiskWrite} {
		p, err := d.GuestImage(k)
		if err != nil {
			t.Fatal(err)
		}
		img[k] = p
	}
	ev := watchEvents(t, ctx, d)

	wd := func(action string) DomainOptions {
		return DomainOptions{Kernel: img[GuestWatchdog], Watchdog: action, WatchdogModel: WatchdogIB700}
	}
	cases := []struct {
		name string
		opts DomainOptions
		// events are what the domain's events after "Started Booted"
		// must contain, in this order (substrings, "TYPE: DETAIL").
		events []string
		state  string // the state they leave the domain in
		// loops: the guest does it again after every reboot; the test
		// destroys the domain once checked.
		loops bool
	}{
		// libvirt's default on_crash, destroy: QEMU is killed.
		{name: "panic", opts: DomainOptions{Kernel: img[GuestPanic], Panic: true},
			events: []string{"lifecycle: Crashed Panicked", "lifecycle: Stopped Crashed"}, state: "shut off (crashed)"},
		{name: "panic-preserve", opts: DomainOptions{Kernel: img[GuestPanic], Panic: true, OnCrash: "preserve"},
			events: []string{"lifecycle: Crashed Panicked"}, state: "crashed (panicked)"},
		{name: "panic-restart", opts: DomainOptions{Kernel: img[GuestPanic], Panic: true, OnCrash: "restart"},
			events: []string{"lifecycle: Crashed Panicked", "reboot", "lifecycle: Resumed Unpaused", "lifecycle: Crashed Panicked"}, state: "running (crashed)", loops: true},
		{name: "crashloaded", opts: DomainOptions{Kernel: img[GuestCrashLoaded], Panic: true},
			events: []string{"lifecycle: Crashed Crashloaded"}, state: "running (booted)"},
		{name: "watchdog-pause", opts: wd("pause"),
			events: []string{"watchdog: pause", "lifecycle: Suspended Watchdog"}, state: "paused (watchdog)"},
		{name: "watchdog-poweroff", opts: wd("poweroff"),
			events: []string{"watchdog: poweroff", "lifecycle: Stopped Failed"}, state: "shut off (crashed)"},
		{name: "watchdog-none", opts: wd("none"),
			events: []string{"watchdog: none"}, state: "running (booted)"},
		{name: "watchdog-reset", opts: wd("reset"),
			events: []string{"watchdog: reset", "reboot", "watchdog: reset"}, state: "running (booted)", loops: true},
		{name: "diskwrite", opts: DomainOptions{Kernel: img[GuestDiskWrite], FullDisk: true},
			events: []string{"io-error: ", "io-error-reason: ", "lifecycle: Suspended I/O Error"}, state: "paused (I/O error)"},
	}
	doms := map[string]*Domain{}
	for i, c := range cases {
		c.opts.Name = NamePrefix + c.name
		x, err := d.Define(ctx, c.opts)
		if err != nil {
			t.Fatal(err)
		}
		doms[c.name] = x
		if i == 0 {
			if err := ev.ready(ctx, d, x); err != nil {
				t.Fatal(err)
			}
		}
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			x := doms[c.name]
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := x.Start(wctx); err != nil {
				t.Fatal(err)
			}
			want := append([]string{"lifecycle: Started Booted"}, c.events...)
			got, err := ev.wait(wctx, x.Name(), want...)
			if err != nil {
				t.Fatal(err)
			}
			if err := x.WaitState(wctx, c.state); err != nil {
				t.Error(err)
			}
			started := got[0].at
			took := got[len(got)-1].at.Sub(started)
			switch c.name {
			case "watchdog-pause":
				// It fires GuestWatchdogTimeout after the guest armed it,
				// which is after the start.
				if took < GuestWatchdogTimeout*3/4 || took > GuestWatchdogTimeout+10*time.Second {
					t.Errorf("the watchdog fired %v after the start, want about %v", took, GuestWatchdogTimeout)
				}
			case "panic-preserve":
				checkCrashedReset(t, wctx, ev, x)
			case "diskwrite":
				checkDiskWrite(t, wctx, ev, x)
			}
			if c.loops {
				if err := x.Destroy(wctx); err != nil {
					t.Error(err)
				}
				if _, err := ev.wait(wctx, x.Name(), "lifecycle: Stopped Destroyed"); err != nil {
					t.Error(err)
				}
			}
			t.Logf("%q %v after Started Booted; events:%s", c.state, took.Round(time.Millisecond), ev.summary(x.Name(), started))
		})
	}

	// A new libvirtd keeps the state of the running domains (it kept it
	// in /run/libvirt/qemu) but forgets why a domain shut off.
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"panic":          "shut off (unknown)",
		"panic-preserve": "crashed (panicked)",
		"crashloaded":    "running (booted)",
		"watchdog-pause": "paused (watchdog)",
		"diskwrite":      "paused (I/O error)",
	} {
		if got, err := doms[name].State(ctx); err != nil || got != want {
			t.Errorf("after a libvirtd restart, %s: %q %v, want %q", name, got, err, want)
		}
	}

	// Close removes the domains and unmounts the full disk's tmpfs.
	mnt := filepath.Dir(doms["diskwrite"].FullDisk())
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if mnts, err := fullDiskMounts(); err != nil || len(mnts) > 0 {
		t.Errorf("full disk mounts after Close: %q %v", mnts, err)
	}
	if _, err := os.Stat(mnt); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close, %s: %v, want it removed", mnt, err)
	}
}

// checkCrashedReset resets a domain that panicked and was preserved:
// libvirt calls it "paused (crashed)", QEMU's vCPUs stay stopped. Resumed,
// the guest boots and panics again.
func checkCrashedReset(t *testing.T, ctx context.Context, ev *eventLog, x *Domain) {
	t.Helper()
	if err := x.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if err := x.WaitState(ctx, "paused (crashed)"); err != nil {
		t.Error(err)
	}
	if err := x.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ev.wait(ctx, x.Name(), "lifecycle: Crashed Panicked", "lifecycle: Resumed Unpaused", "lifecycle: Crashed Panicked"); err != nil {
		t.Fatal(err)
	}
	if err := x.WaitState(ctx, "crashed (panicked)"); err != nil {
		t.Error(err)
	}
}

// checkDiskWrite checks what a paused GuestDiskWrite domain with a full
// disk shows, and that it pauses again when resumed: QEMU retries the
// write.
func checkDiskWrite(t *testing.T, ctx context.Context, ev *eventLog, x *Domain) {
	t.Helper()
	img := x.FullDisk()
	for _, want := range []string{
		"io-error: " + img + " (ide0-0-0) pause",
		"io-error-reason: " + img + " (ide0-0-0) pause due to enospc",
	} {
		if n := ev.count(x.Name(), want); n != 1 {
			t.Errorf("%d events %q, want 1", n, want)
		}
	}
	if out, err := x.d.VirshReadOnly(ctx, "domblkerror", x.Name()); err != nil || out != FullDiskTarget+": no space" {
		t.Errorf("domblkerror: %q %v", out, err)
	}
	if err := x.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ev.wait(ctx, x.Name(), "lifecycle: Suspended I/O Error", "lifecycle: Resumed Unpaused", "io-error-reason: ", "lifecycle: Suspended I/O Error"); err != nil {
		t.Fatal(err)
	}
	if err := x.WaitState(ctx, "paused (I/O error)"); err != nil {
		t.Error(err)
	}
}

// eventLog collects what virsh event --all --loop --timestamp prints on
// the read-only socket, as a monitoring client would see the events.
type eventLog struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	done   chan struct{} // closed when virsh's output has ended
	once   sync.Once

	mu     sync.Mutex
	events []event
	other  []string // lines that are no event
}

// event is one line of virsh event: "TIME: event 'TYPE' for domain
// 'NAME': DETAIL", kept as what = "TYPE: DETAIL" (or "TYPE" without
// detail, e.g. reboot).
type event struct {
	at     time.Time
	domain string
	what   string
}

var eventLine = regexp.MustCompile(`^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[+-]\d{4}): event '([^']+)' for domain '(.*?)'(?:: (.*))?$`)

// watchEvents starts virsh event; the test's cleanup stops it. Call ready
// before relying on it.
func watchEvents(t *testing.T, ctx context.Context, d *Daemon) *eventLog {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	e := &eventLog{cancel: cancel, done: make(chan struct{})}
	e.cmd = exec.CommandContext(ctx, d.tools.Virsh, "-r", "-c", d.ReadOnlyURI(), "event", "--all", "--loop", "--timestamp")
	e.cmd.Env = virshEnv()
	e.cmd.WaitDelay = 5 * time.Second
	out, err := e.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(e.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			e.add(sc.Text())
		}
	}()
	t.Cleanup(e.stop)
	return e
}

func (e *eventLog) add(line string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := eventLine.FindStringSubmatch(line)
	if m == nil {
		e.other = append(e.other, line)
		return
	}
	at, err := time.Parse("2006-01-02 15:04:05.000-0700", m[1])
	if err != nil {
		e.other = append(e.other, line)
		return
	}
	what := m[2]
	if m[4] != "" {
		what += ": " + m[4]
	}
	e.events = append(e.events, event{at: at, domain: m[3], what: what})
}

func (e *eventLog) stop() {
	e.once.Do(func() {
		e.cancel()
		<-e.done
		_ = e.cmd.Wait() // killed
	})
}

// of returns the events of domain so far.
func (e *eventLog) of(domain string) []event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var evs []event
	for _, ev := range e.events {
		if ev.domain == domain {
			evs = append(evs, ev)
		}
	}
	return evs
}

// count returns how many events of domain contain substr.
func (e *eventLog) count(domain, substr string) int {
	n := 0
	for _, ev := range e.of(domain) {
		if strings.Contains(ev.what, substr) {
			n++
		}
	}
	return n
}

// summary lists domain's events from since on, with their times relative
// to since.
func (e *eventLog) summary(domain string, since time.Time) string {
	var b strings.Builder
	for _, ev := range e.of(domain) {
		if !ev.at.Before(since) {
			fmt.Fprintf(&b, "\n\t+%v %s", ev.at.Sub(since).Round(time.Millisecond), ev.what)
		}
	}
	return b.String()
}

// wait polls until domain's events contain want in this order (each an
// event containing the substring, after the previous one's), bounded by
// ctx, and returns the events that matched.
func (e *eventLog) wait(ctx context.Context, domain string, want ...string) ([]event, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		evs := e.of(domain)
		var got []event
		for _, ev := range evs {
			if len(got) < len(want) && strings.Contains(ev.what, want[len(got)]) {
				got = append(got, ev)
			}
		}
		if len(got) == len(want) {
			return got, nil
		}
		select {
		case <-tick.C:
		case <-e.done:
			return nil, fmt.Errorf("virsh event ended; domain %s: events %q, want %q in order; other output: %q", domain, whats(evs), want, e.otherLines())
		case <-ctx.Done():
			return nil, fmt.Errorf("domain %s: events %q, want %q in order: %w", domain, whats(evs), want, ctx.Err())
		}
	}
}

func (e *eventLog) otherLines() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.other...)
}

func whats(evs []event) []string {
	var s []string
	for _, ev := range evs {
		s = append(s, ev.what)
	}
	return s
}

// ready waits until virsh event has registered with libvirtd, bounded by
// ctx. It prints nothing when it has, so this defines the (not yet
// started) domain x again, with its UUID, until an event of x shows
// ("Defined Added" from Define, or "Defined Updated").
func (e *eventLog) ready(ctx context.Context, d *Daemon, x *Domain) error {
	again := filepath.Join(d.Dir(), "domains", x.Name()+".again.xml")
	for {
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := e.wait(wctx, x.Name(), "lifecycle: Defined")
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		xml, err := d.Virsh(ctx, "dumpxml", "--inactive", x.Name())
		if err != nil {
			return err
		}
		if err := os.WriteFile(again, []byte(xml), 0o644); err != nil {
			return err
		}
		if _, err := d.Virsh(ctx, "define", again); err != nil {
			return err
		}
	}
}

// TestGuestImage checks the multiboot header and the machine code against
// encodings written out by hand.
func TestGuestImage(t *testing.T) {
	halt := "FA F4 EB FD" // cli; l: hlt; jmp l
	for _, c := range []struct {
		kind GuestAction
		code string
	}{
		{GuestPanic, "66 BA 05 05 B0 01 EE " + halt},       // mov dx, 0x505; mov al, 1; out dx, al
		{GuestCrashLoaded, "66 BA 05 05 B0 02 EE " + halt}, // mov dx, 0x505; mov al, 2; out dx, al
		{GuestWatchdog, "66 BA 43 04 B0 0E EE " + halt},    // mov dx, 0x443; mov al, 0x0E; out dx, al
		{GuestDiskWrite, "FC " + // cld
			"66 BA F6 03 B0 02 EE " + // device control: nIEN
			"66 BA F6 01 B0 E0 EE " + // device: LBA, master
			"66 BA F2 01 B0 01 EE " + // count 1
			"66 BA F3 01 B0 00 EE 66 BA F4 01 B0 00 EE 66 BA F5 01 B0 00 EE " + // LBA 0
			"66 BA F7 01 B0 30 EE " + // WRITE SECTORS
			"EC A8 09 74 FB " + // wait: in al, dx; test al, DRQ|ERR; jz wait
			"66 BA F0 01 B9 00 01 00 00 BE 00 00 10 00 F3 66 6F " + // dx = data; ecx = 256; esi = 1 MiB; rep outsw
			halt},
		{GuestBallast, halt},
	} {
		img, err := guestImage(c.kind)
		if err != nil {
			t.Fatal(err)
		}
		if len(img) < 32 {
			t.Fatalf("%v: %d bytes", c.kind, len(img))
		}
		le := binary.LittleEndian
		magic, flags, sum := le.Uint32(img[0:]), le.Uint32(img[4:]), le.Uint32(img[8:])
		if magic != 0x1BADB002 || flags != 1<<16 || magic+flags+sum != 0 {
			t.Errorf("%v: magic %#x flags %#x checksum %#x", c.kind, magic, flags, sum)
		}
		for i, want := range []uint32{0x100000, 0x100000, 0, 0, 0x100020} { // header, load, load end, bss end, entry
			if got := le.Uint32(img[12+4*i:]); got != want {
				t.Errorf("%v: address field %d = %#x, want %#x", c.kind, i, got, want)
			}
		}
		if c.kind == GuestBallast {
			// The ballast after the code, in which no byte is zero.
			ballast := img[len(img)-BallastBytes:]
			if bytes.IndexByte(ballast, 0) >= 0 {
				t.Errorf("%v: a zero byte in the ballast", c.kind)
			}
			img = img[:len(img)-BallastBytes]
		}
		if got := strings.ToUpper(hex.EncodeToString(img[32:])); got != strings.ReplaceAll(c.code, " ", "") {
			t.Errorf("%v: code\n%s, want\n%s", c.kind, got, strings.ReplaceAll(c.code, " ", ""))
		}
	}
	if _, err := guestImage(GuestAction(0)); err == nil {
		t.Error("GuestAction(0) made an image")
	}
}

func TestFullDiskMount(t *testing.T) {
	for _, c := range []struct {
		line, mnt string
		ok        bool
	}{
		{`312 29 0:77 / /tmp/virtlab1/full/virtlab-a rw,nosuid,nodev,noexec,relatime shared:160 - tmpfs virtlab-fulldisk rw,size=64k,mode=755`, "/tmp/virtlab1/full/virtlab-a", true},
		{`312 29 0:77 / /tmp/a\040b/full/x rw - tmpfs virtlab-fulldisk rw`, "/tmp/a b/full/x", true},
		{`25 30 0:23 / /tmp rw,nosuid,nodev shared:5 - tmpfs tmpfs rw`, "", false},
		{`26 30 0:24 / /mnt rw - ext4 virtlab-fulldisk rw`, "", false},
		{`garbage`, "", false},
	} {
		mnt, ok := fullDiskMount(c.line)
		if mnt != c.mnt || ok != c.ok {
			t.Errorf("fullDiskMount(%q) = %q %v, want %q %v", c.line, mnt, ok, c.mnt, c.ok)
		}
	}
	if got := unescapeMountinfo(`a\011b\134c\0`); got != "a\tb\\c\\0" {
		t.Errorf("unescapeMountinfo: %q", got)
	}
}

// TestPeerMigration: a domain migrates live to the Peer and back. On the
// Daemon it is "shut off (migrated)" meanwhile, on the Peer running; back,
// it runs on the Daemon and the Peer has no domain. Close stops the Peer
// and its domains with it.
func TestPeerMigration(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	d := StartT(t, Options{})
	x, err := d.DefineAndStart(ctx, DomainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := d.StartPeer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.MigrateTo(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	wantState(t, ctx, x, "shut off (migrated)")
	if got, err := p.Virsh(ctx, "domstate", "--reason", x.Name()); err != nil || got != "running (migrated)" {
		t.Fatalf("on the peer: %q, %v; want running (migrated)", got, err)
	}
	if err := p.MigrateBack(ctx, x); err != nil {
		t.Fatal(err)
	}
	wantState(t, ctx, x, "running (migrated)")
	if got, err := p.Virsh(ctx, "list", "--all", "--name"); err != nil || got != "" {
		t.Fatalf("the peer still lists %q (%v)", got, err)
	}
	// A domain left on the Peer goes with it.
	if err := x.MigrateTo(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	pid := p.libvirt.cmd.Process.Pid
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Errorf("the peer's libvirtd (pid %d) runs after Close", pid)
	}
	if n := guestProcesses(t); n != 0 {
		t.Errorf("%d QEMU processes of virtlab domains run after Close", n)
	}
}

// guestProcesses counts the QEMU processes of domains named NamePrefix...
func guestProcesses(t *testing.T) int {
	t.Helper()
	paths, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, path := range paths {
		b, _ := os.ReadFile(path)
		if slices.ContainsFunc(strings.Split(string(b), "\x00"), isVirtlabGuestName) {
			n++
		}
	}
	return n
}
