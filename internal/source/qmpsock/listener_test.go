package qmpsock

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-kit/log"
	"github.com/go-logfmt/logfmt"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/logging"
	"github.com/qmp-exporter/qmp_exporter/qmp"
	"github.com/qmp-exporter/qmp_exporter/qmp/qmptest"
)

// dialInFake returns a QEMU that dials in with the given name and UUID.
func dialInFake(t *testing.T, name, uuid string) (net.Conn, *qmptest.Server) {
	return qmptest.New(t, qmptest.Options{Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
		switch cmd.Execute {
		case "query-name":
			return qmptest.Return(map[string]string{"name": name}), true
		case "query-uuid":
			return qmptest.Return(map[string]string{"UUID": uuid}), true
		case "query-status":
			return qmptest.Return(map[string]any{"status": "running", "running": true}), true
		case "query-version":
			return qmptest.ReturnRaw(`{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}`), true
		}
		return qmptest.Reply{}, false
	}})
}

// TestDialInIdentity: a VM that dials in again (after a QEMU restart) is
// the same series, recognised by its UUID; another UUID is another VM;
// a VM that stays away past StaleAfter is forgotten.
func TestDialInIdentity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := New(fleet.New(fleet.Options{StaleAfter: time.Minute}), Options{})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { m.Run(ctx); close(done) }()
		defer func() { cancel(); <-done }()
		synctest.Wait()
		lo := ListenOptions{Name: "/run/qmp_exporter/qmp.sock", Labels: map[string]string{"host": "hv1"}}
		const u1 = "11111111-2f0e-4d59-9d4b-7c1c7d0e2a11"

		c1, s1 := dialInFake(t, "web", u1)
		go serveConn(ctx, m, lo, c1)
		synctest.Wait()
		if err := s1.Emit("STOP", nil); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		got := scrape(t, m, "qmp_up", "qmp_events_total", "qmp_listener_connections_total")
		for _, w := range []string{`qmp_up{host="hv1",vm="web"} 1`, `qmp_events_total{event="STOP",host="hv1",vm="web"} 1`,
			`qmp_listener_connections_total{listener="/run/qmp_exporter/qmp.sock",result="accepted"} 1`} {
			if !strings.Contains(got, w) {
				t.Errorf("missing %s in\n%s", w, got)
			}
		}

		// QEMU restarts and dials again: same series, counters kept.
		s1.Close()
		synctest.Wait()
		if got := scrape(t, m, "qmp_up"); !strings.Contains(got, `qmp_up{host="hv1",vm="web"} 0`) {
			t.Errorf("after hang-up:\n%s", got)
		}
		c2, s2 := dialInFake(t, "web", u1)
		go serveConn(ctx, m, lo, c2)
		// The first session was short: the watcher takes the new one
		// after its backoff (at most 100 ms here).
		time.Sleep(time.Second)
		synctest.Wait()
		if err := s2.Emit("STOP", nil); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		got = scrape(t, m, "qmp_up", "qmp_events_total")
		if !strings.Contains(got, `qmp_up{host="hv1",vm="web"} 1`) || !strings.Contains(got, `qmp_events_total{event="STOP",host="hv1",vm="web"} 2`) {
			t.Errorf("the VM dialling again is not the same series:\n%s", got)
		}

		// Another VM.
		c3, s3 := dialInFake(t, "db", "22222222-2f0e-4d59-9d4b-7c1c7d0e2a11")
		go serveConn(ctx, m, lo, c3)
		synctest.Wait()
		if got := scrape(t, m, "qmp_up"); !strings.Contains(got, `qmp_up{host="hv1",vm="db"} 1`) {
			t.Errorf("second VM missing:\n%s", got)
		}

		// db goes away for good: forgotten after StaleAfter.
		s3.Close()
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if got := scrape(t, m, "qmp_up"); strings.Contains(got, `vm="db"`) || !strings.Contains(got, `vm="web"`) {
			t.Errorf("after StaleAfter, want db gone and web kept:\n%s", got)
		}

		// A listener restricted to some uids refuses a peer whose
		// credentials cannot be read (a pipe has none).
		c4, _ := dialInFake(t, "x", "33333333-2f0e-4d59-9d4b-7c1c7d0e2a11")
		serveConn(ctx, m, ListenOptions{Name: "restricted", AllowedUIDs: []uint32{0}}, c4)
		if got := scrape(t, m, "qmp_listener_connections_total"); !strings.Contains(got, `qmp_listener_connections_total{listener="restricted",result="refused"} 1`) {
			t.Errorf("refusal not counted:\n%s", got)
		}
	})
}

