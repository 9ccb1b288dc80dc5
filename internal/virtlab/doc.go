// Package virtlab starts a real, private libvirtd and drives real QEMU
// domains through it, for end-to-end tests of the exporter's libvirt
// source. It needs root and Debian's libvirt-daemon-system,
// libvirt-daemon-driver-qemu and libvirt-clients (libvirt 9.0, QEMU 7.2 on
// Debian 12); Require skips a test without them, or fails it under CI=true.
//
// # What is checked to work
//
// TestDaemon, on a machine without KVM or systemd: Start (and StartT), a
// domain with a CD-ROM, VNC, an i6300esb watchdog, an ISA pvpanic and a
// virtio balloon; Domain.Suspend ("paused (user)"), Resume ("running
// (unpaused)"), Reset (state unchanged), EjectCDROM and InsertCDROM (virsh
// domblklist follows), StopLibvirtd and StartLibvirtd, KillLibvirtd,
// Restart (the same QEMU process and domain ID before and after), Destroy
// ("shut off (destroyed)", ID -1), Start ("running (booted)", same UUID, new
// ID), Tainted (none, then "tainted: custom monitor control commands
// issued" after virsh qemu-monitor-command), Undefine of a running domain
// (transient, gone after Destroy), a second domain, the read-only socket
// (reads work, Suspend is forbidden), Close (every QEMU gone, definitions,
// logs and directory removed; twice is fine), and the machine-wide lock.
// TestLeftoversRemoved: a test process that exits without Close leaves no
// daemon, and the next Start removes its domain. The watchdog and the
// panic device are only present: SeaBIOS never fires them.
//
// # The private daemon
//
// Debian 12 ships the monolithic libvirtd (no virtqemud). Start runs it in
// the foreground as a child, with --config and --pid-file in a directory
// of its own under os.TempDir() (Daemon.Dir, mode 0755):
//
//	libvirtd.conf  unix_sock_dir = <dir>/run; auth_unix_ro/rw = "none" (no
//	               polkit, no D-Bus here); listen_tcp/tls = 0;
//	               log_outputs = "3:stderr"; audit_level = 0
//	run/           libvirt-sock (read-write, 0700), libvirt-sock-ro
//	               (read-only, 0777), libvirt-admin-sock
//	media/         CD-ROM images (Media, NewMedia)
//	domains/       the XML given to virsh define
//	daemons.log    libvirtd's and virtlogd's stderr (Output)
//
// libvirtd does not create unix_sock_dir; Start does. Clients reach the
// daemon with virsh -c 'qemu:///system?socket=<dir>/run/libvirt-sock'
// (Daemon.URI; add -r for the read-only socket, which refuses changes with
// "operation forbidden: read only access prevents ..."). The QEMU driver
// still reads the machine's /etc/libvirt/qemu.conf: no option moves it.
// libvirtd logs a few errors at every start that are normal here (no
// dnsmasq, no system D-Bus, no DMI or /dev/mem, no /dev/kvm), and after a
// restart errors about cgroup.threads while it reconnects to domains.
//
// virtlogd is not private: its socket is always /run/libvirt/virtlogd-sock
// (VirtlogdSocket), which the QEMU driver dials to hand over each domain's
// stdout and stderr. Start shares a virtlogd that already answers there,
// else starts one (foreground child) and stops it in Close, after
// libvirtd. Restart leaves it alone.
//
// QEMU runs as libvirt-qemu, so every file a domain opens must be readable
// by that user through searchable directories: a t.TempDir() (0700) is
// not, which is why the media live in the Daemon's own 0755 directory
// (Options.TempDir must be searchable; Start checks). While a domain uses
// an image, libvirt hands its ownership to libvirt-qemu.
//
// # One Daemon per machine
//
// Two privileged libvirtds cannot run on one machine, whatever their
// sockets: much of their state is compiled-in and machine-wide. Each
// driver locks /run/libvirt/<driver>/driver.pid (a second libvirtd logs
// "Failed to acquire pid file '/run/libvirt/network/driver.pid'" and exits,
// with status 0); domain status lives in /run/libvirt/qemu/NAME.{xml,pid},
// persistent definitions in /etc/libvirt/qemu/NAME.xml, runtime directories
// in /var/lib/libvirt/qemu/domain-ID-NAME, logs in /var/log/libvirt/qemu,
// QEMU capabilities in /var/cache/libvirt/qemu. A libvirtd also takes over
// every domain it finds in /run/libvirt/qemu. So:
//
//   - Start takes an exclusive flock on LockPath first, waiting as long as
//     its context allows. go test runs the test binaries of several
//     packages at once, and their Daemons take turns; StartT waits up to
//     five minutes. Within one process, a second Daemon while one is open
//     waits until its context ends: tests that use a Daemon must not call
//     t.Parallel with each other, and should share one Daemon where they
//     can.
//   - Start refuses to run while a libvirtd listens on the default socket
//     (SystemSocket), e.g. a system libvirtd.
//   - The daemons get SIGKILL when the process that started them dies
//     (Pdeathsig). Their pids are written into the lock file, and the next
//     Start kills any of them still running before it goes on (the lock is
//     released the moment a process dies; its daemons die a moment later).
//     QEMU does not die with libvirtd, so Start also destroys and undefines
//     the domains named NamePrefix... that a crashed run left, with their
//     logs. A crashed run's directory under os.TempDir() stays behind.
//
// # Domains
//
// DefineAndStart defines a persistent domain and starts it: TCG, 32 MiB,
// machine "pc", SeaBIOS, no disk and no network interface, so it idles in
// the firmware. Persistent rather than transient (virsh create) so that it
// outlives Destroy, as a production VM does. libvirt adds a USB controller,
// and a cirrus-vga for VNC. Its QMP monitor is a socket libvirt creates,
// /var/lib/libvirt/qemu/domain-ID-NAME/monitor.sock, and hands to QEMU as
// a file descriptor; libvirtd keeps the one connection QEMU serves, so
// another client connects but never gets a greeting.
//
// # Timings and what clients see (this machine kind, TCG, 2 cores)
//
//   - Start: about 4 s on a machine's first start (libvirtd probes QEMU's
//     capabilities; it caches them in /var/cache/libvirt/qemu), 0.2 to 0.3 s
//     later. A client that connects meanwhile is accepted and waits.
//   - DefineAndStart about 1 s; Destroy and Start again about 1 s.
//   - StopLibvirtd (SIGTERM) about 20 ms with one domain; StartLibvirtd
//     ready again about 0.2 s later. libvirtd removes its sockets as it
//     exits, so connecting fails with ENOENT until it is back; a connected
//     client sees the connection end (virsh event: "Disconnected from
//     qemu:///system?socket=... due to end of file") and must reconnect.
//     No event covers the downtime; the domains' state, reason and ID are
//     unchanged afterwards. After KillLibvirtd the socket files stay and
//     connecting is refused.
//   - Events (virsh event --all): Suspend gives lifecycle "Suspended
//     Paused", Resume "Resumed Unpaused", EjectCDROM tray-change "opened"
//     then "closed", InsertCDROM "closed", and Reset several "reboot"
//     events (three were seen: QEMU's reset, then SeaBIOS resets again).
//
// Domain IDs start at 1 with each fresh libvirtd (one without running
// domains to take over).
//
// This package is test tooling. It is not imported by the exporter.
package virtlab
