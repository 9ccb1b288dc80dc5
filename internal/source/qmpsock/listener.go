package qmpsock

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-kit/log/level"
	"github.com/qmp-exporter/qmp_exporter/internal/logging"
	"github.com/qmp-exporter/qmp_exporter/internal/sockfile"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"

	"github.com/qmp-exporter/qmp_exporter/qmp"
)

// ListenOptions configure a listener on which QEMUs dial the exporter
// (a client-mode chardev: -chardev socket,path=...,reconnect=5 -mon
// chardev=...,mode=control). QEMU still speaks as the QMP server on the
// connection; the exporter is the client, as with a socket it dials.
type ListenOptions struct {
	// Name labels the listener's metrics and logs: its path or address.
	Name string
	// AllowedUIDs, if not empty, are the only user ids whose processes
	// may connect (unix sockets; checked with SO_PEERCRED). A peer whose
	// credentials cannot be read is then refused.
	AllowedUIDs []uint32
	// Labels are added to every series of the VMs that dial in here.
	Labels map[string]string
	// MaxVMs bounds the VMs the Source keeps from dialling in (on all
	// its listeners) when one more dials in here; zero means
	// DefaultMaxDialledIn. See attach for what happens at the bound.
	MaxVMs int
}

// DefaultMaxDialledIn is ListenOptions.MaxVMs when it is zero: far more
// QEMUs than one host runs, few enough that a client inventing a new
// UUID on every connection cannot grow the exporter without bound.
const DefaultMaxDialledIn = 1024

// maxHandshakes bounds the connections of one listener that may be in
// their handshake at once; more are refused, so a flood of connections
// cannot pile up goroutines.
const maxHandshakes = 64

// maxHandshakesPerPeer bounds the handshakes in progress from one peer
// process (by the pid SO_PEERCRED reports). A QEMU opens one connection
// per chardev and waits for it, so it never needs more; without this bound
// a single process that opens connections and stays silent would fill
// every slot of maxHandshakes, and every real QEMU dialling in would be
// refused for as long as it kept at it. Peers whose credentials cannot be
// read (TCP) share only the listener-wide bound.
const maxHandshakesPerPeer = 4

// maxQueuedEvents bounds the events kept from a dialled-in connection
// between its handshake and the moment it is attached to its VM.
const maxQueuedEvents = 256

// listenerLogInterval is how often a listener logs each kind of trouble
// at most (a refused or failed connection, a VM dialling in): a client
// that connects in a loop costs counters, not a log line per connection.
// The line after a quiet spell says how many were left out.
const listenerLogInterval = 10 * time.Second

// listener is the state of one Serve call.
type listener struct {
	lo ListenOptions
	// cred reads a connection's peer credentials (peerCred; tests fake it).
	cred func(net.Conn) (peerCredentials, error)
	// slots holds a token per handshake in progress.
	slots chan struct{}

	mu      sync.Mutex
	perPeer map[int32]int // handshakes in progress by peer pid
	// logs lets one line of a kind per listenerLogInterval through.
	logs *logging.Limiter
}

func newListener(lo ListenOptions, cred func(net.Conn) (peerCredentials, error)) *listener {
	if lo.MaxVMs <= 0 {
		lo.MaxVMs = DefaultMaxDialledIn
	}
	return &listener{lo: lo, cred: cred, slots: make(chan struct{}, maxHandshakes), perPeer: make(map[int32]int),
		logs: logging.NewLimiter(listenerLogInterval)}
}

// Serve accepts connections on ln until ctx ends, identifies the VM on
// each (query-name, query-uuid) and hands the session to that VM's
// watcher: the same VM dialling again, after a QEMU or exporter restart,
// continues the same series. It closes ln when ctx ends and returns after
// every handshake it started has finished.
//
// What a client of the listener can cost is bounded: each handshake by
// DialTimeout plus two CommandTimeouts, the handshakes in progress by
// maxHandshakes (maxHandshakesPerPeer from one process), the VMs kept by
// ListenOptions.MaxVMs, and the log lines by listenerLogInterval.
func (s *Source) Serve(ctx context.Context, ln net.Listener, lo ListenOptions) error {
	return s.serve(ctx, ln, newListener(lo, peerCred))
}

func (s *Source) serve(ctx context.Context, ln net.Listener, l *listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.listenerWarn(l, "accept", 0, "accept failed", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		cred, release, ok := s.admit(l, nc)
		if !ok {
			continue
		}
		wg.Go(func() {
			defer release()
			s.dialIn(ctx, nc, l, cred)
		})
	}
}

