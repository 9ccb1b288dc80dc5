package virtlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Peer is a second libvirtd on the machine, the destination of live
// migrations, as another host would be. It runs in mount and UTS
// namespaces of its own (unshare), where tmpfs mounts give it its own
// state (/run, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt,
// /etc/libvirt/qemu), a qemu.conf of its own is mounted over the
// machine's, and the host name is PeerHostname. Its host UUID differs
// from the Daemon's, which libvirt checks before it migrates. It writes
// QEMU's output to files rather than through virtlogd, so it is one
// process. Its sockets are in the Daemon's directory, outside its
// namespace. Start it with Daemon.StartPeer; the Daemon's Close closes it.
type Peer struct {
	d       *Daemon
	dir     string // under the Daemon's directory
	runDir  string // unix_sock_dir
	libvirt *proc
}

// PeerHostname is the Peer's host name (in its UTS namespace only).
const PeerHostname = "virtlab-peer"

// peerHostUUID is the Peer's host_uuid; the Daemon has the machine's.
const peerHostUUID = "5c0ffee0-0d15-4a7b-9e3c-0000000000b2"

// StartPeer starts the Daemon's Peer and returns once `virsh version`
// answers on its read-write socket, bounded by ctx. A Daemon has one Peer
// at most.
func (d *Daemon) StartPeer(ctx context.Context) (*Peer, error) {
	d.mu.Lock()
	if d.closed || d.peer != nil {
		d.mu.Unlock()
		return nil, errors.New("virtlab: the Daemon is closed or has a Peer")
	}
	p := &Peer{d: d, dir: filepath.Join(d.dir, "peer")}
	d.peer = p
	d.mu.Unlock()
	p.runDir = filepath.Join(p.dir, "run")
	if err := os.MkdirAll(p.runDir, 0o755); err != nil {
		return nil, fmt.Errorf("virtlab: peer: %w", err)
	}
	conf := filepath.Join(p.dir, "libvirtd.conf")
	qemuConf := filepath.Join(p.dir, "qemu.conf")
	for path, text := range map[string]string{
		conf:     strings.Replace(d.config(), strconv.Quote(d.runDir), strconv.Quote(p.runDir), 1) + "host_uuid = " + strconv.Quote(peerHostUUID) + "\n",
		qemuConf: "# Written by internal/virtlab for its Peer: QEMU's output to files, no virtlogd.\nstdio_handler = \"file\"\n",
	} {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			return nil, fmt.Errorf("virtlab: peer: %w", err)
		}
	}
	// The namespaces end with libvirtd, and their mounts with them.
	script := `set -e
mount -t tmpfs tmpfs /run
mkdir /run/libvirt
for dir in /var/lib/libvirt /var/log/libvirt /var/cache/libvirt /etc/libvirt/qemu; do mount -t tmpfs tmpfs "$dir"; done
mkdir /var/lib/libvirt/qemu /var/log/libvirt/qemu
chown libvirt-qemu:libvirt-qemu /var/lib/libvirt/qemu
mount --bind "$1" /etc/libvirt/qemu.conf
hostname ` + PeerHostname + `
exec "$2" --config "$3" --pid-file /run/libvirtd.pid
`
	proc, err := d.startProc("peer libvirtd", "unshare", "--mount", "--uts", "--propagation", "private",
		"sh", "-c", script, "virtlab-peer", qemuConf, d.tools.Libvirtd, conf)
	if err != nil {
		return nil, err
	}
	p.libvirt = proc
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if _, err := p.Virsh(ctx, "version"); err == nil {
			return p, nil
		}
		select {
		case <-proc.exited:
			return nil, fmt.Errorf("virtlab: peer libvirtd exited (%v) before it was ready\n%s", proc.err, d.outputHint())
		case <-ctx.Done():
			return nil, fmt.Errorf("virtlab: peer libvirtd not ready: %w\n%s", ctx.Err(), d.outputHint())
		case <-tick.C:
		}
	}
}

// URI returns the URI of the Peer's read-write socket.
func (p *Peer) URI() string {
	return "qemu:///system?socket=" + filepath.Join(p.runDir, "libvirt-sock")
}

// Virsh runs virsh against the Peer's read-write socket.
func (p *Peer) Virsh(ctx context.Context, args ...string) (string, error) {
	return p.d.virsh(ctx, append([]string{"-c", p.URI()}, args...)...)
}

// MigrateTo migrates the running domain live to the Peer, at most
// bandwidthMiB MiB/s (0: no limit), and returns once it runs there.
func (x *Domain) MigrateTo(ctx context.Context, p *Peer, bandwidthMiB int) error {
	return x.d.migrate(ctx, x.d.URI(), x.name, p.URI(), bandwidthMiB)
}

// MigrateBack migrates the domain, running on the Peer, live back to the
// Daemon.
func (p *Peer) MigrateBack(ctx context.Context, x *Domain) error {
	return p.d.migrate(ctx, p.URI(), x.name, x.d.URI(), 0)
}

// migrate has virsh migrate a domain live between two libvirtds, through
// a free TCP port of 127.0.0.1 (libvirt's default would name the
// destination by its host name, which does not resolve).
func (d *Daemon) migrate(ctx context.Context, from, name, to string, bandwidthMiB int) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("virtlab: migrate: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	args := []string{"-c", from, "migrate", "--live", name, to,
		"--migrateuri", "tcp://127.0.0.1:" + strconv.Itoa(port), "--listen-address", "127.0.0.1"}
	if bandwidthMiB > 0 {
		args = append(args, "--bandwidth", strconv.Itoa(bandwidthMiB))
	}
	_, err = d.virsh(ctx, args...)
	return err
}

// close destroys the Peer's domains and stops it (SIGTERM, then SIGKILL),
// bounded by ctx. Its namespaces and their mounts end with it.
func (p *Peer) close(ctx context.Context) error {
	if p.libvirt == nil || !p.libvirt.running() {
		return nil
	}
	var errs []error
	names, err := p.Virsh(ctx, "list", "--name")
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range strings.Fields(names) {
		if _, err := p.Virsh(ctx, "destroy", name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.libvirt.stop(ctx, syscall.SIGTERM); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killOrphanGuests kills the QEMU processes of domains named NamePrefix...
// that no libvirtd knows: those a Peer ran when its test process died,
// whose state went with the Peer's namespace. Start calls it once its
// libvirtd has removed the domains left behind, so any such QEMU left is
// an orphan.
func killOrphanGuests() error {
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		return fmt.Errorf("virtlab: %w", err)
	}
	for _, path := range procs {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // gone meanwhile
		}
		args := strings.Split(string(b), "\x00")
		if !strings.HasPrefix(filepath.Base(args[0]), "qemu-system-") || !slices.ContainsFunc(args, isVirtlabGuestName) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		if err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	return nil
}

// isVirtlabGuestName reports whether a QEMU argument is libvirt's -name
// value of a domain named NamePrefix... ("guest=NAME,debug-threads=on").
func isVirtlabGuestName(arg string) bool { return strings.HasPrefix(arg, "guest="+NamePrefix) }
