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
// daemon, and the next Start removes its domain and unmounts its full
// disk's tmpfs. In TestDaemon the watchdog and the panic device are only
// present: SeaBIOS never fires them.
//
// TestGuestActions boots the guests of GuestImage (see "Guests that act"
// below) and checks the state (virsh domstate --reason) and the events of
// virsh event --all on the read-only socket, in this order:
//
//	guest, options                  events after "Started Booted"         state
//	GuestPanic, on_crash destroy    Crashed Panicked; Stopped Crashed     shut off (crashed)
//	GuestPanic, preserve            Crashed Panicked                      crashed (panicked)
//	  then Reset                    reboot                                paused (crashed)
//	  then Resume                   Resumed Unpaused; Crashed Panicked    crashed (panicked)
//	GuestPanic, restart             Crashed Panicked; reboot; Resumed     running (crashed)
//	                                Unpaused; ... again at every boot
//	GuestCrashLoaded                Crashed Crashloaded                   running (booted)
//	GuestWatchdog, ib700, pause     watchdog pause; Suspended Watchdog    paused (watchdog)
//	GuestWatchdog, ib700, poweroff  watchdog poweroff; Stopped Failed     shut off (crashed)
//	GuestWatchdog, ib700, none      watchdog none                         running (booted)
//	GuestWatchdog, ib700, reset     watchdog reset; reboot (2 or 3);      running (booted)
//	                                ... again every ~2.2 s
//	GuestDiskWrite, FullDisk        io-error; io-error-reason; Suspended  paused (I/O error)
//	                                I/O Error
//	  then Resume                   Resumed Unpaused; the same again      paused (I/O error)
//
// Lifecycle events are "TYPE DETAIL" as virsh prints them (event
// 'lifecycle': "Crashed Panicked" is VIR_DOMAIN_EVENT_CRASHED with detail
// VIR_DOMAIN_EVENT_CRASHED_PANICKED). With on_crash destroy or preserve a
// "Suspended Paused" sometimes comes just before "Crashed Panicked" (QEMU's
// STOP racing libvirt's panic handling); "Stopped Crashed" follows 1.4
// to 2 s after it. Note the watchdog's poweroff: the event says
// "Stopped Failed" (QEMU exits by itself), the state "shut off
// (crashed)". The watchdog event carries the action ("pause",
// "poweroff", "none", "reset"). The I/O error events carry the image's
// path, the alias ide0-0-0 (QEMU's qdev id) and the action "pause"
// (VIR_DOMAIN_EVENT_IO_ERROR_PAUSE; error_policy 'stop'), and
// io-error-reason the reason "enospc"; virsh domblkerror says "hda: no
// space". After a libvirtd restart the running domains keep state and
// reason ("crashed (panicked)", "paused (watchdog)", "paused (I/O
// error)"), but a shut off one is "shut off (unknown)": libvirt keeps no
// shut-off reason across restarts. The test restarts the looping domains'
// guests no further: it destroys them once checked (lifecycle "Shutdown
// Finished after host request", then "Stopped Destroyed").
//
// TestPeerMigration: StartPeer, a second libvirtd in mount and UTS
// namespaces of its own (see Peer), to which Domain.MigrateTo migrates a
// domain live over 127.0.0.1, leaving it "shut off (migrated)" on the
// Daemon and "running (migrated)" on the Peer, and from which
// Peer.MigrateBack brings it back ("running (migrated)"); Close destroys
// a domain left on the Peer and stops the Peer. libvirt relays each pass
// of such a migration, and of a virsh save or dump (QEMU migrating into a
// file), as a migration-iteration event; GuestBallast gives the migration
// 8 MiB to move, which a dump into a pipe nobody reads cannot get past,
// nor a migration limited to 1 MiB/s for several seconds.
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
//	media/         CD-ROM images (Media, NewMedia), guest kernels
//	               (GuestImage)
//	domains/       the XML given to virsh define
//	full/NAME/     a tmpfs mount per full disk (DomainOptions.FullDisk)
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
// DefineAndStart defines a persistent domain (Define) and starts it: TCG,
// 32 MiB, machine "pc", SeaBIOS, no disk and no network interface, so it
// idles in the firmware, unless DomainOptions.Kernel gives it a guest. Persistent rather than transient (virsh create) so that it
// outlives Destroy, as a production VM does. libvirt adds a USB controller,
// and a cirrus-vga for VNC. Its QMP monitor is a socket libvirt creates,
// /var/lib/libvirt/qemu/domain-ID-NAME/monitor.sock, and hands to QEMU as
// a file descriptor; libvirtd keeps the one connection QEMU serves, so
// another client connects but never gets a greeting.
//
// # Guests that act
//
// No guest OS is needed to make a domain panic, let its watchdog fire or
// fail a disk write: GuestImage writes a few dozen bytes of 32-bit x86
// code, assembled by hand in guest.go, behind a multiboot (v1) header, and
// DomainOptions.Kernel boots it (<os><kernel>, QEMU's -kernel). Facts a
// maintainer needs:
//
//   - QEMU loads a -kernel that is not a Linux bzImage as multiboot. The
//     image is a flat binary, so its header must set flag bit 16 and the
//     address fields (header_addr = load_addr = 1 MiB, load_end_addr and
//     bss_end_addr 0, entry_addr right after the 32-byte header); QEMU
//     refuses flag bit 2 (video mode). SeaBIOS runs QEMU's multiboot option
//     ROM (boot index 0, so before any disk, even a disk libvirt gives
//     bootindex 1 with its implicit <boot dev='hd'/>), which enters the
//     code in 32-bit protected mode, flat segments, paging and interrupts
//     off. Every guest ends in cli; hlt (forever, as far as QEMU is
//     concerned: a halted, idle vCPU).
//   - pvpanic (<panic model='isa'/>, DomainOptions.Panic) is port 0x505:
//     writing 1 is a panic, 2 "crash kernel loaded". QEMU stops the vCPUs
//     (libvirt runs it with -no-shutdown) and libvirt does <on_crash>:
//     destroy (libvirt's default, and DomainOptions' default) ends in "shut
//     off (crashed)", preserve in "crashed (panicked)", restart reboots
//     ("running (crashed)"), in a loop here since the guest panics at
//     every boot. "paused (crashed)" is what libvirt makes of a preserved
//     crashed domain that is reset (virsh reset), or of one whose QEMU is
//     in guest-panicked when libvirtd reconnects to it and thought it
//     running.
//   - ib700 (<watchdog model='ib700'>, WatchdogModel WatchdogIB700): a
//     write to port 0x443 arms it, the low four bits choosing 30, 28, ...,
//     2, 0 s; GuestWatchdog writes 0x0E, 2 s (GuestWatchdogTimeout), and
//     never refreshes it. It fired 2.14 to 2.15 s after "Started Booted".
//     GuestWatchdog does not arm the default i6300esb (a PCI device).
//   - GuestDiskWrite: one ATA PIO WRITE SECTORS (0x30, LBA28) of sector 0
//     to the primary master (ports 0x1F0 to 0x1F7, 0x3F6), target hda:
//     256 words with rep outsw once DRQ is set. DomainOptions.FullDisk
//     puts a raw image there (error_policy and rerror_policy 'stop') that
//     lies on a tmpfs of its own, 64 KiB, mounted at full/NAME (source
//     "virtlab-fulldisk" in /proc/self/mountinfo), created as a 1 MiB
//     sparse file, then the tmpfs is filled by another file: writing to
//     the image's hole fails with ENOSPC, reading works. QEMU (cache
//     writeback, no O_DIRECT) gets ENOSPC at once and stops with
//     BLOCK_IO_ERROR. Each resume retries the write, which fails again.
//     Close unmounts the tmpfs (lazily, MNT_DETACH); Start unmounts those
//     a crashed run left.
//   - QEMU reads the kernel and the image as libvirt-qemu, which is why
//     both live under the Daemon's 0755 directory; libvirt hands the disk
//     image's ownership to libvirt-qemu while the domain runs.
//   - A guest acts within about 150 ms of the start, so a client that must
//     see it calls Define, connects, then Domain.Start. virsh event prints
//     nothing once it has registered; TestGuestActions defines the domain
//     again (same UUID, "Defined Updated") until an event shows.
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
//     Define gives "Defined Added" (again: "Defined Updated"), Start
//     "Resumed Unpaused" then "Started Booted". For the guests' actions
//     see "What is checked to work".
//   - TestGuestActions takes about 40 s; a panic, crash-loaded or disk
//     write shows 130 to 150 ms after "Started Booted", the watchdog about
//     2.15 s after it.
//
// Domain IDs start at 1 with each fresh libvirtd (one without running
// domains to take over).
//
// This package is test tooling. It is not imported by the exporter.
package virtlab