// admit decides, at once, whether nc may start its handshake: its uid
// must be allowed, and a slot free both on the listener and for its peer
// process. A refused connection is closed and counted. release gives the
// slots back once the handshake is over.
func (s *Source) admit(l *listener, nc net.Conn) (cred peerCredentials, release func(), ok bool) {
	cred, credErr := l.cred(nc)
	if len(l.lo.AllowedUIDs) > 0 && (credErr != nil || !slices.Contains(l.lo.AllowedUIDs, cred.uid)) {
		s.countListener(l.lo.Name, "refused")
		s.listenerWarn(l, "uid", cred.pid, "refused a peer whose uid is not allowed", "uid", cred.uid, "pid", cred.pid, "err", credErr)
		nc.Close()
		return cred, nil, false
	}
	select {
	case l.slots <- struct{}{}:
	default:
		s.countListener(l.lo.Name, "refused")
		s.listenerWarn(l, "busy", cred.pid, "too many connections in their handshake; refusing one", "pid", cred.pid)
		nc.Close()
		return cred, nil, false
	}
	pid := int32(0)
	if credErr == nil && cred.pid > 0 {
		pid = cred.pid
	}
	if pid != 0 {
		l.mu.Lock()
		n := l.perPeer[pid]
		if n >= maxHandshakesPerPeer {
			l.mu.Unlock()
			<-l.slots
			s.countListener(l.lo.Name, "refused")
			s.listenerWarn(l, "peer-busy", pid, "too many connections in their handshake from one process; refusing one", "pid", pid, "uid", cred.uid)
			nc.Close()
			return cred, nil, false
		}
		l.perPeer[pid] = n + 1
		l.mu.Unlock()
	}
	return cred, func() {
		if pid != 0 {
			l.mu.Lock()
			if l.perPeer[pid]--; l.perPeer[pid] <= 0 {
				delete(l.perPeer, pid)
			}
			l.mu.Unlock()
		}
		<-l.slots
	}, true
}

// dialIn runs the handshake and the identity queries on an admitted
// connection and attaches the session to its VM.
func (s *Source) dialIn(ctx context.Context, nc net.Conn, l *listener, cred peerCredentials) {
	r := &relay{}
	hctx, cancel := context.WithTimeout(ctx, s.opts.DialTimeout)
	defer cancel()
	conn, err := qmp.NewConn(hctx, nc, qmp.Options{OnEvent: r.event, OnProtocolError: r.protocolError, MaxMessageBytes: s.opts.MaxMessageBytes})
	if err != nil {
		s.countListener(l.lo.Name, "failed")
		s.listenerWarn(l, "handshake", cred.pid, "handshake with a dialled-in peer failed", "pid", cred.pid, "err", err)
		return
	}
	var name struct {
		Name string `json:"name"`
	}
	var uuid struct {
		UUID string `json:"UUID"`
	}
	for _, q := range []struct {
		cmd string
		out any
	}{{"query-name", &name}, {"query-uuid", &uuid}} {
		qctx, qcancel := context.WithTimeout(ctx, s.opts.CommandTimeout)
		err := conn.Execute(qctx, q.cmd, nil, q.out)
		qcancel()
		if err != nil {
			s.countListener(l.lo.Name, "failed")
			s.listenerWarn(l, "identify", cred.pid, "identifying a dialled-in peer failed", "pid", cred.pid, "err", err)
			conn.Close()
			<-conn.Done()
			return
		}
	}
	id, ok := s.attach(dialInIdentity(uuid.UUID, name.Name, cred, nc), name.Name, l, cred, conn, r)
	if !ok {
		s.countListener(l.lo.Name, "refused")
		s.listenerWarn(l, "full", cred.pid, "too many VMs have dialled in, none of them gone; refusing a new one", "max_vms", l.lo.MaxVMs, "identity", id, "pid", cred.pid)
		conn.Close()
		<-conn.Done()
		return
	}
	s.countListener(l.lo.Name, "accepted")
	// A VM that reconnects in a loop, or a process that dials in as a
	// new VM each time, is logged once per interval.
	key := "in\x00" + id
	if cred.pid > 0 {
		key = "in\x00" + strconv.Itoa(int(cred.pid))
	}
	l.logs.Log(level.Info(s.opts.Logger), key,
		"msg", "vm dialled in", "listener", l.lo.Name, "qemu_name", name.Name, "uuid", uuid.UUID, "pid", cred.pid, "identity", id)
}

// listenerWarn logs a warning about the listener, at most one per kind and
// peer process per listenerLogInterval (so each broken client gets its
// line, and none gets more); the next one says how many were left out.
func (s *Source) listenerWarn(l *listener, kind string, pid int32, msg string, kv ...any) {
	l.logs.Log(level.Warn(s.opts.Logger), kind+"\x00"+strconv.Itoa(int(pid)),
		append([]any{"msg", msg, "listener", l.lo.Name}, kv...)...)
}

