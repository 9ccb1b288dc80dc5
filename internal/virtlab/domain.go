package virtlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// NamePrefix starts the domain names Define generates. Start destroys and
// undefines every domain whose name starts with it, left behind by a test
// run that crashed before Close; give a domain another name only if a
// leftover of it is harmless.
const NamePrefix = "virtlab-"

// CDROMTarget is the target device of the CD-ROM drive of
// DomainOptions.CDROM (IDE, bus 1 unit 0; libvirt's alias and QEMU's id
// "ide0-1-0"), as virsh change-media and domblklist name it.
const CDROMTarget = "hdc"

// Media files the Daemon makes.
const (
	defaultMedia = "cd.iso"
	mediaSize    = 64 << 10 // 32 empty CD sectors
)

// DefaultMemoryMiB is the memory of a domain whose MemoryMiB is zero.
// SeaBIOS idles happily in it.
const DefaultMemoryMiB = 32

// DomainOptions describes a domain for Define and DefineAndStart. The zero
// value is a domain with no devices but those libvirt always adds (USB
// controller, PS/2 input, IDE controller) and no memory balloon.
type DomainOptions struct {
	// Name is the domain's name; empty means NamePrefix and eight random
	// hex digits.
	Name string
	// MemoryMiB is the memory; zero means DefaultMemoryMiB.
	MemoryMiB int
	// CDROM adds an IDE CD-ROM drive, target CDROMTarget, holding the
	// Daemon's Media. Its tray is what Domain.EjectCDROM and InsertCDROM
	// move.
	CDROM bool
	// VNC adds VNC graphics on 127.0.0.1 with an automatic port (5900 and
	// up), and with it a cirrus-vga video device.
	VNC bool
	// SPICE adds SPICE graphics on 127.0.0.1 with an automatic port, with
	// no password (libvirt then starts QEMU with ticketing off).
	SPICE bool
	// Watchdog, if set, adds a watchdog of model WatchdogModel with this
	// action: "reset", "shutdown", "poweroff", "pause", "dump",
	// "inject-nmi" or "none". SeaBIOS never arms it; GuestWatchdog arms
	// an ib700.
	Watchdog string
	// WatchdogModel is the Watchdog's model; empty means "i6300esb" (PCI).
	// GuestWatchdog programs WatchdogIB700 (ISA) only.
	WatchdogModel string
	// Panic adds an ISA pvpanic device (<panic model='isa'/>), port
	// 0x505, which GuestPanic and GuestCrashLoaded write to.
	Panic bool
	// OnCrash is what libvirt does when the guest panics (<on_crash>):
	// empty means "destroy", libvirt's own default, which leaves the
	// domain "shut off (crashed)"; "preserve" leaves it "crashed
	// (panicked)" with its QEMU still there (vCPUs stopped). Others:
	// "restart", "rename-restart", "coredump-destroy",
	// "coredump-restart".
	OnCrash string
	// Balloon adds a virtio memory balloon. Without it the domain gets
	// <memballoon model='none'/>, since libvirt adds a balloon to a domain
	// that names none.
	Balloon bool
	// Kernel, if set, is the path of a multiboot kernel the domain boots
	// instead of idling in SeaBIOS (<os><kernel>), e.g. from
	// Daemon.GuestImage. QEMU, running as libvirt-qemu, reads it at each
	// start: keep it in the Daemon's media directory.
	Kernel string
	// FullDisk adds a raw IDE disk, target FullDiskTarget, that fails
	// every write with ENOSPC (an image on a tmpfs of its own that is
	// full; Close unmounts it), with error_policy and rerror_policy
	// "stop": a write (GuestDiskWrite) leaves the domain "paused (I/O
	// error)". Domain.FullDisk returns the image's path.
	FullDisk bool
}

// WatchdogIB700 is the ISA watchdog model (DomainOptions.WatchdogModel)
// that GuestWatchdog arms.
const WatchdogIB700 = "ib700"

// Domain is a persistent domain that Define or DefineAndStart defined. Its
// methods run virsh against the Daemon's read-write socket and are bounded
// by their context.
type Domain struct {
	d        *Daemon
	name     string
	uuid     string
	fullDisk string // the image of DomainOptions.FullDisk
}

// Name returns the domain's name.
func (x *Domain) Name() string { return x.name }

// UUID returns the domain's UUID, which libvirt chose at define time. It
// stays the same across Destroy and Start.
func (x *Domain) UUID() string { return x.uuid }