// serveConn handles one connection as a listener with lo would (with
// the real peerCred), without an accept loop.
func serveConn(ctx context.Context, m *Source, lo ListenOptions, nc net.Conn) {
	l := newListener(lo, peerCred)
	cred, release, ok := m.admit(l, nc)
	if !ok {
		return
	}
	defer release()
	m.dialIn(ctx, nc, l, cred)
}

// TestDialInFailingVMPaced: a VM that dials in, fails every session (a
// garbage reply, then no answer) and dials again at once is paced by the
// watcher's backoff: its failed sessions come no faster than a dialled
// VM's would, however fast it reconnects, and its warnings are limited to
// one per listenerLogInterval.
func TestDialInFailingVMPaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf syncBuffer
		m := New(fleet.New(fleet.Options{}), Options{CommandTimeout: time.Second, Logger: log.NewLogfmtLogger(&buf)})
		ln := startListener(t, m, ListenOptions{Name: "l"})
		const conns = 60
		for range conns {
			c, _ := qmptest.New(t, qmptest.Options{Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
				switch cmd.Execute {
				case "query-name":
					return qmptest.Return(map[string]string{"name": "broken"}), true
				case "query-uuid":
					return qmptest.Return(map[string]string{"UUID": "44444444-2f0e-4d59-9d4b-7c1c7d0e2a11"}), true
				}
				return qmptest.Raw("garbage instead of a reply"), true
			}})
			ln.connect(c, 9)
			time.Sleep(500 * time.Millisecond)
			synctest.Wait()
		}
		got := scrape(t, m, "qmp_listener_connections_total", "qmp_connection_attempts_total", "qmp_protocol_errors_total")
		if !strings.Contains(got, `result="accepted"} 60`) {
			t.Errorf("want all %d connections accepted:\n%s", conns, got)
		}
		var sessions int
		if _, v, ok := strings.Cut(got, `qmp_connection_attempts_total{vm="uuid:44444444-2f0e-4d59-9d4b-7c1c7d0e2a11"} `); ok {
			sessions, _ = strconv.Atoi(strings.Fields(v)[0])
		}
		if sessions == 0 || sessions > 15 {
			t.Errorf("%d connections in %v made %d sessions, want 1 to 15 (paced by the backoff):\n%s",
				conns, conns*500*time.Millisecond, sessions, got)
		}
		if n := strings.Count(buf.String(), "qmp protocol error"); n == 0 || n > 4 {
			t.Errorf("%d sessions with a protocol error logged %d warnings about it, want 1 to 4 (at most one per 10 s):\n%s", sessions, n, buf.String())
		}
	})
}

// TestPeerCred reads SO_PEERCRED on a real unix socket: the peer is this
// very process.
func TestPeerCred(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer server.Close()
	cred, err := peerCred(server)
	if err != nil {
		t.Fatal(err)
	}
	if cred.uid != uint32(os.Getuid()) || cred.pid != int32(os.Getpid()) {
		t.Errorf("peer credentials %+v, want uid %d pid %d", cred, os.Getuid(), os.Getpid())
	}
}

