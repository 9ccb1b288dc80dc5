package qmp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/qmp-exporter/qmp_exporter/qmp"
	"github.com/qmp-exporter/qmp_exporter/qmp/qmptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder collects what a Conn delivers to its callbacks.
type recorder struct {
	mu     sync.Mutex
	events []string // "NAME data"
	protos []error
}

func (r *recorder) opts() qmp.Options {
	return qmp.Options{
		OnEvent: func(ev qmp.Event) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.events = append(r.events, strings.TrimSpace(ev.Name+" "+string(ev.Data)))
		},
		OnProtocolError: func(err error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.protos = append(r.protos, err)
		},
	}
}

func (r *recorder) Events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

func (r *recorder) ProtocolErrors() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.protos...)
}

// connect starts a fake and completes the handshake.
func connect(t *testing.T, fo qmptest.Options, rec *recorder) (*qmp.Conn, *qmptest.Server) {
	t.Helper()
	client, srv := qmptest.New(t, fo)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := qmp.NewConn(ctx, client, rec.opts())
	if err != nil {
		t.Fatalf("NewConn: %v", err)
	}
	t.Cleanup(func() { c.Close(); <-c.Done() })
	return c, srv
}

func commandNames(cmds []qmptest.Command) []string {
	var out []string
	for _, c := range cmds {
		out = append(out, c.Execute)
	}
	return out
}

func TestHandshake(t *testing.T) {
	rec := &recorder{}
	c, srv := connect(t, qmptest.Options{}, rec)
	g := c.Greeting()
	if got, want := g.Version.String(), "7.2.22"; got != want {
		t.Errorf("greeting version = %q, want %q", got, want)
	}
	if diff := cmp.Diff([]string{"oob"}, g.Capabilities); diff != "" {
		t.Errorf("capabilities (-want +got):\n%s", diff)
	}
	<-srv.Negotiated()
	got := srv.Received()
	if len(got) != 1 || got[0].Execute != "qmp_capabilities" || len(got[0].Arguments) != 0 {
		t.Fatalf("received %v, want one bare qmp_capabilities", got)
	}
	if string(got[0].ID) != "1" {
		t.Errorf("qmp_capabilities id = %s, want 1", got[0].ID)
	}
}

func TestHandshakeFailures(t *testing.T) {
	tests := []struct {
		name string
		fo   qmptest.Options
		want string // substring of the error
		is   error
	}{
		{
			name: "capabilities refused",
			fo: qmptest.Options{HandleCapabilities: true, Handle: func(qmptest.Command) (qmptest.Reply, bool) {
				return qmptest.Fail("GenericError", "no"), true
			}},
			want: "qmp: qmp_capabilities: GenericError: no",
		},
		{
			name: "garbage instead of greeting",
			fo:   qmptest.Options{Greeting: "hello there"},
			want: "waiting for greeting",
			is:   qmp.ErrProtocol,
		},
		{
			name: "reply instead of greeting",
			fo:   qmptest.Options{Greeting: `{"return": {}}`},
			want: "expected a greeting",
			is:   qmp.ErrProtocol,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client, _ := qmptest.New(t, tc.fo)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			c, err := qmp.NewConn(ctx, client, qmp.Options{})
			if err == nil {
				c.Close()
				t.Fatal("NewConn succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q does not wrap %v", err, tc.is)
			}
		})
	}
}

func TestHandshakeTimeouts(t *testing.T) {
	tests := []struct {
		name string
		fo   qmptest.Options
		want string
	}{
		{"peer never greets", qmptest.Options{NoGreeting: true}, "qmp: waiting for greeting: context deadline exceeded"},
		{"peer never answers qmp_capabilities", qmptest.Options{HandleCapabilities: true, Handle: func(qmptest.Command) (qmptest.Reply, bool) {
			return qmptest.NoReply, true
		}}, "qmp: negotiating capabilities: context deadline exceeded"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				client, _ := qmptest.New(t, tc.fo)
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				defer cancel()
				start := time.Now()
				_, err := qmp.NewConn(ctx, client, qmp.Options{})
				if err == nil || err.Error() != tc.want {
					t.Fatalf("NewConn error = %v, want %q", err, tc.want)
				}
				if d := time.Since(start); d != 5*time.Second {
					t.Errorf("gave up after %v, want exactly the 5s deadline", d)
				}
			})
		})
	}
}