// Media returns the path of a small empty image in the Daemon's
// world-readable media directory, for a CD-ROM: the one DomainOptions.CDROM
// inserts. See NewMedia for others.
func (d *Daemon) Media() string { return filepath.Join(d.mediaDir, defaultMedia) }

// NewMedia writes a small empty image called name (a base name) into the
// Daemon's media directory and returns its path. QEMU, which runs as
// libvirt-qemu, can read it there; libvirt hands its ownership to
// libvirt-qemu while a domain uses it.
func (d *Daemon) NewMedia(name string) (string, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return "", fmt.Errorf("virtlab: media name %q is not a base name", name)
	}
	p := filepath.Join(d.mediaDir, name)
	if err := os.WriteFile(p, make([]byte, mediaSize), 0o644); err != nil {
		return "", fmt.Errorf("virtlab: media: %w", err)
	}
	return p, nil
}

// Domains returns the domains Define and DefineAndStart defined, oldest
// first, including those a test has destroyed or undefined since.
func (d *Daemon) Domains() []*Domain {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*Domain(nil), d.domains...)
}

// DefineAndStart defines a persistent domain (virsh define) and starts it
// (virsh start), bounded by ctx. The domain is persistent rather than
// transient (virsh create) so that it survives Destroy: State then reports
// "shut off (destroyed)" and Start boots it again with the same UUID, as
// for a production VM. Close destroys and undefines it. The start takes
// about a second with TCG; the domain then runs SeaBIOS, which finds
// nothing to boot and idles, or boots DomainOptions.Kernel. A guest that
// acts at once (GuestImage) may do so before an event listener started
// after DefineAndStart is ready: use Define, then Domain.Start.
func (d *Daemon) DefineAndStart(ctx context.Context, opts DomainOptions) (*Domain, error) {
	x, err := d.Define(ctx, opts)
	if err != nil {
		return nil, err
	}
	if err := x.Start(ctx); err != nil {
		return nil, err
	}
	return x, nil
}

// Define defines a persistent domain (virsh define) without starting it,
// bounded by ctx: State "shut off (unknown)". Start it with Domain.Start,
// e.g. once an event listener is ready for what its guest does at once.
// Close destroys and undefines it.
func (d *Daemon) Define(ctx context.Context, opts DomainOptions) (*Domain, error) {
	name := opts.Name
	if name == "" {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("virtlab: %w", err)
		}
		name = NamePrefix + hex.EncodeToString(b[:])
	}
	if strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("virtlab: bad domain name %q", name)
	}
	if opts.MemoryMiB == 0 {
		opts.MemoryMiB = DefaultMemoryMiB
	}
	if opts.MemoryMiB < 0 {
		return nil, fmt.Errorf("virtlab: negative MemoryMiB %d", opts.MemoryMiB)
	}
	x := &Domain{d: d, name: name}
	if opts.FullDisk {
		img, err := d.newFullDisk(name)
		if err != nil {
			return nil, err
		}
		x.fullDisk = img
	}
	xmlPath := filepath.Join(d.dir, "domains", name+".xml")
	if err := os.WriteFile(xmlPath, []byte(d.domainXML(name, opts, x.fullDisk)), 0o644); err != nil {
		return nil, fmt.Errorf("virtlab: %w", err)
	}
	if _, err := d.Virsh(ctx, "define", xmlPath); err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.domains = append(d.domains, x)
	d.mu.Unlock()
	uuid, err := d.Virsh(ctx, "domuuid", name)
	if err != nil {
		return nil, err
	}
	x.uuid = uuid
	return x, nil
}