// dialInIdentity names the VM behind a dialled-in connection: its UUID if
// QEMU was given one, else its -name, else the connection itself (such a
// VM cannot be recognised when it dials again).
func dialInIdentity(uuid, name string, cred peerCredentials, nc net.Conn) string {
	switch {
	case uuid != "" && uuid != vmstate.ZeroUUID:
		return "uuid:" + vmstate.CleanLabel(uuid)
	case name != "":
		return "name:" + vmstate.CleanLabel(name)
	case cred.pid > 0:
		return "pid:" + strconv.Itoa(int(cred.pid))
	}
	return "peer:" + nc.RemoteAddr().String()
}

// dialledIn is a session handed from a listener to a watcher.
type dialledIn struct {
	conn  *qmp.Conn
	relay *relay
	pid   int32 // the QEMU process (SO_PEERCRED); 0 when unknown
}

// attach gives a dialled-in session to the watcher of its VM, creating
// the watcher the first time the VM dials in, and reports whether it did
// and under which identity (id, or id#2... for another QEMU that reports
// the same; see dialInKeyLocked, which also says when a newer connection
// replaces a live one).
//
// A new VM is refused (false) when l.lo.MaxVMs VMs that dialled in are
// known and every one of them is connected or about to be; if some are
// gone, the one gone longest is forgotten first, as StaleAfter would have
// forgotten it later. So a client that makes up a new identity on every
// connection cannot grow the exporter's memory and series without bound,
// and cannot push out a VM that is connected.
func (s *Source) attach(id, name string, l *listener, cred peerCredentials, conn *qmp.Conn, r *relay) (string, bool) {
	s.mu.Lock()
	pid := max(cred.pid, 0)
	key, mw := s.dialInKeyLocked(id, name, pid)
	id = strings.TrimPrefix(key, dialInKeyPrefix)
	if mw == nil {
		ok, forgot := s.makeRoomLocked(l.lo.MaxVMs)
		if !ok {
			s.mu.Unlock()
			return id, false
		}
		if forgot != "" {
			defer l.logs.Log(level.Info(s.opts.Logger), "forgot",
				"msg", "forgot the vm that dialled in and has been gone longest, to make room for a new one", "listener", l.lo.Name, "identity", forgot, "max_vms", l.lo.MaxVMs)
		}
		t := Target{Network: "dialin", Address: id, Labels: l.lo.Labels}
		meta := t.meta()
		meta.HideWhenStale = true
		vm, err := s.fleet.Add(key, meta, time.Now())
		if err != nil { // the source's keys and the fleet's agree: cannot happen
			s.mu.Unlock()
			return id, false
		}
		w := newWatcher(t, vm, s.opts, nil)
		peer := "id:" + id
		if cred.pid > 0 {
			peer = "pid:" + strconv.Itoa(int(cred.pid))
		}
		// The watcher's lines pass through the listener's limiter, keyed
		// by peer (the process that first dialled in as the VM) and
		// message. A QEMU is one process per VM, so each VM still gets
		// its lines, at most one of a kind per listenerLogInterval; a
		// process that dials in as a new VM on every connection gets no
		// more than that in all, rather than a warning for every VM it
		// makes up.
		w.logger = l.logs.Keyed(w.logger, "vm\x00"+peer+"\x00")
		w.dynamic = true
		w.dialTimeout = 0
		w.incoming = make(chan dialledIn, 1)
		w.dial = w.awaitDialIn
		// The watcher keeps its backoff: a real QEMU dials again every
		// few seconds (reconnect=), far slower than the first steps of
		// the backoff, so it waits for nothing. But a peer whose sessions
		// keep failing and that dials again at once is paced like a VM the
		// exporter dials, so that each of its failed sessions (and its log
		// lines) cannot come faster than the backoff; meanwhile its latest
		// connection waits in incoming, its events kept by its relay.
		w.noFollowUps = s.noFollowUps
		mw = &managed{w: w}
		s.watchers[key] = mw
		if s.ctx != nil {
			s.start(mw)
		}
	}
	mw.latest = handoff{conn: conn, pid: pid, name: name}
	running := s.ctx != nil
	s.mu.Unlock()
	if !running {
		conn.Close()
		return id, true
	}
	w := mw.w
	// The live session, if any, is replaced: note it before handing the
	// new one over, since the watcher may take the new one at once.
	w.vm.LockRead()
	old := w.live
	w.vm.Unlock()
	for {
		select {
		case w.incoming <- dialledIn{conn, r, pid}:
			if old != nil {
				// The VM is on its new connection: fold what
				// the old one still holds, then let it go.
				old.Drain()
			}
			return id, true
		default:
		}
		// An older connection is still queued: drop it for this one.
		select {
		case old := <-w.incoming:
			old.conn.Close()
		default:
		}
	}
}