func TestEventsBeforeGreetingAndDuringHandshake(t *testing.T) {
	rec := &recorder{}
	const capsReplyAndBurst = `{"return": {}, "id": 1}` + "\r\n" +
		`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}` + "\r\n" +
		`{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 3}}`
	_, srv := connect(t, qmptest.Options{
		BeforeGreeting:     []string{`{"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 1}}`},
		HandleCapabilities: true,
		Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
			if cmd.Execute != "qmp_capabilities" {
				return qmptest.Reply{}, false
			}
			// The reply and two events in one write, as QEMU does when
			// events were queued right behind the reply.
			return qmptest.Raw(capsReplyAndBurst), true
		},
	}, rec)
	if err := srv.Emit("RESET", map[string]any{"guest": false, "reason": "host-qmp-system-reset"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(rec.Events()) == 4 })
	want := []string{"POWERDOWN", "STOP", "RESUME", `RESET {"guest":false,"reason":"host-qmp-system-reset"}`}
	if diff := cmp.Diff(want, rec.Events()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

// waitFor polls cond; every use is bounded by a deadline, and in tests on
// net.Pipe the condition becomes true as soon as the pipe is drained.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestExecuteEventBeforeReply(t *testing.T) {
	rec := &recorder{}
	c, _ := connect(t, qmptest.Options{Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
		// QEMU's real order for cont: the RESUME event, then the return.
		return qmptest.Raw(`{"event": "RESUME", "timestamp": {"seconds": 5, "microseconds": 0}}`).
			Then(qmptest.Return(map[string]any{"status": "running", "running": true})), true
	}}, rec)
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := c.Execute(t.Context(), "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "running" || !st.Running {
		t.Errorf("status = %+v", st)
	}
	// The event was delivered before Execute returned.
	if diff := cmp.Diff([]string{"RESUME"}, rec.Events()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

// TestExecuteFuncWireOrder: apply sees the reply exactly between the
// events QEMU sent before it and those it sent after, even when the reply
// and the next event arrive in one read.
func TestExecuteFuncWireOrder(t *testing.T) {
	rec := &recorder{}
	c, _ := connect(t, qmptest.Options{Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
		return qmptest.Raw(`{"event": "STOP", "timestamp": {"seconds": 5, "microseconds": 0}}`).
			Then(qmptest.Return(map[string]any{"status": "paused"})).
			Then(qmptest.Raw(`{"event": "RESUME", "timestamp": {"seconds": 6, "microseconds": 0}}`)), true
	}}, rec)
	var seen []string
	var status string
	err := c.ExecuteFunc(t.Context(), "query-status", nil, func(ret []byte) error {
		// The RESUME is already on its way; the reader holds it until
		// apply returns.
		time.Sleep(20 * time.Millisecond)
		seen = rec.Events()
		var st struct{ Status string }
		if err := json.Unmarshal(ret, &st); err != nil {
			return err
		}
		status = st.Status
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if status != "paused" {
		t.Errorf("status %q, want paused", status)
	}
	if diff := cmp.Diff([]string{"STOP"}, seen); diff != "" {
		t.Errorf("events before apply (-want +got):\n%s", diff)
	}
	waitFor(t, func() bool { return len(rec.Events()) == 2 })
}

// TestExecuteFuncCancelledLeavesReaderFree: a call whose context ends
// while its reply is being delivered still releases the reader, so the
// connection keeps working.
func TestExecuteFuncCancelledLeavesReaderFree(t *testing.T) {
	// The fake cancels the call's context when the command arrives, just
	// before it replies: the call sees the end of its context and the
	// reply in either order.
	// Over a unix socket: the command's write is done before the fake
	// reads it, so the end of the context cannot fail the write.
	var cancelCall atomic.Pointer[context.CancelFunc]
	client, _ := qmptest.NewUnix(t, qmptest.Options{Handle: func(qmptest.Command) (qmptest.Reply, bool) {
		if f := cancelCall.Load(); f != nil {
			(*f)()
		}
		return qmptest.Return(map[string]any{"status": "running"}), true
	}})
	c, err := qmp.NewConn(t.Context(), client, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); <-c.Done() })
	applied := 0
	for range 300 {
		ctx, cancel := context.WithCancel(t.Context())
		cancelCall.Store(&cancel)
		if c.ExecuteFunc(ctx, "query-status", nil, func([]byte) error { applied++; return nil }) == nil {
			cancel()
		}
		cancelCall.Store(nil)
	}
	t.Logf("%d of 300 replies applied after their context ended", applied)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := c.ExecuteFunc(ctx, "query-status", nil, func([]byte) error { return nil }); err != nil {
		t.Fatalf("after cancelled calls: %v", err)
	}
}

