package hostile

import (
	"bufio"
	"context"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/qmp-exporter/qmp_exporter/qmp"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve starts a peer in a temporary directory and closes it, checking
// its error, when the test ends.
func serve(t *testing.T, b Behaviour) *Peer {
	t.Helper()
	p, err := Serve(t.Context(), filepath.Join(t.TempDir(), "peer.qmp"), b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("peer: %v", err)
		}
	})
	return p
}

// client is a qmp.Conn to a peer with its events and protocol errors
// counted.
type client struct {
	*qmp.Conn
	mu             sync.Mutex
	events         []string
	protocolErrors int
}

func (c *client) opts(max int) qmp.Options {
	return qmp.Options{
		OnEvent: func(ev qmp.Event) {
			c.mu.Lock()
			c.events = append(c.events, ev.Name)
			c.mu.Unlock()
		},
		OnProtocolError: func(error) {
			c.mu.Lock()
			c.protocolErrors++
			c.mu.Unlock()
		},
		MaxMessageBytes: max,
	}
}

func (c *client) counts() (events []string, protocolErrors int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events), c.protocolErrors
}

// dial connects to p with the handshake bounded by timeout.
func dial(t *testing.T, p *Peer, timeout time.Duration, maxMessage int) (*client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	c := &client{}
	conn, err := qmp.Dial(ctx, "unix", p.Path(), c.opts(maxMessage))
	if err != nil {
		return nil, err
	}
	c.Conn = conn
	t.Cleanup(func() { conn.Close(); <-conn.Done() })
	return c, nil
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-t.Context().Done():
		t.Fatalf("%s: %v", what, t.Context().Err())
	}
}

// execute runs cmd with a deadline.
func execute(t *testing.T, c *client, cmd string, timeout time.Duration, out any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	return c.Execute(ctx, cmd, nil, out)
}

// TestHandshakeFailures: peers that never finish the handshake make a
// client's bounded dial fail in the phase they break, and record what the
// client sent.
func TestHandshakeFailures(t *testing.T) {
	for _, tc := range []struct {
		name  string
		b     Behaviour
		phase string
		cmds  []string
	}{
		{"never greets", NeverGreet{}, "waiting for greeting", nil},
		{"no capabilities reply", NoCapabilitiesReply{}, "negotiating capabilities", []string{"qmp_capabilities"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := serve(t, tc.b)
			_, err := dial(t, p, 300*time.Millisecond, 0)
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), tc.phase) {
				t.Fatalf("dial: %v, want a deadline in %q", err, tc.phase)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.cmds, p.Commands()); diff != "" {
				t.Errorf("commands (-want +got):\n%s", diff)
			}
			if p.Connections() != 1 {
				t.Errorf("connections = %d, want 1", p.Connections())
			}
		})
	}
}