// dialInKeyPrefix starts the Source's (and the fleet's) keys of VMs that
// dialled in; the identity follows.
const dialInKeyPrefix = "dialin\x00"

// dialInKeyLocked returns the key of the VM that a connection from QEMU
// process pid (0: unknown) reporting -name name belongs to, and its
// watcher, nil for a VM new to the Source. Its identity id (from the UUID,
// see dialInIdentity) may already belong to a connected VM (its latest
// connection still open, whether its watcher has taken it yet or not)
// that is another QEMU, a clone with the same -uuid: the connection is
// then another VM, id#2 (or #3...).
//
// A connected VM is this connection's own only when the name matches and
// no process is known on either side (TCP): a QEMU that dials again while
// its old connection still looks alive, which the new one replaces.
// Otherwise a connected VM keeps its connection, whatever its process: a
// unix socket's peer is gone from it before the same QEMU can dial again,
// so a second open connection is another QEMU, or a second monitor of the
// same one, which becomes a VM of its own that the fleet shows once,
// rather than the two connections pushing each other off at every
// reconnect. A VM that is not connected is taken by its QEMU coming back:
// the one that had this name first, else the first one (a renamed VM,
// whose state starts again, as on a socket). Called with s.mu held.
func (s *Source) dialInKeyLocked(id, name string, pid int32) (string, *managed) {
	var idleKey string
	var idle *managed
	for n := 1; ; n++ {
		key := dialInKeyPrefix + id
		if n > 1 {
			key += "#" + strconv.Itoa(n)
		}
		mw := s.watchers[key]
		if mw == nil {
			if idle != nil {
				return idleKey, idle
			}
			return key, nil
		}
		h := mw.latest
		switch sameName := h.name == name; {
		case h.alive() && sameName && h.pid == 0 && pid == 0:
			return key, mw
		case h.alive():
		case sameName:
			return key, mw
		case idle == nil:
			idleKey, idle = key, mw
		}
	}
}

// makeRoomLocked makes sure fewer than max VMs that dialled in are known,
// forgetting the one that has been gone longest if need be (its identity
// is returned); it reports false when all of them are connected, or have
// a session on its way to them. Called with s.mu held.
func (s *Source) makeRoomLocked(max int) (ok bool, forgot string) {
	n := 0
	var oldestKey string
	var oldest time.Time
	for k, mw := range s.watchers {
		if !mw.w.dynamic {
			continue
		}
		n++
		w := mw.w
		st := w.vm.LockRead()
		gone := !st.Up && !st.DownSince.IsZero() && w.live == nil && len(w.incoming) == 0
		since := st.DownSince
		w.vm.Unlock()
		if gone && (oldestKey == "" || since.Before(oldest)) {
			oldestKey, oldest = k, since
		}
	}
	if n < max {
		return true, ""
	}
	if oldestKey == "" {
		return false, ""
	}
	forgot = s.watchers[oldestKey].w.target.Address
	s.forgetLocked(oldestKey)
	return true, forgot
}

// awaitDialIn is the dial function of a dialled-in VM's watcher: it waits
// for the listener to hand over the next session.
func (w *watcher) awaitDialIn(ctx context.Context, _, _ string, opts qmp.Options) (*qmp.Conn, int32, error) {
	select {
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	case d := <-w.incoming:
		d.relay.attach(opts.OnEvent, opts.OnProtocolError)
		return d.conn, d.pid, nil
	}
}

// relay holds a dialled-in connection's events until the connection is
// attached to its VM's watcher, then forwards them.
type relay struct {
	mu      sync.Mutex
	onEvent func(qmp.Event)
	onError func(error)
	queued  []qmp.Event
}

func (r *relay) event(ev qmp.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.onEvent != nil {
		r.onEvent(ev)
		return
	}
	if len(r.queued) < maxQueuedEvents {
		ev.Data = bytes.Clone(ev.Data) // Data is only valid during the call
		r.queued = append(r.queued, ev)
	}
}

func (r *relay) protocolError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.onError != nil {
		r.onError(err)
	}
}

func (r *relay) attach(onEvent func(qmp.Event), onError func(error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range r.queued {
		onEvent(ev)
	}
	r.queued = nil
	r.onEvent, r.onError = onEvent, onError
}

// OpenListener opens the socket on which QEMUs dial in: a TCP address if
// address is set, else the unix socket path, whose stale file from an
// earlier run is replaced (only if it is a socket) and which gets mode.
// It returns the listener's name for logs and metrics: its address or
// path.
func OpenListener(path, address string, mode fs.FileMode) (net.Listener, string, error) {
	if address != "" {
		ln, err := net.Listen("tcp", address)
		return ln, address, err
	}
	if err := sockfile.RemoveStale(path); err != nil {
		return nil, path, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, path, err
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, path, err
	}
	return ln, path, nil
}