// cancelAfterWrite is a connection whose next write, once armed, ends a
// context just after the bytes went out, as a caller's deadline might.
type cancelAfterWrite struct {
	net.Conn
	cancel atomic.Pointer[context.CancelFunc]
}

func (c *cancelAfterWrite) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if f := c.cancel.Swap(nil); f != nil {
		(*f)()
		time.Sleep(10 * time.Millisecond) // let the context's AfterFunc run
	}
	return n, err
}

// TestContextEndingJustAfterWrite: a context that ends once its command
// is written leaves no deadline behind for the next command.
func TestContextEndingJustAfterWrite(t *testing.T) {
	client, _ := qmptest.NewUnix(t, qmptest.Options{Handle: func(qmptest.Command) (qmptest.Reply, bool) {
		return qmptest.Return(map[string]any{"status": "running"}), true
	}})
	cw := &cancelAfterWrite{Conn: client}
	c, err := qmp.NewConn(t.Context(), cw, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); <-c.Done() })
	ctx, cancel := context.WithCancel(t.Context())
	cw.cancel.Store(&cancel)
	_ = c.Execute(ctx, "query-status", nil, nil) // its reply may or may not win
	if err := c.Execute(t.Context(), "query-status", nil, nil); err != nil {
		t.Fatalf("the next command: %v", err)
	}
}

// failingWrite is a connection whose writes, once armed, fail after a
// pause (long enough for the reader to take a reply that came first).
type failingWrite struct {
	net.Conn
	fail atomic.Bool
}

func (c *failingWrite) Write(b []byte) (int, error) {
	if c.fail.Load() {
		time.Sleep(20 * time.Millisecond)
		return 0, errors.New("injected write failure")
	}
	return c.Conn.Write(b)
}

// TestForgedReplyThenWriteFailure: a peer that replies to the next id
// before the command is written, and a write that then fails, must not
// leave the reader waiting for a caller that has gone: the connection
// closes and its reader ends.
func TestForgedReplyThenWriteFailure(t *testing.T) {
	client, _ := qmptest.NewUnix(t, qmptest.Options{HandleCapabilities: true, Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
		if cmd.Execute != "qmp_capabilities" {
			return qmptest.NoReply, true
		}
		// qmp_capabilities is id 1: the forged reply is for id 2.
		return qmptest.Return(struct{}{}).Then(qmptest.Raw(`{"return": {"status": "forged"}, "id": 2}`)), true
	}})
	fw := &failingWrite{Conn: client}
	c, err := qmp.NewConn(t.Context(), fw, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fw.fail.Store(true)
	err = c.ExecuteFunc(t.Context(), "query-status", nil, func([]byte) error { return nil })
	if err == nil {
		t.Fatal("ExecuteFunc succeeded over a failing write")
	}
	c.Close()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the reader still waits for a caller that has gone")
	}
}

// TestExecuteFuncErrors: an error reply is returned and apply is not
// called; apply's own error is ExecuteFunc's; the allow-list holds.
func TestExecuteFuncErrors(t *testing.T) {
	c, srv := connect(t, qmptest.Options{}, &recorder{})
	called := false
	err := c.ExecuteFunc(t.Context(), "query-balloon", nil, func([]byte) error { called = true; return nil })
	if !qmp.IsClass(err, "CommandNotFound") || called {
		t.Errorf("error reply: err %v, apply called %v", err, called)
	}
	bad := errors.New("cannot apply")
	c2, _ := connect(t, qmptest.Options{Handle: func(qmptest.Command) (qmptest.Reply, bool) {
		return qmptest.Return(struct{}{}), true
	}}, &recorder{})
	if err := c2.ExecuteFunc(t.Context(), "query-status", nil, func([]byte) error { return bad }); !errors.Is(err, bad) {
		t.Errorf("apply's error: got %v", err)
	}
	if err := c.ExecuteFunc(t.Context(), "quit", nil, func([]byte) error { return nil }); !errors.Is(err, qmp.ErrNotAllowed) {
		t.Errorf("ExecuteFunc(quit) = %v, want ErrNotAllowed", err)
	}
	if diff := cmp.Diff([]string{"qmp_capabilities", "query-balloon"}, commandNames(srv.Received())); diff != "" {
		t.Errorf("commands on the wire (-want +got):\n%s", diff)
	}
}

