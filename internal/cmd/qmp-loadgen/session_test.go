package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer safe for the fleet's writers and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// client is the test's end of a session.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (c *client) send(line string) {
	c.t.Helper()
	_ = c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.c.Write([]byte(line + "\n")); err != nil {
		c.t.Fatalf("sending %s: %v", line, err)
	}
}

// line reads one line, failing the test after 5 s.
func (c *client) line() string {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading: %v (got %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("line %q does not end with CRLF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// silent asserts that nothing arrives within d.
func (c *client) silent(d time.Duration) {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(d))
	if l, err := c.r.ReadString('\n'); err == nil || l != "" {
		c.t.Fatalf("got %q, want silence", l)
	}
}

// reply decodes a reply line.
type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID    json.RawMessage `json:"id"`
	Event string          `json:"event"`
}

func (c *client) reply() reply {
	c.t.Helper()
	l := c.line()
	var r reply
	if err := json.Unmarshal([]byte(l), &r); err != nil {
		c.t.Fatalf("reply %q: %v", l, err)
	}
	return r
}

// startSession serves one VM over net.Pipe and returns the client end.
// The session ends, and the test waits for it, in t.Cleanup.
func startSession(t *testing.T, cfg config, v *vm) (*client, *fleet, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	f := newFleet(cfg, &syncBuffer{}, logs)
	if v == nil {
		v = f.vms[0]
	}
	cc, sc := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); v.serve(ctx, f, sc) }()
	t.Cleanup(func() {
		cancel()
		_ = cc.Close()
		<-done
	})
	return &client{t: t, c: cc, r: bufio.NewReader(cc)}, f, logs
}

func TestHandshakeBurstInSameWrite(t *testing.T) {
	c, f, _ := startSession(t, config{n: 1, burst: 5, rate: 10}, nil)
	if g := c.line() + "\r\n"; g != greeting {
		t.Fatalf("greeting = %q, want QEMU 7.2's", g)
	}
	c.send(`{"execute":"qmp_capabilities","id":1}`)
	// net.Pipe hands one write to one read when the buffer is large
	// enough: the reply and the burst must come in a single write.
	buf := make([]byte, 64<<10)
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(buf[:n]), "\r\n"), "\r\n")
	if len(lines) != 6 {
		t.Fatalf("first write after qmp_capabilities has %d lines, want the reply and 5 events:\n%s", len(lines), buf[:n])
	}
	if lines[0] != `{"return": {}, "id": 1}` {
		t.Errorf("reply = %q", lines[0])
	}
	for _, l := range lines[1:] {
		var ev struct {
			Event     string `json:"event"`
			Timestamp struct {
				Seconds int64 `json:"seconds"`
			} `json:"timestamp"`
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Event == "" || ev.Timestamp.Seconds == 0 {
			t.Errorf("burst line %q is not an event (%v)", l, err)
		}
	}
	// A round trip orders the counter update before the check.
	c.send(`{"execute":"query-status","id":2}`)
	c.reply()
	if got := f.vms[0].sent.Load(); got != 5 {
		t.Errorf("sent = %d, want 5", got)
	}
	if got := f.negotiatedVMs.Load(); got != 1 {
		t.Errorf("negotiated VMs = %d, want 1", got)
	}
}

func TestQueries(t *testing.T) {
	f0 := newFleet(config{n: 43}, &syncBuffer{}, &syncBuffer{})
	c, f, _ := startSession(t, config{n: 1}, f0.vms[42])
	c.line()
	c.send(`{"execute":"query-status","id":1}`)
	if r := c.reply(); r.Error == nil || r.Error.Class != "CommandNotFound" || !strings.Contains(r.Error.Desc, "capabilities negotiation") {
		t.Fatalf("query before qmp_capabilities: %+v, want CommandNotFound asking for negotiation", r)
	}
	c.send(`{"execute":"qmp_capabilities","id":"caps"}`)
	if r := c.reply(); string(r.ID) != `"caps"` || string(r.Return) != "{}" {
		t.Fatalf("qmp_capabilities reply %+v", r)
	}
	want := map[string]string{
		"query-status":  `"status": "running"`,
		"query-name":    `{"name": "vm-00042"}`,
		"query-uuid":    `{"UUID": "5c0ffee0-0000-4000-8000-000000000042"}`,
		"query-version": `"major": 7`,
		"query-balloon": `"actual": 4294967296`,
		"query-block":   `"node-name": "libvirt-1-format"`,
		"query-migrate": `{}`,
		"query-vnc":     `"enabled": true`,
		"query-spice":   `"enabled": false`,
		"query-jobs":    `[]`,
	}
	id := 10
	for cmd, frag := range want {
		id++
		c.send(`{"execute":"` + cmd + `","id":` + itoa(id) + `}`)
		r := c.reply()
		if r.Error != nil || string(r.ID) != itoa(id) || !strings.Contains(string(r.Return), frag) {
			t.Errorf("%s: reply %+v (return %s), want id %d and a return with %s", cmd, r, r.Return, id, frag)
		}
	}
	c.send(`{"execute":"query-qmp-schema","id":99}`)
	if r := c.reply(); r.Error == nil || r.Error.Class != "CommandNotFound" || string(r.ID) != "99" {
		t.Errorf("unknown query: %+v, want CommandNotFound with id 99", r)
	}
	c.send(`{"execute":"qmp_capabilities","id":100}`)
	if r := c.reply(); r.Error == nil || !strings.Contains(r.Error.Desc, "already complete") {
		t.Errorf("second qmp_capabilities: %+v", r)
	}
	v := f0.vms[42]
	if v.unknown.Load() != 1 || v.refused.Load() != 0 {
		t.Errorf("unknown=%d refused=%d, want 1 and 0", v.unknown.Load(), v.refused.Load())
	}
	if f.refusedAny.Load() {
		t.Error("refusedAny set by read-only commands")
	}
}