// pipeListener is a net.Listener whose connections a test hands over,
// each with the peer credentials SO_PEERCRED would report.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once

	mu    sync.Mutex
	creds map[net.Conn]peerCredentials
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{}), creds: make(map[net.Conn]peerCredentials)}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// connect hands c to the accept loop as a connection from process pid.
func (l *pipeListener) connect(c net.Conn, pid int32) {
	l.mu.Lock()
	l.creds[c] = peerCredentials{uid: 1000, pid: pid}
	l.mu.Unlock()
	l.conns <- c
}

func (l *pipeListener) cred(c net.Conn) (peerCredentials, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cred, ok := l.creds[c]
	if !ok {
		return peerCredentials{}, errors.New("no credentials")
	}
	return cred, nil
}

// startListener runs m and a listener with lo on a pipeListener until
// the test ends.
func startListener(t *testing.T, m *Source, lo ListenOptions) *pipeListener {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	ln := newPipeListener()
	var wg sync.WaitGroup
	wg.Go(func() { m.Run(ctx) })
	wg.Go(func() { m.serve(ctx, ln, newListener(lo, ln.cred)) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ln
}

// TestListenerSilentSwarm: one process opens many connections and never
// greets on any. It gets maxHandshakesPerPeer handshakes at once, each
// ended after DialTimeout, and the rest are refused; a QEMU dialling in
// meanwhile is not crowded out.
func TestListenerSilentSwarm(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := New(fleet.New(fleet.Options{}), Options{DialTimeout: 5 * time.Second})
		ln := startListener(t, m, ListenOptions{Name: "l"})
		const swarm = 2 * maxHandshakes
		for range swarm {
			c, _ := qmptest.New(t, qmptest.Options{NoGreeting: true})
			ln.connect(c, 666)
		}
		synctest.Wait()
		c, _ := dialInFake(t, "web", "11111111-2f0e-4d59-9d4b-7c1c7d0e2a11")
		ln.connect(c, 100)
		synctest.Wait()
		got := scrape(t, m, "qmp_up", "qmp_listener_connections_total")
		for _, w := range []string{
			`qmp_up{vm="web"} 1`,
			`qmp_listener_connections_total{listener="l",result="accepted"} 1`,
			`qmp_listener_connections_total{listener="l",result="refused"} ` + strconv.Itoa(swarm-maxHandshakesPerPeer),
		} {
			if !strings.Contains(got, w) {
				t.Errorf("with a silent swarm from one process: missing %s in\n%s", w, got)
			}
		}
		// The swarm's handshakes end after DialTimeout.
		time.Sleep(5*time.Second + time.Millisecond)
		synctest.Wait()
		want := `qmp_listener_connections_total{listener="l",result="failed"} ` + strconv.Itoa(maxHandshakesPerPeer)
		if got := scrape(t, m, "qmp_listener_connections_total"); !strings.Contains(got, want) {
			t.Errorf("after DialTimeout: missing %s in\n%s", want, got)
		}
	})
}

// TestListenerMaxVMs: a client that makes up a new identity on each
// connection cannot add VMs without bound. At MaxVMs, a new VM takes the
// place of the one gone longest and is refused while all are connected.
func TestListenerMaxVMs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := New(fleet.New(fleet.Options{}), Options{})
		ln := startListener(t, m, ListenOptions{Name: "l", MaxVMs: 2})
		vm := func(name string, pid int32) *qmptest.Server {
			c, s := dialInFake(t, name, "")
			ln.connect(c, pid)
			synctest.Wait()
			return s
		}
		sa := vm("a", 1)
		vm("b", 2)
		vm("c", 3) // refused: a and b are connected
		got := scrape(t, m, "qmp_up", "qmp_listener_connections_total")
		for _, w := range []string{`qmp_up{vm="a"} 1`, `qmp_up{vm="b"} 1`, `result="refused"} 1`} {
			if !strings.Contains(got, w) {
				t.Errorf("at MaxVMs with all connected: missing %s in\n%s", w, got)
			}
		}
		if strings.Contains(got, `vm="c"`) {
			t.Errorf("a third VM got in past MaxVMs 2:\n%s", got)
		}
		// a leaves; with a churning client, VMs come and go.
		sa.Close()
		synctest.Wait()
		time.Sleep(time.Second)
		vm("d", 4) // takes a's place
		time.Sleep(time.Second)
		vm("e", 5) // refused: b and d are connected
		for i := range 20 {
			s := vm("churn-"+strconv.Itoa(i), int32(10+i))
			if i%2 == 0 {
				s.Close()
				synctest.Wait()
			}
		}
		got = scrape(t, m, "qmp_up")
		if n := strings.Count(got, "qmp_up{"); n != 2 || !strings.Contains(got, `qmp_up{vm="b"} 1`) || !strings.Contains(got, `qmp_up{vm="d"} 1`) {
			t.Errorf("after churn, want b and d alone (connected, never pushed out), got %d VMs:\n%s", n, got)
		}
	})
}