// TestHealthy: a healthy peer answers the exporter's queries as QEMU 7.2
// does and emits exactly Events events, every one of which a client that
// stays connected receives.
func TestHealthy(t *testing.T) {
	p := serve(t, Healthy{Identity: Identity{Name: "healthy-07", UUID: "5c0ffee0-0000-4000-8000-000000000007"}, Events: 30})
	c, err := dial(t, p, 5*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	var name struct{ Name string }
	var uuid struct{ UUID string }
	var ver qmp.Version
	for _, q := range []struct {
		cmd string
		out any
	}{{"query-name", &name}, {"query-uuid", &uuid}, {"query-version", &ver}} {
		if err := execute(t, c, q.cmd, 5*time.Second, q.out); err != nil {
			t.Fatalf("%s: %v", q.cmd, err)
		}
	}
	if name.Name != "healthy-07" || uuid.UUID != "5c0ffee0-0000-4000-8000-000000000007" || ver.String() != "7.2.22" {
		t.Errorf("identity: name %q uuid %q version %s", name.Name, uuid.UUID, ver)
	}
	if err := execute(t, c, "query-balloon", 5*time.Second, nil); !qmp.IsClass(err, "DeviceNotActive") {
		t.Errorf("query-balloon: %v, want DeviceNotActive as QEMU 7.2 without a balloon", err)
	}
	if err := execute(t, c, "query-commands", 5*time.Second, nil); !qmp.IsClass(err, "CommandNotFound") {
		t.Errorf("query-commands: %v, want CommandNotFound", err)
	}
	waitClosed(t, p.EventsDone(), "events")
	// The reply comes after every event written before it.
	var st struct{ Status string }
	if err := execute(t, c, "query-status", 5*time.Second, &st); err != nil {
		t.Fatal(err)
	}
	events, perr := c.counts()
	if len(events) != 30 || p.Sent() != 30 || perr != 0 {
		t.Errorf("client saw %d events and %d protocol errors; peer sent %d; want 30, 0, 30", len(events), perr, p.Sent())
	}
	// 30 events: two whole cycles and six more, the last a RESET, so the
	// VM runs.
	if st.Status != "running" {
		t.Errorf("query-status = %q after %v", st.Status, events[len(events)-1:])
	}
	want := []string{"qmp_capabilities", "query-name", "query-uuid", "query-version", "query-balloon", "query-commands", "query-status"}
	if diff := cmp.Diff(want, p.Commands()); diff != "" {
		t.Errorf("commands (-want +got):\n%s", diff)
	}
}

// TestHealthyAcrossSessions: events a dropped session could not carry are
// sent on the next one, and the total stays exactly Events.
func TestHealthyAcrossSessions(t *testing.T) {
	const total = 40
	p := serve(t, Healthy{Identity: Identity{Name: "h"}, Events: total, Rate: 200})
	first, err := dial(t, p, 5*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Let a few events through, then hang up mid-stream.
	if err := execute(t, first, "query-status", 5*time.Second, nil); err != nil {
		t.Fatal(err)
	}
	first.Close()
	<-first.Done()
	second, err := dial(t, p, 5*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, p.EventsDone(), "events")
	if err := execute(t, second, "query-status", 5*time.Second, nil); err != nil {
		t.Fatal(err)
	}
	a, _ := first.counts()
	b, _ := second.counts()
	t.Logf("first session saw %d events, second %d", len(a), len(b))
	if p.Sent() != total || len(a)+len(b) > total {
		t.Errorf("peer sent %d, clients saw %d + %d; want %d sent and at most that seen", p.Sent(), len(a), len(b), total)
	}
	if p.Connections() != 2 {
		t.Errorf("connections = %d, want 2", p.Connections())
	}
}

// TestGarbage: every garbage line is a protocol error for the client, and
// queries are never answered.
func TestGarbage(t *testing.T) {
	p := serve(t, Garbage{})
	c, err := dial(t, p, 5*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := execute(t, c, "query-status", 300*time.Millisecond, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("query-status: %v, want no answer", err)
	}
	// The burst came before the command; two more lines follow it.
	if events, perr := c.counts(); perr < len(garbageLines) || len(events) != 0 {
		t.Errorf("%d protocol errors and events %v, want at least %d and none", perr, events, len(garbageLines))
	}
}

// TestUnknownID: each stray reply is a protocol error, and every query
// still gets its right answer.
func TestUnknownID(t *testing.T) {
	p := serve(t, UnknownID{Identity: Identity{Name: "stray", UUID: "5c0ffee0-0000-4000-8000-0000000000aa"}})
	c, err := dial(t, p, 5*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	var name struct{ Name string }
	if err := execute(t, c, "query-name", 5*time.Second, &name); err != nil || name.Name != "stray" {
		t.Fatalf("query-name: %q, %v", name.Name, err)
	}
	// Strays before the qmp_capabilities reply and before query-name's.
	if _, perr := c.counts(); perr != 2*len(strayReplies) {
		t.Errorf("protocol errors = %d, want %d", perr, 2*len(strayReplies))
	}
}

// TestInvalidUTF8: the events and replies carry bytes that are not UTF-8,
// as the client receives them.
func TestInvalidUTF8(t *testing.T) {
	p := serve(t, InvalidUTF8{Identity: Identity{Name: "bad", UUID: "5c0ffee0-0000-4000-8000-0000000000bb"}})
	c, err := dial(t, p, 5*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, p.EventsDone(), "events")
	var ver qmp.Version
	if err := execute(t, c, "query-version", 5*time.Second, &ver); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ver.Package, "\uFFFD") {
		t.Errorf("package %q: want the invalid bytes (decoded as U+FFFD)", ver.Package)
	}
	events, perr := c.counts()
	if len(events) != len(invalidUTF8Events) || p.Sent() != len(invalidUTF8Events) || perr != 0 {
		t.Fatalf("events %q, protocol errors %d, sent %d", events, perr, p.Sent())
	}
	invalid := 0
	for _, e := range events {
		if !utf8.ValidString(e) || strings.ContainsRune(e, utf8.RuneError) {
			invalid++
		}
	}
	if invalid != len(invalidUTF8Events)-InvalidUTF8ValidNames {
		t.Errorf("%d event names not valid, want %d: %q", invalid, len(invalidUTF8Events)-InvalidUTF8ValidNames, events)
	}
}

// TestHugeLine: a client with a bound drops the session; the peer stops
// writing long before the end of the line and says how far it got.
func TestHugeLine(t *testing.T) {
	const size = 16 << 20
	p := serve(t, HugeLine{Bytes: size})
	c, err := dial(t, p, 5*time.Second, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, c.Done(), "session drop")
	if !errors.Is(c.Err(), qmp.ErrMessageTooLarge) {
		t.Errorf("connection died of %v, want ErrMessageTooLarge", c.Err())
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	w := p.PayloadWritten()
	if len(w) != 1 || w[0] <= 1<<20 || w[0] >= size {
		t.Errorf("payload written per session = %v, want one session past the bound and short of %d", w, size)
	}
}

// TestHalfLineThenHang: half a line, then silence; queries time out.
func TestHalfLineThenHang(t *testing.T) {
	p := serve(t, HalfLineThenHang{})
	c, err := dial(t, p, 5*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := execute(t, c, "query-status", 300*time.Millisecond, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("query-status: %v, want no answer", err)
	}
	c.Close()
	<-c.Done()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"qmp_capabilities", "query-status"}, p.Commands()); diff != "" {
		t.Errorf("commands (-want +got):\n%s", diff)
	}
}

// TestFlood: the client receives every event the peer counted, and
// queries are answered in the middle of the flood.
func TestFlood(t *testing.T) {
	p := serve(t, Flood{Identity: Identity{Name: "flood"}, For: 300 * time.Millisecond})
	var n atomic.Int64
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, err := qmp.Dial(ctx, "unix", p.Path(), qmp.Options{OnEvent: func(qmp.Event) { n.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { conn.Close(); <-conn.Done() }()
	var st struct{ Status string }
	if err := conn.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "running" {
		t.Fatalf("query-status during the flood: %q, %v", st.Status, err)
	}
	waitClosed(t, p.EventsDone(), "flood window")
	if err := conn.Execute(ctx, "query-status", nil, nil); err != nil {
		t.Fatal(err)
	}
	if got, sent := n.Load(), p.Sent(); got != int64(sent) || sent < 1000 {
		t.Errorf("client saw %d events, peer sent %d; want equal and at least 1000", got, sent)
	}
}

// TestPowerOff: told to go, the peer stops reading, so that the client's
// next command fails to write, and hangs up after writing its events,
// the panic first and the SHUTDOWN last; a client that reads what was
// sent before the hang-up (qmp.Conn drains it) gets every one. Its next
// session only answers.
func TestPowerOff(t *testing.T) {
	const n = 50
	now := make(chan struct{})
	p := serve(t, PowerOff{Identity: Identity{Name: "off"}, Events: n, Now: now})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c := &client{}
	opts := c.opts(0)
	opts.ServeReader = true // nothing is read before Serve: the events wait in the socket
	conn, err := qmp.Dial(ctx, "unix", p.Path(), opts)
	if err != nil {
		t.Fatal(err)
	}
	c.Conn = conn
	close(now)
	waitClosed(t, p.EventsDone(), "events")
	err = execute(t, c, "query-status", 5*time.Second, nil)
	if !errors.Is(err, qmp.ErrClosed) || !strings.Contains(err.Error(), "writing query-status") {
		t.Errorf("query-status after leaving: %v, want a failed write", err)
	}
	conn.Serve()
	events, perr := c.counts()
	if len(events) != n || p.Sent() != n || perr != 0 {
		t.Fatalf("client saw %d events and %d protocol errors; peer sent %d; want %d, 0, %d", len(events), perr, p.Sent(), n, n)
	}
	if events[0] != "GUEST_PANICKED" || events[n-1] != "SHUTDOWN" {
		t.Errorf("events run from %s to %s, want GUEST_PANICKED to SHUTDOWN", events[0], events[n-1])
	}
	again, err := dial(t, p, 5*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := execute(t, again, "query-status", 5*time.Second, nil); err != nil {
		t.Errorf("query-status on the next session: %v", err)
	}
	if p.Sent() != n {
		t.Errorf("peer sent %d events over two sessions, want %d", p.Sent(), n)
	}
}

// TestOneClientAtATime: like a QEMU monitor, the peer leaves a second
// client waiting, without a greeting, until the first leaves.
func TestOneClientAtATime(t *testing.T) {
	p := serve(t, Healthy{Identity: Identity{Name: "one"}})
	first, err := dial(t, p, 5*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	second, err := net.Dial("unix", p.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	br := bufio.NewReader(second)
	_ = second.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := br.ReadString('\n'); !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Fatalf("second client read %v while the first is connected, want nothing", err)
	}
	first.Close()
	<-first.Done()
	_ = second.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := br.ReadString('\n')
	if err != nil || strings.TrimRight(line, "\r\n") != Greeting72 {
		t.Fatalf("second client after the first left: %q, %v", line, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestStopMidSession: cancelling Serve's context in the middle of a flood
// and a hung read stops everything (goleak checks the goroutines) and
// removes the socket.
func TestStopMidSession(t *testing.T) {
	for _, b := range []Behaviour{Flood{}, HugeLine{}, NeverGreet{}, Healthy{Events: 1 << 20, Rate: 1}} {
		ctx, cancel := context.WithCancel(t.Context())
		path := filepath.Join(t.TempDir(), "p.qmp")
		p, err := Serve(ctx, path, b)
		if err != nil {
			t.Fatal(err)
		}
		nc, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		// Say qmp_capabilities so that the peers that need it go on.
		if _, err := nc.Write([]byte(`{"execute": "qmp_capabilities", "id": 1}` + "\n")); err != nil {
			t.Fatal(err)
		}
		cancel()
		waitClosed(t, p.Done(), "peer stop")
		nc.Close()
		if err := p.Err(); err != nil {
			t.Errorf("%T: %v", b, err)
		}
		if _, err := net.Dial("unix", path); err == nil {
			t.Errorf("%T: socket still accepts after stop", b)
		}
	}
}

// accept listens on a unix socket and returns each accepted connection
// as a qmp.Conn (the handshake done by the accepting side, as the
// exporter's listener does), until the test ends.
func acceptQMP(t *testing.T, path string) <-chan *client {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan *client)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			c := &client{}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			conn, err := qmp.NewConn(ctx, nc, c.opts(0))
			cancel()
			if err != nil {
				nc.Close()
				continue
			}
			c.Conn = conn
			select {
			case out <- c:
			case <-t.Context().Done():
				conn.Close()
				return
			}
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return out
}

// next returns the next connection from acceptQMP, failing the test if
// none comes within 10 s.
func next(t *testing.T, conns <-chan *client) *client {
	t.Helper()
	select {
	case c := <-conns:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no connection within 10 s")
		return nil
	}
}

// TestDialReconnects: a Healthy peer that dials in answers on the
// connection it made, dials again after it ends, as QEMU's reconnect does,
// and emits all its events.
func TestDialReconnects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "listen.sock")
	conns := acceptQMP(t, path)
	p, err := Dial(t.Context(), path, 10*time.Millisecond, Healthy{Identity: Identity{Name: "in"}, Events: 6})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("peer: %v", err)
		}
	})
	var name struct {
		Name string `json:"name"`
	}
	for i := range 2 {
		c := next(t, conns)
		if err := execute(t, c, "query-name", 5*time.Second, &name); err != nil || name.Name != "in" {
			t.Fatalf("session %d: query-name: %q, %v", i, name.Name, err)
		}
		if i == 0 {
			// Hang up: the peer dials again, and what it has not sent
			// yet goes to the next session.
			c.Close()
			<-c.Done()
		}
	}
	waitClosed(t, p.EventsDone(), "events")
	if p.Sent() != 6 || p.Connections() != 2 {
		t.Errorf("sent %d events over %d connections, want 6 over 2", p.Sent(), p.Connections())
	}
}

// TestHangUpLoop: HangUp with no retry interval connects and hangs up
// over and over; NewIdentity is a new VM on each connection.
func TestHangUpLoop(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "l.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := ln.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	p, err := Dial(t.Context(), filepath.Join(dir, "l.sock"), 0, HangUp{})
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		nc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if n, err := nc.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Errorf("read %d bytes, %v; want the peer gone", n, err)
		}
		nc.Close()
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if p.Connections() < 20 {
		t.Errorf("%d connections, want at least 20", p.Connections())
	}

	path := filepath.Join(dir, "id.sock")
	conns := acceptQMP(t, path)
	p, err = Dial(t.Context(), path, 0, NewIdentity{Prefix: "x"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("peer: %v", err)
		}
	})
	var uuids []string
	for range 2 {
		c := next(t, conns)
		var uuid struct {
			UUID string `json:"UUID"`
		}
		if err := execute(t, c, "query-uuid", 5*time.Second, &uuid); err != nil {
			t.Fatal(err)
		}
		waitClosed(t, c.Done(), "hang-up after query-uuid")
		uuids = append(uuids, uuid.UUID)
	}
	if uuids[0] == uuids[1] {
		t.Errorf("two sessions answered the same UUID %s", uuids[0])
	}
}