func TestExecuteConcurrentOutOfOrder(t *testing.T) {
	const n = 8
	var mu sync.Mutex
	var held []qmptest.Command
	release := make(chan struct{})
	client, _ := qmptest.New(t, qmptest.Options{Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
		mu.Lock()
		held = append(held, cmd)
		last := len(held) == n
		mu.Unlock()
		if !last {
			return qmptest.NoReply, true
		}
		// Answer all n commands, newest first, with each command's own
		// arguments echoed so the caller can check the match.
		var r qmptest.Reply
		mu.Lock()
		for i := len(held) - 1; i >= 0; i-- {
			r = r.Then(qmptest.Raw(fmt.Sprintf(`{"return": %s, "id": %s}`, held[i].Arguments, held[i].ID)))
		}
		mu.Unlock()
		close(release)
		return r, true
	}})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := qmp.NewConn(ctx, client, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close(); <-c.Done() }()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			var got struct{ N int }
			if err := c.Execute(ctx, "query-version", map[string]int{"N": i}, &got); err != nil {
				errs <- err
				return
			}
			if got.N != i {
				errs <- fmt.Errorf("call %d got the reply of call %d", i, got.N)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	<-release
}

func TestExecuteErrorReply(t *testing.T) {
	c, _ := connect(t, qmptest.Options{}, &recorder{})
	err := c.Execute(t.Context(), "query-balloon", nil, nil)
	var qe *qmp.Error
	if !errors.As(err, &qe) {
		t.Fatalf("error %v is not *qmp.Error", err)
	}
	want := &qmp.Error{Command: "query-balloon", Class: "CommandNotFound", Desc: "The command query-balloon has not been found"}
	if diff := cmp.Diff(want, qe); diff != "" {
		t.Errorf("error (-want +got):\n%s", diff)
	}
	if !qmp.IsClass(err, "CommandNotFound") {
		t.Error("IsClass(CommandNotFound) = false")
	}
	// The connection is still usable.
	if c.Err() != nil {
		t.Errorf("Err() = %v after an error reply", c.Err())
	}
}

