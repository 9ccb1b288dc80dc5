package collector

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"

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
}

// maxHandshakes bounds the connections of one listener that may be in
// their handshake at once; more are refused, so a flood of connections
// cannot pile up goroutines.
const maxHandshakes = 64

// maxQueuedEvents bounds the events kept from a dialled-in connection
// between its handshake and the moment it is attached to its VM.
const maxQueuedEvents = 256

// Serve accepts connections on ln until ctx ends, identifies the VM on
// each (query-name, query-uuid) and hands the session to that VM's
// watcher: the same VM dialling again, after a QEMU or exporter restart,
// continues the same series. It closes ln when ctx ends and returns after
// every handshake it started has finished.
func (m *Manager) Serve(ctx context.Context, ln net.Listener, lo ListenOptions) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, maxHandshakes)
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			level.Warn(m.opts.Logger).Log("msg", "accept failed", "listener", lo.Name, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			m.countListener(lo.Name, "refused")
			level.Warn(m.opts.Logger).Log("msg", "too many connections in their handshake; refusing one", "listener", lo.Name)
			nc.Close()
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			m.dialIn(ctx, nc, lo)
		})
	}
}

// dialIn checks the peer, runs the handshake and the identity queries, and
// attaches the session to its VM.
func (m *Manager) dialIn(ctx context.Context, nc net.Conn, lo ListenOptions) {
	logger := level.Info(m.opts.Logger)
	cred, credErr := peerCred(nc)
	if len(lo.AllowedUIDs) > 0 && (credErr != nil || !slices.Contains(lo.AllowedUIDs, cred.uid)) {
		m.countListener(lo.Name, "refused")
		level.Warn(m.opts.Logger).Log("msg", "refused a peer whose uid is not allowed", "listener", lo.Name, "uid", cred.uid, "pid", cred.pid, "err", credErr)
		nc.Close()
		return
	}
	r := &relay{}
	hctx, cancel := context.WithTimeout(ctx, m.opts.DialTimeout)
	defer cancel()
	conn, err := qmp.NewConn(hctx, nc, qmp.Options{OnEvent: r.event, OnProtocolError: r.protocolError, MaxMessageBytes: m.opts.MaxMessageBytes})
	if err != nil {
		m.countListener(lo.Name, "failed")
		level.Warn(m.opts.Logger).Log("msg", "handshake with a dialled-in peer failed", "listener", lo.Name, "pid", cred.pid, "err", err)
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
		qctx, qcancel := context.WithTimeout(ctx, m.opts.CommandTimeout)
		err := conn.Execute(qctx, q.cmd, nil, q.out)
		qcancel()
		if err != nil {
			m.countListener(lo.Name, "failed")
			level.Warn(m.opts.Logger).Log("msg", "identifying a dialled-in peer failed", "listener", lo.Name, "pid", cred.pid, "err", err)
			conn.Close()
			<-conn.Done()
			return
		}
	}
	id := dialInIdentity(uuid.UUID, name.Name, cred, nc)
	m.countListener(lo.Name, "accepted")
	logger.Log("msg", "vm dialled in", "listener", lo.Name, "qemu_name", name.Name, "uuid", uuid.UUID, "pid", cred.pid, "identity", id)
	m.attach(id, lo, conn, r)
}

// dialInIdentity names the VM behind a dialled-in connection: its UUID if
// QEMU was given one, else its -name, else the connection itself (such a
// VM cannot be recognised when it dials again).
func dialInIdentity(uuid, name string, cred peerCredentials, nc net.Conn) string {
	switch {
	case uuid != "" && uuid != zeroUUID:
		return "uuid:" + cleanLabel(uuid)
	case name != "":
		return "name:" + cleanLabel(name)
	case cred.pid > 0:
		return "pid:" + strconv.Itoa(int(cred.pid))
	}
	return "peer:" + nc.RemoteAddr().String()
}

// dialledIn is a session handed from a listener to a watcher.
type dialledIn struct {
	conn  *qmp.Conn
	relay *relay
}

// attach gives a dialled-in session to the watcher of its VM, creating
// the watcher the first time the VM dials in. A newer connection from the
// same VM replaces a live one.
func (m *Manager) attach(id string, lo ListenOptions, conn *qmp.Conn, r *relay) {
	m.mu.Lock()
	key := "dialin\x00" + id
	mw := m.watchers[key]
	if mw == nil {
		w := newWatcher(Target{Network: "dialin", Address: id, Labels: lo.Labels}, m.opts, nil)
		w.dynamic = true
		w.dialTimeout = 0
		w.incoming = make(chan dialledIn, 1)
		w.dial = w.awaitDialIn
		// Waiting for QEMU to dial again costs nothing, and QEMU's own
		// reconnect interval paces it: no backoff.
		w.backoff = func(int) time.Duration { return 0 }
		w.noFollowUps = m.noFollowUps
		mw = &managed{w: w}
		m.watchers[key] = mw
		if m.ctx != nil {
			m.start(mw)
		}
	}
	running := m.ctx != nil
	m.mu.Unlock()
	if !running {
		conn.Close()
		return
	}
	w := mw.w
	// The live session, if any, is replaced: note it before handing the
	// new one over, since the watcher may take the new one at once.
	w.mu.Lock()
	old := w.live
	w.mu.Unlock()
	for {
		select {
		case w.incoming <- dialledIn{conn, r}:
			if old != nil {
				old.Close()
			}
			return
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

// awaitDialIn is the dial function of a dialled-in VM's watcher: it waits
// for the listener to hand over the next session.
func (w *watcher) awaitDialIn(ctx context.Context, _, _ string, opts qmp.Options) (*qmp.Conn, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case d := <-w.incoming:
		d.relay.attach(opts.OnEvent, opts.OnProtocolError)
		return d.conn, nil
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

func (m *Manager) countListener(name, result string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.listenerCounts[[2]string{name, result}]++
}

// listenerMetrics returns the listeners' connection counters.
func (m *Manager) listenerMetrics() []prometheus.Metric {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]prometheus.Metric, 0, len(m.listenerCounts))
	for _, k := range slices.SortedFunc(maps.Keys(m.listenerCounts), func(a, b [2]string) int {
		return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1]))
	}) {
		out = append(out, prometheus.MustNewConstMetric(mListener.desc, prometheus.CounterValue, float64(m.listenerCounts[k]), k[0], k[1]))
	}
	return out
}