func itoa(i int) string { return pad(i, 1) }

func TestRefusesCommandsThatChangeTheVM(t *testing.T) {
	c, f, logs := startSession(t, config{n: 1}, nil)
	c.line()
	c.send(`{"execute":"quit","id":1}`) // before negotiation too
	if r := c.reply(); r.Error == nil || r.Error.Class != "CommandNotFound" {
		t.Fatalf("quit: %+v", r)
	}
	c.send(`{"execute":"qmp_capabilities","id":2}`)
	c.reply()
	for i, cmd := range []string{
		`{"execute":"stop","id":3}`,
		`{"execute":"system_reset","id":4}`,
		`{"execute":"human-monitor-command","arguments":{"command-line":"info status"},"id":5}`,
		`{"execute":"device_del","arguments":{"id":"disk0"},"id":6}`,
		`{"exec-oob":"migrate-pause","id":7}`,
	} {
		c.send(cmd)
		r := c.reply()
		if r.Error == nil || r.Error.Class != "CommandNotFound" || string(r.ID) != itoa(i+3) {
			t.Errorf("%s: %+v, want CommandNotFound", cmd, r)
		}
	}
	c.send(`not json`)
	if r := c.reply(); r.Error == nil || r.Error.Class != "GenericError" {
		t.Errorf("malformed line: %+v, want GenericError", r)
	}
	v := f.vms[0]
	if got := v.refused.Load(); got != 6 {
		t.Errorf("refused = %d, want 6", got)
	}
	if got := v.malformed.Load(); got != 1 {
		t.Errorf("malformed = %d, want 1", got)
	}
	if !f.refusedAny.Load() {
		t.Error("refusedAny not set")
	}
	if l := logs.String(); !strings.Contains(l, `REFUSED "stop"`) || strings.Count(l, "REFUSED") != maxRefusalLogs {
		t.Errorf("logs = %q, want the first %d refusals", l, maxRefusalLogs)
	}
}

// drainEvents reads event lines until the fleet reports the window closed
// and no more arrive, and returns how many there were.
func drainEvents(t *testing.T, c *client, f *fleet) int {
	t.Helper()
	n := 0
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		_ = c.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		l, err := c.r.ReadString('\n')
		if err != nil {
			if f.senders.Load() == 0 && time.Now().After(f.end) {
				return n
			}
			continue
		}
		if !strings.Contains(l, `"event": `) {
			t.Fatalf("unexpected line %q", l)
		}
		n++
	}
	t.Fatal("events did not stop")
	return n
}

func TestFloodAndPaced(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rate     float64
		min, max int
	}{
		{"flood", 0, 1000, 1 << 40},
		{"paced", 100, 4 + 25, 4 + 35}, // the burst, and 300 ms at 100/s
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, f, _ := startSession(t, config{n: 1, burst: 4, rate: tc.rate, duration: 300 * time.Millisecond}, nil)
			c.line()
			c.send(`{"execute":"qmp_capabilities","id":1}`)
			c.reply()
			n := drainEvents(t, c, f) // the window opened: every VM negotiated
			if n < tc.min || n > tc.max {
				t.Errorf("got %d events, want %d to %d", n, tc.min, tc.max)
			}
			if got := f.vms[0].sent.Load(); got != uint64(n) {
				t.Errorf("sent = %d, want the %d read", got, n)
			}
		})
	}
}