func TestExecuteLargeReply(t *testing.T) {
	big := strings.Repeat("x", 300<<10) // larger than any initial buffer, like query-qmp-schema
	c, _ := connect(t, qmptest.Options{Handle: func(qmptest.Command) (qmptest.Reply, bool) {
		return qmptest.Return([]map[string]string{{"name": big}}), true
	}}, &recorder{})
	var got []map[string]string
	if err := c.Execute(t.Context(), "query-qmp-schema", nil, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0]["name"] != big {
		t.Errorf("large reply corrupted (len %d)", len(got))
	}
	// A normal command still works after the buffer shrank back.
	if err := c.Execute(t.Context(), "query-qmp-schema", nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestReadOnlyRefusal(t *testing.T) {
	c, srv := connect(t, qmptest.Options{Handle: func(qmptest.Command) (qmptest.Reply, bool) {
		return qmptest.Return(struct{}{}), true
	}}, &recorder{})
	refused := []string{
		"stop", "cont", "quit", "system_reset", "system_powerdown",
		"human-monitor-command", "device_del", "device_add", "migrate",
		"migrate-set-capabilities", "blockdev-del", "eject", "balloon",
		"set_password", "screendump", "dump-guest-memory", "qom-set",
		"x-exit-preconfig", "qmp_capabilities ", "Query-status", "query-status\n",
		"query-status\"}, {\"execute\": \"quit", "",
	}
	for _, cmd := range refused {
		err := c.Execute(t.Context(), cmd, nil, nil)
		if !errors.Is(err, qmp.ErrNotAllowed) {
			t.Errorf("Execute(%q) = %v, want ErrNotAllowed", cmd, err)
		}
	}
	if err := c.Execute(t.Context(), "query-status", nil, nil); err != nil {
		t.Fatalf("query-status refused: %v", err)
	}
	// Only the handshake and the one allowed query reached the wire.
	if diff := cmp.Diff([]string{"qmp_capabilities", "query-status"}, commandNames(srv.Received())); diff != "" {
		t.Errorf("commands on the wire (-want +got):\n%s", diff)
	}
	for _, cmd := range qmp.AllowedCommands() {
		if cmd != "qmp_capabilities" && !strings.HasPrefix(cmd, "query-") {
			t.Errorf("allow-list holds %q, which is not a query", cmd)
		}
	}
}

func TestUnknownIDAndMalformedMessagesAreDroppedNotFatal(t *testing.T) {
	rec := &recorder{}
	c, _ := connect(t, qmptest.Options{Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
		return qmptest.Raw(
			`{"return": {}, "id": 999}`,
			`{"return": {}}`,
			`not json at all`,
			"\xff\xfe{",
			`{"neither": "reply nor event"}`,
			`{"event": 5}`,
		).Then(qmptest.Return("ok")), true
	}}, rec)
	var s string
	if err := c.Execute(t.Context(), "query-name", nil, &s); err != nil || s != "ok" {
		t.Fatalf("Execute = %q, %v", s, err)
	}
	got := rec.ProtocolErrors()
	if len(got) != 6 {
		t.Fatalf("%d protocol errors, want 6: %v", len(got), got)
	}
	for _, err := range got {
		if !errors.Is(err, qmp.ErrProtocol) {
			t.Errorf("%v does not wrap ErrProtocol", err)
		}
	}
	if !strings.Contains(got[0].Error(), "reply with unknown id") {
		t.Errorf("first protocol error = %v", got[0])
	}
}

func TestCancelledCallThenLateReply(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		lateReply := make(chan string, 1)
		c, srv := connect(t, qmptest.Options{Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
			if cmd.Execute == "query-migrate" {
				lateReply <- fmt.Sprintf(`{"return": {"status": "late"}, "id": %s}`, cmd.ID)
				return qmptest.NoReply, true
			}
			return qmptest.Return(map[string]string{"status": "running"}), true
		}}, rec)
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		err := c.Execute(ctx, "query-migrate", nil, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Execute = %v, want deadline exceeded", err)
		}
		if err := srv.EmitRaw(<-lateReply); err != nil {
			t.Fatal(err)
		}
		var st struct{ Status string }
		if err := c.Execute(t.Context(), "query-status", nil, &st); err != nil || st.Status != "running" {
			t.Fatalf("next Execute = %+v, %v", st, err)
		}
		if got := rec.ProtocolErrors(); len(got) != 0 {
			t.Errorf("late reply to a cancelled call reported as %v", got)
		}
	})
}

func TestServerClosesMidCommand(t *testing.T) {
	var srv *qmptest.Server
	c, srv := connect(t, qmptest.Options{Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
		go srv.Close()
		return qmptest.NoReply, true
	}}, &recorder{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			err := c.Execute(t.Context(), "query-status", nil, nil)
			if !errors.Is(err, qmp.ErrClosed) {
				t.Errorf("Execute = %v, want ErrClosed", err)
			}
		})
	}
	wg.Wait()
	<-c.Done()
	// Either the reader sees the hang-up first, or a writer finds the pipe
	// closed; both are deaths of the connection.
	if err := c.Err(); !errors.Is(err, qmp.ErrClosed) || !(strings.Contains(err.Error(), "peer closed the connection") || strings.Contains(err.Error(), "closed pipe")) {
		t.Errorf("Err() = %v", err)
	}
}

func TestHalfLineThenHangUp(t *testing.T) {
	c, srv := connect(t, qmptest.Options{}, &recorder{})
	if err := srv.WriteRaw([]byte(`{"event": "STO`)); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	<-c.Done()
	if err := c.Err(); !strings.Contains(err.Error(), "in the middle of a message") {
		t.Errorf("Err() = %v", err)
	}
}

