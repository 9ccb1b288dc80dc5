package qmp_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/qmp-exporter/qmp_exporter/qmp"
	"github.com/qmp-exporter/qmp_exporter/qmp/qmptest"
)

// stopEvent is an event line as QEMU writes it, numbered through its
// timestamp so that order and loss show.
func stopEvent(i int) string {
	return fmt.Sprintf(`{"timestamp": {"seconds": %d, "microseconds": 0}, "event": "STOP"}`, i)
}

// serveNow starts the reader of a ServeReader connection and returns a
// channel closed when it has returned.
func serveNow(c *qmp.Conn) <-chan struct{} {
	served := make(chan struct{})
	go func() { c.Serve(); close(served) }()
	return served
}

// TestDrainAfterWriteFailure: a peer that writes events and hangs up
// before the client's next command makes that command's write fail with
// a broken pipe, while the events are still unread; the session ends
// with a drain that delivers every one of them, and says so.
func TestDrainAfterWriteFailure(t *testing.T) {
	const n = 100
	rec := &recorder{}
	client, srv := qmptest.NewUnix(t, qmptest.Options{})
	opts := rec.opts()
	opts.ServeReader = true // nothing is read until Serve: the events wait in the socket
	c, err := qmp.NewConn(t.Context(), client, opts)
	if err != nil {
		t.Fatal(err)
	}
	<-srv.Negotiated()
	var want []string
	var sent int64
	for i := range n {
		if err := srv.EmitRaw(stopEvent(i)); err != nil {
			t.Fatal(err)
		}
		want = append(want, "STOP")
		sent += int64(len(stopEvent(i)) + 2)
	}
	srv.Close()

	err = c.Execute(t.Context(), "query-status", nil, nil)
	if !errors.Is(err, qmp.ErrClosed) || !strings.Contains(err.Error(), "writing query-status") {
		t.Fatalf("Execute on a peer that hung up = %v, want a failed write wrapping ErrClosed", err)
	}
	<-serveNow(c)
	if diff := cmp.Diff(want, rec.Events()); diff != "" {
		t.Errorf("events delivered after the failed write (-want +got):\n%s", diff)
	}
	if got := rec.ProtocolErrors(); len(got) != 0 {
		t.Errorf("protocol errors: %v", got)
	}
	st := c.Drained()
	if !st.Drained || !st.Complete || st.Events != n || st.Bytes != sent || !errors.Is(st.End, io.EOF) {
		t.Errorf("Drained() = %+v, want a complete drain of %d events, %d bytes, ended by EOF", st, n, sent)
	}
}

// TestDrainLivePeerHangsUp: Drain shuts the write side, so a peer that
// is alive, as QEMU does when its client leaves, sees the end and hangs
// up; the drain reads what it sent until then and ends complete, without
// waiting for its idle bound.
func TestDrainLivePeerHangsUp(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "qmp.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer := make(chan error, 1)
	go func() { peer <- closesOnClientEOF(ln) }()
	rec := &recorder{}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, "unix", ln.Addr().String(), rec.opts())
	if err != nil {
		t.Fatal(err)
	}
	c.Drain()
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the drain did not end")
	}
	if err := <-peer; err != nil {
		t.Fatalf("peer: %v", err)
	}
	if diff := cmp.Diff([]string{"STOP", `SHUTDOWN {"guest": true, "reason": "guest-panic"}`}, rec.Events()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if st := c.Drained(); !st.Drained || !st.Complete || !errors.Is(st.End, io.EOF) {
		t.Errorf("Drained() = %+v, want complete, ended by the peer's EOF", st)
	}
	if err := c.Execute(t.Context(), "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Execute after Drain = %v, want ErrClosed", err)
	}
}