// domainXML renders the domain definition: TCG, the "pc" machine (i440FX),
// SeaBIOS and no bootable disk, so without a kernel nothing boots and the
// domain idles. fullDisk is the image of opts.FullDisk.
func (d *Daemon) domainXML(name string, opts DomainOptions, fullDisk string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "<domain type='qemu'>\n  <name>%s</name>\n", esc(name))
	fmt.Fprintf(&b, "  <memory unit='MiB'>%d</memory>\n  <vcpu>1</vcpu>\n", opts.MemoryMiB)
	b.WriteString("  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n")
	if opts.Kernel != "" {
		fmt.Fprintf(&b, "    <kernel>%s</kernel>\n", esc(opts.Kernel))
	}
	b.WriteString("  </os>\n")
	onCrash := opts.OnCrash
	if onCrash == "" {
		onCrash = "destroy"
	}
	fmt.Fprintf(&b, "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>%s</on_crash>\n", esc(onCrash))
	b.WriteString("  <devices>\n")
	if fullDisk != "" {
		fmt.Fprintf(&b, "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw' error_policy='stop' rerror_policy='stop'/>\n      <source file='%s'/>\n      <target dev='%s' bus='ide'/>\n    </disk>\n",
			esc(fullDisk), FullDiskTarget)
	}
	if opts.CDROM {
		fmt.Fprintf(&b, "    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      <source file='%s'/>\n      <target dev='%s' bus='ide'/>\n      <readonly/>\n    </disk>\n",
			esc(d.Media()), CDROMTarget)
	}
	if opts.VNC {
		b.WriteString("    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>\n")
	}
	if opts.SPICE {
		b.WriteString("    <graphics type='spice' port='-1' autoport='yes' listen='127.0.0.1'/>\n")
	}
	if opts.Watchdog != "" {
		model := opts.WatchdogModel
		if model == "" {
			model = "i6300esb"
		}
		fmt.Fprintf(&b, "    <watchdog model='%s' action='%s'/>\n", esc(model), esc(opts.Watchdog))
	}
	if opts.Panic {
		b.WriteString("    <panic model='isa'/>\n")
	}
	if opts.Balloon {
		b.WriteString("    <memballoon model='virtio'/>\n")
	} else {
		b.WriteString("    <memballoon model='none'/>\n")
	}
	b.WriteString("  </devices>\n</domain>\n")
	return b.String()
}

// esc escapes s for XML text and single-quoted attributes.
func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // writing to a strings.Builder never fails
	return b.String()
}

// removeDomain destroys name if it runs and undefines it if it is still
// defined, bounded by ctx. A domain that no longer exists is fine.
func (d *Daemon) removeDomain(ctx context.Context, name string) error {
	names, err := d.domainNames(ctx)
	if err != nil {
		return err
	}
	if !names[name] {
		return nil
	}
	state, err := d.Virsh(ctx, "domstate", name)
	if err != nil {
		return err
	}
	if state != "shut off" {
		// A transient domain (one undefined while it ran) vanishes here.
		if _, err := d.Virsh(ctx, "destroy", name); err != nil {
			return err
		}
	}
	if names, err = d.domainNames(ctx); err != nil {
		return err
	}
	if names[name] {
		if _, err := d.Virsh(ctx, "undefine", name); err != nil {
			return err
		}
	}
	return nil
}

// domainNames returns the names of every domain, running or not.
func (d *Daemon) domainNames(ctx context.Context) (map[string]bool, error) {
	out, err := d.Virsh(ctx, "list", "--all", "--name")
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, n := range strings.Split(out, "\n") {
		if n = strings.TrimSpace(n); n != "" {
			names[n] = true
		}
	}
	return names, nil
}