// TestDialPeer: dialling a unix socket returns, with the session, the
// process the kernel names as serving it (here this test's own), which
// is how two QEMUs with one UUID and one name are told apart; over TCP
// no process is known.
func TestDialPeer(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "unix" {
				addr = filepath.Join(t.TempDir(), "vm.qmp")
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			// The fake QEMU's pipe, spliced onto the accepted socket.
			fake, _ := qmptest.New(t, qmptest.Options{})
			var wg sync.WaitGroup
			defer wg.Wait()
			wg.Go(func() {
				nc, err := ln.Accept()
				if err != nil {
					return
				}
				defer nc.Close()
				wg.Go(func() { io.Copy(fake, nc); fake.Close() })
				io.Copy(nc, fake)
			})
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			conn, pid, err := dialPeer(ctx, network, ln.Addr().String(), qmp.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			want := int32(0)
			if network == "unix" {
				want = int32(os.Getpid())
			}
			if pid != want {
				t.Errorf("dialPeer over %s: pid %d, want %d", network, pid, want)
			}
			if conn.Greeting().Version.QEMU.Major == 0 {
				t.Errorf("no QMP greeting read: %+v", conn.Greeting())
			}
		})
	}
}

// TestDialInSharedUUID: QEMUs that dial in with one UUID are told apart
// by their process. Two clones (own names, own processes) are two VMs,
// and neither pushes the other's connection off; a second monitor of one
// of them dialling in is that same QEMU, shown once; a clone that
// restarts (a new process) comes back to its own series. Without a
// process (TCP), a connection with the VM's name replaces its live one,
// as when a QEMU dials again before its old connection looks dead.
func TestDialInSharedUUID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := New(fleet.New(fleet.Options{}), Options{})
		ln := startListener(t, m, ListenOptions{Name: "l"})
		dial := func(name, uuid string, pid int32) *qmptest.Server {
			c, s := dialInFake(t, name, uuid)
			ln.connect(c, pid)
			synctest.Wait()
			return s
		}
		const u = "55555555-2f0e-4d59-9d4b-7c1c7d0e2a11"
		web := dial("web", u, 100)
		db := dial("db", u, 200)
		secondMonitor := dial("web", u, 100)
		for _, s := range []*qmptest.Server{web, db} {
			if err := s.Emit("STOP", nil); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		got := scrape(t, m, "qmp_up", "qmp_events_total")
		for _, w := range []string{`qmp_up{vm="web"} 1`, `qmp_up{vm="db"} 1`,
			`qmp_events_total{event="STOP",vm="web"} 1`, `qmp_events_total{event="STOP",vm="db"} 1`} {
			if !strings.Contains(got, w) {
				t.Errorf("two clones and a second monitor: missing %s in\n%s", w, got)
			}
		}
		if n := strings.Count(got, "qmp_up{"); n != 2 {
			t.Errorf("want 2 VMs (the second monitor shown as the QEMU it is), got %d:\n%s", n, got)
		}
		if n := m.fleet.UUIDConflicts(); n != 1 {
			t.Errorf("UUIDConflicts() = %d, want 1 (db sharing web's UUID)", n)
		}
		select {
		case <-secondMonitor.Done():
			t.Error("the second monitor's connection was closed")
		default:
		}

		// db restarts: its new process gets db's series back, counters
		// kept, and web's connections stay.
		db.Close()
		synctest.Wait()
		time.Sleep(time.Second) // the backoff after db's short session
		if err := dial("db", u, 201).Emit("STOP", nil); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		got = scrape(t, m, "qmp_up", "qmp_events_total")
		for _, w := range []string{`qmp_up{vm="web"} 1`, `qmp_up{vm="db"} 1`, `qmp_events_total{event="STOP",vm="db"} 2`} {
			if !strings.Contains(got, w) {
				t.Errorf("after db restarted: missing %s in\n%s", w, got)
			}
		}
		for _, s := range []*qmptest.Server{web, secondMonitor} {
			select {
			case <-s.Done():
				t.Error("a connection of web's QEMU was closed when db came back")
			default:
			}
		}

		// No process known: the same name dialling again replaces the
		// live connection.
		const u2 = "66666666-2f0e-4d59-9d4b-7c1c7d0e2a11"
		first := dial("tcp-vm", u2, 0)
		dial("tcp-vm", u2, 0)
		select {
		case <-first.Done():
		case <-time.After(time.Minute):
			t.Error("without a process, the older connection of the same VM was kept")
		}
		if got := scrape(t, m, "qmp_up"); strings.Count(got, `vm="tcp-vm"`) != 1 || strings.Contains(got, "#2") {
			t.Errorf("without a process, want one tcp-vm:\n%s", got)
		}
	})
}