func TestMessageTooLarge(t *testing.T) {
	client, srv := qmptest.New(t, qmptest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := qmp.NewConn(ctx, client, qmp.Options{MaxMessageBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	chunk := []byte(strings.Repeat("a", 16<<10))
	for range 5 {
		if err := srv.WriteRaw(chunk); err != nil {
			break // the client hung up, as it should
		}
	}
	<-c.Done()
	if err := c.Err(); !errors.Is(err, qmp.ErrMessageTooLarge) || !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Err() = %v, want ErrMessageTooLarge and ErrClosed", err)
	}
	// A protocol violation closes at once: nothing more is read.
	if st := c.Drained(); st.Drained {
		t.Errorf("Drained() = %+v after an oversized message, want no drain", st)
	}
}

func TestCloseConcurrentWithExecute(t *testing.T) {
	c, _ := connect(t, qmptest.Options{Handle: func(qmptest.Command) (qmptest.Reply, bool) {
		return qmptest.NoReply, true
	}}, &recorder{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			err := c.Execute(t.Context(), "query-status", nil, nil)
			if !errors.Is(err, qmp.ErrClosed) {
				t.Errorf("Execute = %v, want ErrClosed", err)
			}
		})
	}
	for range 3 {
		wg.Go(func() { c.Close() })
	}
	wg.Wait()
	<-c.Done()
	if err := c.Execute(t.Context(), "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Execute after Close = %v", err)
	}
	if err := c.Err(); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Err() = %v", err)
	}
}

func TestEventTimestampAndData(t *testing.T) {
	var got []qmp.Event
	var mu sync.Mutex
	client, srv := qmptest.New(t, qmptest.Options{})
	c, err := qmp.NewConn(t.Context(), client, qmp.Options{OnEvent: func(ev qmp.Event) {
		mu.Lock()
		defer mu.Unlock()
		ev.Data = append(json.RawMessage(nil), ev.Data...) // Data is only valid during the call
		got = append(got, ev)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close(); <-c.Done() }()
	lines := []string{
		`{"timestamp": {"seconds": 1267020223, "microseconds": 435656}, "event": "BALLOON_CHANGE", "data": {"actual": 944766976}}`,
		`{"event": "STOP", "timestamp": {"seconds": -1, "microseconds": -1}}`,
		`{"event": "X_NEW\u0041", "data": {}}`,
	}
	for _, l := range lines {
		if err := srv.EmitRaw(l); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 3 })
	want := []qmp.Event{
		{Name: "BALLOON_CHANGE", Data: json.RawMessage(`{"actual": 944766976}`), Time: time.Unix(1267020223, 435656000)},
		{Name: "STOP", Data: json.RawMessage{}},
		{Name: "X_NEWA", Data: json.RawMessage(`{}`)},
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b json.RawMessage) bool { return string(a) == string(b) })); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

// TestServeReader: with Options.ServeReader, nothing is read until Serve
// runs, Serve is the reader and returns when the connection dies, and a
// second Serve only waits.
func TestServeReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		client, srv := qmptest.New(t, qmptest.Options{Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
			return qmptest.Raw(`{"event": "RESUME", "timestamp": {"seconds": 5, "microseconds": 0}}`).
				Then(qmptest.Return(map[string]any{"status": "running"})), true
		}})
		opts := rec.opts()
		opts.ServeReader = true
		c, err := qmp.NewConn(t.Context(), client, opts)
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Status string `json:"status"`
		}
		execErr := make(chan error, 1)
		go func() { execErr <- c.Execute(t.Context(), "query-status", nil, &st) }()
		synctest.Wait()
		select {
		case err := <-execErr:
			t.Fatalf("Execute returned %v before anything read its reply", err)
		default:
		}
		served := make(chan struct{})
		go func() { c.Serve(); close(served) }()
		if err := <-execErr; err != nil || st.Status != "running" {
			t.Fatalf("Execute = %v, status %q", err, st.Status)
		}
		if diff := cmp.Diff([]string{"RESUME"}, rec.Events()); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
		waited := make(chan struct{})
		go func() { c.Serve(); close(waited) }()
		synctest.Wait()
		select {
		case <-served:
			t.Fatal("Serve returned while the connection is alive")
		case <-waited:
			t.Fatal("a second Serve returned while the connection is alive")
		default:
		}
		srv.Close()
		<-served
		<-waited
		<-c.Done()
		if !errors.Is(c.Err(), qmp.ErrClosed) {
			t.Errorf("Err() = %v, want ErrClosed", c.Err())
		}
	})
}