func TestHangingVM(t *testing.T) {
	f := newFleet(config{n: 1, hang: 1, rate: 0, duration: time.Second}, &syncBuffer{}, &syncBuffer{})
	v := f.vms[0]
	serve := func() (*client, func()) {
		cc, sc := net.Pipe()
		done := make(chan struct{})
		go func() { defer close(done); v.serve(context.Background(), f, sc) }()
		return &client{t: t, c: cc, r: bufio.NewReader(cc)}, func() { _ = cc.Close(); <-done }
	}
	c, end := serve()
	c.line()
	c.send(`{"execute":"qmp_capabilities","id":1}`)
	if r := c.reply(); string(r.Return) != "{}" {
		t.Fatalf("qmp_capabilities: %+v", r)
	}
	c.send(`{"execute":"query-name","id":2}`)
	c.silent(300 * time.Millisecond) // no reply, no event
	end()
	c, end = serve()
	defer end()
	c.silent(300 * time.Millisecond) // no greeting on the next connection
	if v.sent.Load() != 0 {
		t.Errorf("a hanging VM sent %d events", v.sent.Load())
	}
}

func TestEventMix(t *testing.T) {
	quiet := mixes["quiet"]
	if len(quiet) < 10 || len(quiet) >= len(templates) {
		t.Errorf("quiet mix has %d of %d events", len(quiet), len(templates))
	}
	for _, tpl := range quiet {
		if followUp[tpl.name] {
			t.Errorf("quiet mix has %s", tpl.name)
		}
	}
	for _, tpl := range templates {
		b := appendEvent(nil, &tpl, 1795628764, 529678)
		if len(b) < 80 || len(b) > 300 {
			t.Errorf("%s: %d bytes, want 80 to 300: %s", tpl.name, len(b), b)
		}
		if !bytes.HasSuffix(b, []byte("}\r\n")) || bytes.Count(b, []byte("\n")) != 1 {
			t.Errorf("%s: not one CRLF-terminated line: %q", tpl.name, b)
		}
		var ev struct {
			Event string         `json:"event"`
			Data  map[string]any `json:"data"`
		}
		if err := json.Unmarshal(b, &ev); err != nil || ev.Event != tpl.name {
			t.Errorf("%s: %v: %s", tpl.name, err, b)
		}
	}
}

// TestSocketOneClientAtATime runs the socket mode: a second client waits
// without a greeting until the first hangs up, as with QEMU.
func TestSocketOneClientAtATime(t *testing.T) {
	dir := t.TempDir()
	out := &syncBuffer{}
	f := newFleet(config{n: 2, dir: dir, duration: 0, perVM: true}, out, &syncBuffer{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.run(ctx) }()
	path := filepath.Join(dir, "vm-00001.qmp")
	var first net.Conn
	for deadline := time.Now().Add(5 * time.Second); ; {
		var err error
		if first, err = net.Dial("unix", path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c1 := &client{t: t, c: first, r: bufio.NewReader(first)}
	c1.line()
	second, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c2 := &client{t: t, c: second, r: bufio.NewReader(second)}
	c2.silent(200 * time.Millisecond)
	_ = first.Close()
	if g := c2.line() + "\r\n"; g != greeting {
		t.Fatalf("second client got %q after the first left", g)
	}
	_ = second.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	f.report("total")
	if !strings.Contains(out.String(), "vm name=vm-00001 sent=0 sessions=2") || !strings.Contains(out.String(), "total vms=2 sent=0 sessions=2") {
		t.Errorf("output:\n%s", out)
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, "*.qmp")); len(matches) != 0 {
		t.Errorf("sockets left behind: %v", matches)
	}
}

// TestDialMode connects to a listener like QEMU with reconnect=1.
func TestDialMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "exporter.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f := newFleet(config{n: 3, dial: path, reconnect: 50 * time.Millisecond}, &syncBuffer{}, &syncBuffer{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.run(ctx) }()
	defer func() {
		cancel()
		if rerr := <-done; rerr != nil {
			t.Error(rerr)
		}
	}()
	for range 3 {
		nc, aerr := ln.Accept()
		if aerr != nil {
			t.Fatal(aerr)
		}
		c := &client{t: t, c: nc, r: bufio.NewReader(nc)}
		c.line()
		c.send(`{"execute":"qmp_capabilities","id":1}`)
		c.reply()
		c.send(`{"execute":"query-name","id":2}`)
		for {
			if r := c.reply(); r.Event == "" {
				if !strings.Contains(string(r.Return), `"vm-0000`) {
					t.Errorf("query-name: %s", r.Return)
				}
				break
			}
		}
		_ = nc.Close()
	}
	// A lost connection is redialled.
	_ = ln.(*net.UnixListener).SetDeadline(time.Now().Add(5 * time.Second))
	nc, err := ln.Accept()
	if err != nil {
		t.Fatalf("no redial: %v", err)
	}
	_ = nc.Close()
}