// removeStale removes the domains named NamePrefix... left by a crashed
// run, with their logs.
func (d *Daemon) removeStale(ctx context.Context) error {
	names, err := d.domainNames(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for n := range names {
		if !strings.HasPrefix(n, NamePrefix) {
			continue
		}
		if err := d.removeDomain(ctx, n); err != nil {
			errs = append(errs, fmt.Errorf("virtlab: removing domain %s left by an earlier run: %w", n, err))
			continue
		}
		if err := os.Remove(filepath.Join(DomainLogDir, n+".log")); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("virtlab: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (x *Domain) run(ctx context.Context, args ...string) error {
	_, err := x.d.Virsh(ctx, args...)
	return err
}

// Start starts the (shut off) domain: virsh start. It keeps its name and
// UUID and gets a new ID. State: "running (booted)".
func (x *Domain) Start(ctx context.Context) error { return x.run(ctx, "start", x.name) }

// Suspend pauses the domain's vCPUs: virsh suspend. State: "paused (user)".
func (x *Domain) Suspend(ctx context.Context) error { return x.run(ctx, "suspend", x.name) }

// Resume undoes Suspend: virsh resume. State: "running (unpaused)".
func (x *Domain) Resume(ctx context.Context) error { return x.run(ctx, "resume", x.name) }

// Reset resets the machine at once, without a guest shutdown: virsh reset.
// The state and its reason do not change. libvirt emits one or more
// "reboot" events for it (three were seen with SeaBIOS).
func (x *Domain) Reset(ctx context.Context) error { return x.run(ctx, "reset", x.name) }

// Destroy kills the domain's QEMU: virsh destroy. The domain stays defined;
// State: "shut off (destroyed)".
func (x *Domain) Destroy(ctx context.Context) error { return x.run(ctx, "destroy", x.name) }

// Undefine removes the domain's persistent definition: virsh undefine. A
// running domain becomes transient and vanishes when it stops; a shut off
// one vanishes at once.
func (x *Domain) Undefine(ctx context.Context) error { return x.run(ctx, "undefine", x.name) }

// EjectCDROM removes the medium of the running domain's CD-ROM
// (DomainOptions.CDROM): virsh change-media --eject --live. libvirt emits
// tray-change "opened", then "closed" (it closes the empty tray again). It
// fails ("doesn't have media") when the drive is empty.
func (x *Domain) EjectCDROM(ctx context.Context) error {
	// --force: right after a reset, SeaBIOS may hold the tray locked
	// while it probes the drive; without it QEMU only asks the guest to
	// open the tray, and libvirt gives up with "Tray ... is not open"
	// (seen once in make test).
	return x.run(ctx, "change-media", x.name, CDROMTarget, "--eject", "--live", "--force")
}

// InsertCDROM puts the image at path into the running domain's empty
// CD-ROM: virsh change-media --insert --live (tray-change "closed"). QEMU
// opens the file as libvirt-qemu, so path must be readable by that user:
// use Media or NewMedia. The change is live only: after Destroy and Start
// the drive holds Media again.
func (x *Domain) InsertCDROM(ctx context.Context, path string) error {
	return x.run(ctx, "change-media", x.name, CDROMTarget, "--insert", path, "--live")
}

// State returns virsh domstate --reason: "running (booted)", "running
// (unpaused)", "paused (user)", "shut off (destroyed)", ...
func (x *Domain) State(ctx context.Context) (string, error) {
	return x.d.Virsh(ctx, "domstate", "--reason", x.name)
}

// WaitState polls State until it returns want, bounded by ctx; the error
// names the last state seen.
func (x *Domain) WaitState(ctx context.Context, want string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last string
	var lastErr error
	for {
		last, lastErr = x.State(ctx)
		if lastErr == nil && last == want {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("virtlab: domain %s: state %q (err %v), want %q: %w", x.name, last, lastErr, want, ctx.Err())
		}
	}
}

// ID returns the domain's current ID (virsh domid), which changes at every
// start, or -1 while it is shut off.
func (x *Domain) ID(ctx context.Context) (int, error) {
	out, err := x.d.Virsh(ctx, "domid", x.name)
	if err != nil {
		return 0, err
	}
	if out == "-" {
		return -1, nil
	}
	id, err := strconv.Atoi(out)
	if err != nil {
		return 0, fmt.Errorf("virtlab: virsh domid %s: %q: %w", x.name, out, err)
	}
	return id, nil
}

// Tainted reads the "Messages:" of virsh dominfo and returns those that
// start with "tainted: " (e.g. "tainted: custom monitor control commands
// issued", after virsh qemu-monitor-command), joined by "; ", and whether
// there was any. libvirt also logs each taint in the domain's log, as
// "Domain id=N is tainted: custom-monitor".
func (x *Domain) Tainted(ctx context.Context) (string, bool, error) {
	out, err := x.d.Virsh(ctx, "dominfo", x.name)
	if err != nil {
		return "", false, err
	}
	taints := parseTaints(out)
	return strings.Join(taints, "; "), len(taints) > 0, nil
}

// parseTaints returns the taint messages of virsh dominfo's output. virsh
// prints the first message after "Messages:" and each further one on a line
// of its own, indented to the value column.
func parseTaints(dominfo string) []string {
	var msgs []string
	in := false
	for _, line := range strings.Split(dominfo, "\n") {
		if rest, ok := strings.CutPrefix(line, "Messages:"); ok {
			in = true
			msgs = append(msgs, strings.TrimSpace(rest))
			continue
		}
		if in && line != "" && (line[0] == ' ' || line[0] == '\t') {
			msgs = append(msgs, strings.TrimSpace(line))
			continue
		}
		in = false
	}
	var taints []string
	for _, m := range msgs {
		if strings.HasPrefix(m, "tainted: ") {
			taints = append(taints, m)
		}
	}
	return taints
}

// LogPath returns the path of the domain's log, DomainLogDir/NAME.log: the
// QEMU command line of every start, QEMU's own output and libvirt's taint
// notes. Close removes it.
func (x *Domain) LogPath() string { return filepath.Join(DomainLogDir, x.name+".log") }

// Log returns the domain's log (see LogPath).
func (x *Domain) Log() (string, error) {
	b, err := os.ReadFile(x.LogPath())
	if err != nil {
		return "", fmt.Errorf("virtlab: %w", err)
	}
	return string(b), nil
}