// TestDialInTwoMonitorsAtOnce: a QEMU whose two monitors dial in at the
// same moment (QEMU opens its chardevs together at start-up) keeps both
// connections, even when the second is attached before the watcher has
// taken the first; the fleet shows the QEMU once.
func TestDialInTwoMonitorsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := New(fleet.New(fleet.Options{}), Options{})
		startListener(t, m, ListenOptions{Name: "l"})
		synctest.Wait()
		l := newListener(ListenOptions{Name: "l"}, peerCred)
		var mons []*qmptest.Server
		var conns []*qmp.Conn
		var relays []*relay
		for range 2 {
			c, s := dialInFake(t, "web", "77777777-2f0e-4d59-9d4b-7c1c7d0e2a11")
			r := &relay{}
			conn, err := qmp.NewConn(t.Context(), c, qmp.Options{OnEvent: r.event, OnProtocolError: r.protocolError})
			if err != nil {
				t.Fatal(err)
			}
			mons, conns, relays = append(mons, s), append(conns, conn), append(relays, r)
			defer conn.Close()
		}
		// Back to back: the first watcher has not run yet.
		for i, conn := range conns {
			if _, ok := m.attach("uuid:77777777-2f0e-4d59-9d4b-7c1c7d0e2a11", "web", l, peerCredentials{pid: 100}, conn, relays[i]); !ok {
				t.Fatal("attach refused a monitor")
			}
		}
		synctest.Wait()
		for i, s := range mons {
			select {
			case <-s.Done():
				t.Errorf("monitor %d's connection was closed", i+1)
			default:
			}
		}
		if got := scrape(t, m, "qmp_up"); strings.Count(got, "qmp_up{") != 1 || !strings.Contains(got, `qmp_up{vm="web"} 1`) {
			t.Errorf("want the QEMU once, up:\n%s", got)
		}
		if n := m.fleet.Len(); n != 2 {
			t.Errorf("%d VMs in the fleet, want 2 (one per monitor)", n)
		}
	})
}