// closesOnClientEOF is a monitor that greets, completes the handshake,
// waits for the client to shut its write side, and then, as a QEMU on
// its way out, writes two last events and hangs up.
func closesOnClientEOF(ln net.Listener) error {
	nc, err := ln.Accept()
	if err != nil {
		return err
	}
	defer nc.Close()
	r := bufio.NewReader(nc)
	if _, err := io.WriteString(nc, qmptest.Greeting72+"\r\n"); err != nil {
		return err
	}
	if _, err := r.ReadString('\n'); err != nil {
		return err
	}
	if _, err := io.WriteString(nc, `{"return": {}, "id": 1}`+"\r\n"); err != nil {
		return err
	}
	if _, err := r.ReadString('\n'); !errors.Is(err, io.EOF) {
		return fmt.Errorf("after the handshake, read %v; want the client's EOF", err)
	}
	_, err = io.WriteString(nc, `{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}`+"\r\n"+
		`{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-panic"}, "timestamp": {"seconds": 1, "microseconds": 1}}`+"\r\n")
	return err
}

// TestDrainBounds: a peer that stays alive cannot hold a drain open. Each
// bound ends it short of complete, and the replies to the calls the end
// failed are dropped quietly, not counted as the peer's errors.
func TestDrainBounds(t *testing.T) {
	tests := []struct {
		name string
		// peer acts on the fake once the drain has begun, until its
		// writes fail.
		peer func(srv *qmptest.Server)
		end  string // DrainStats.End
	}{
		{
			name: "silent",
			peer: func(*qmptest.Server) {},
			end:  "nothing more within 250ms",
		},
		{
			name: "trickling",
			peer: func(srv *qmptest.Server) {
				for i := 0; srv.EmitRaw(stopEvent(i)) == nil; i++ {
					time.Sleep(100 * time.Millisecond)
				}
			},
			end: "stopped after 2s",
		},
		{
			name: "flooding",
			peer: func(srv *qmptest.Server) {
				batch := []byte(strings.Repeat(stopEvent(1)+"\r\n", 512))
				for srv.WriteRaw(batch) == nil {
				}
			},
			end: "stopped after 8 MiB",
		},
		{
			name: "oversized message",
			peer: func(srv *qmptest.Server) {
				chunk := []byte(strings.Repeat("a", 16<<10))
				for srv.WriteRaw(chunk) == nil {
				}
			},
			end: qmp.ErrMessageTooLarge.Error(),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rec := &recorder{}
				client, srv := qmptest.New(t, qmptest.Options{Handle: func(qmptest.Command) (qmptest.Reply, bool) {
					return qmptest.NoReply, true // answered below, after the drain began
				}})
				opts := rec.opts()
				opts.MaxMessageBytes = 64 << 10
				c, err := qmp.NewConn(t.Context(), client, opts)
				if err != nil {
					t.Fatal(err)
				}
				execErr := make(chan error, 1)
				go func() { execErr <- c.Execute(t.Context(), "query-status", nil, nil) }()
				synctest.Wait()
				c.Drain()
				if err := <-execErr; !errors.Is(err, qmp.ErrClosed) {
					t.Errorf("the call waiting when the drain began returned %v, want ErrClosed", err)
				}
				// Its reply (id 2) comes late, during the drain.
				if err := srv.EmitRaw(`{"return": {"status": "running"}, "id": 2}`); err != nil {
					t.Fatal(err)
				}
				peerDone := make(chan struct{})
				go func() { tc.peer(srv); close(peerDone) }()
				<-c.Done()
				<-peerDone
				st := c.Drained()
				if !st.Drained || st.Complete || st.End == nil || st.End.Error() != tc.end {
					t.Errorf("Drained() = %+v, want a drain cut short by %q", st, tc.end)
				}
				if st.Events != len(rec.Events()) {
					t.Errorf("Drained().Events = %d, but %d events were delivered", st.Events, len(rec.Events()))
				}
				if tc.name == "flooding" && st.Bytes != 8<<20 {
					t.Errorf("a flood drained %d bytes, want the bound, 8 MiB", st.Bytes)
				}
				if got := rec.ProtocolErrors(); len(got) != 0 {
					t.Errorf("protocol errors during the drain: %v", got)
				}
			})
		})
	}
}

// TestCloseCutsDrainShort: Close during a drain closes at once.
func TestCloseCutsDrainShort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _ := connect(t, qmptest.Options{}, &recorder{})
		c.Drain()
		c.Close()
		<-c.Done()
		if st := c.Drained(); !st.Drained || st.Complete || !errors.Is(st.End, qmp.ErrClosed) {
			t.Errorf("Drained() = %+v, want a drain cut short by Close", st)
		}
	})
}