// TestListenerLogsRateLimited: a client that connects and hangs up in a
// loop is counted every time but logged once per listenerLogInterval,
// and so are a VM that keeps dialling in again and a process that dials
// in as a new VM every time.
func TestListenerLogsRateLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf syncBuffer
		m := New(fleet.New(fleet.Options{}), Options{Logger: log.NewLogfmtLogger(&buf)})
		ln := startListener(t, m, ListenOptions{Name: "l"})
		const n = 50
		hangUps := func() {
			for range n {
				c, s := net.Pipe()
				s.Close()
				ln.connect(c, 7)
				synctest.Wait()
			}
		}
		hangUps()
		for range n {
			c, s := dialInFake(t, "web", "11111111-2f0e-4d59-9d4b-7c1c7d0e2a11")
			ln.connect(c, 8)
			synctest.Wait()
			s.Close()
			synctest.Wait()
		}
		got := scrape(t, m, "qmp_listener_connections_total")
		for _, w := range []string{`result="failed"} 50`, `result="accepted"} 50`} {
			if !strings.Contains(got, w) {
				t.Errorf("missing %s in\n%s", w, got)
			}
		}
		// A process that makes up a new VM on every connection, each of
		// which fails its first session.
		for i := range n {
			c, s := dialInFake(t, "made-up-"+strconv.Itoa(i), "")
			ln.connect(c, 9)
			synctest.Wait()
			s.Close()
			synctest.Wait()
		}
		count := func(s string) int { return strings.Count(buf.String(), s) }
		if f, in := count("handshake with a dialled-in peer failed"), count(`msg="vm dialled in"`); f != 1 || in != 2 {
			t.Errorf("%d connections that hung up logged %d lines, %d sessions of one VM and %d made-up VMs %d lines; want 1 and 2:\n%s", n, f, n, n, in, buf.String())
		}
		if lost := count(`msg="qmp session lost"`); lost != 2 {
			t.Errorf("%d sessions of one VM and %d made-up VMs logged %d \"qmp session lost\" lines, want 2 (one per process):\n%s", n, n, lost, buf.String())
		}
		time.Sleep(listenerLogInterval)
		hangUps()
		if f := count("handshake with a dialled-in peer failed"); f != 2 || count("not_logged_since=49") != 1 {
			t.Errorf("after %v, want one more line saying how many were left out:\n%s", listenerLogInterval, buf.String())
		}
	})
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestDialInLogsNameTheVM: the lines of a dialled-in VM's watcher carry
// the VM's label (its -name) once its sync has learnt it, not its
// identity, and their caller is the watcher's code, although they pass
// through the listener's limiter; the listener's own lines name the
// listener.
func TestDialInLogsNameTheVM(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf syncBuffer
		lg := log.With(log.NewLogfmtLogger(&buf), "caller", log.Valuer(logging.Caller))
		m := New(fleet.New(fleet.Options{}), Options{Logger: lg})
		ln := startListener(t, m, ListenOptions{Name: "l"})
		c, s := dialInFake(t, "web", "ba6b0000-2f0e-4d59-9d4b-7c1c7d0e2a11")
		ln.connect(c, 8)
		synctest.Wait()
		s.Close()
		synctest.Wait()
		want := map[string][2]string{ // msg: vm, file of the caller
			"vm dialled in":           {"", "listener.go"},
			"qmp session established": {"web", "watcher.go"},
			"qmp session lost":        {"web", "watcher.go"},
		}
		seen := map[string]bool{}
		d := logfmt.NewDecoder(strings.NewReader(buf.String()))
		for d.ScanRecord() {
			f := map[string]string{}
			for d.ScanKeyval() {
				f[string(d.Key())] = string(d.Value())
			}
			w, ok := want[f["msg"]]
			if !ok {
				continue
			}
			seen[f["msg"]] = true
			file, _, _ := strings.Cut(f["caller"], ":")
			if f["vm"] != w[0] || file != w[1] {
				t.Errorf("%q: vm=%q caller=%q, want vm=%q and a caller in %s", f["msg"], f["vm"], f["caller"], w[0], w[1])
			}
		}
		if d.Err() != nil || len(seen) != len(want) {
			t.Errorf("want one line of each of %v (%v) in:\n%s", want, d.Err(), buf.String())
		}
	})
}
