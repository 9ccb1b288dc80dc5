package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Conn. The zero value is usable.
type Options struct {
	// OnEvent receives every event, synchronously on the reader goroutine
	// and in wire order, including events QEMU sends before its greeting
	// and during the handshake. It must return quickly, must not block and
	// must not call Execute (see the package comment). Event.Data is only
	// valid until OnEvent returns. Nil discards events.
	OnEvent func(Event)

	// OnProtocolError receives the anomalies that do not kill the
	// connection: malformed messages, replies with an unknown id, messages
	// that are neither replies nor events. It is called on the reader
	// goroutine under the same rules as OnEvent. Every error wraps
	// ErrProtocol. Nil discards them.
	OnProtocolError func(error)

	// MaxMessageBytes bounds the size of one message; a longer one kills
	// the connection with ErrMessageTooLarge. Zero means
	// DefaultMaxMessageBytes.
	MaxMessageBytes int

	// ServeReader makes the caller provide the reader goroutine: NewConn
	// starts none, and the session's messages are read (replies
	// delivered, OnEvent called) only by a goroutine running Serve, which
	// the caller must start. It saves a goroutine per connection for a
	// caller that has one waiting for the connection's end anyway.
	ServeReader bool
}

// Conn is a QMP session on one connection, past its handshake. See the
// package comment for the concurrency contract.
type Conn struct {
	nc       net.Conn
	opts     Options
	lr       *lineReader
	greeting Greeting

	wmu  sync.Mutex // serializes writes and guards wbuf
	wbuf []byte

	mu     sync.Mutex // guards the fields below
	nextID uint64
	// pending lists the calls waiting for a reply. A slice, not a map:
	// a session has one or two in flight, and the abandoned ones are
	// bounded by maxAbandoned, so a scan is cheap, and an idle connection
	// keeps a few dozen bytes rather than a map's table.
	pending   []pendingCall
	abandoned int   // entries of pending whose caller gave up
	err       error // why the connection died; nil while alive

	done    chan struct{}
	serving atomic.Bool // Serve has been called
	msg     message     // the reader's message being dispatched

	// draining is set once the session ends through a drain (see
	// Drain); the reader then switches to drain, its own from then on,
	// and counts the events it delivers in drainEvents. drainStats is
	// what the drain read, under mu.
	draining    atomic.Bool
	closed      atomic.Bool // Close was called: a drain under way is cut short
	drain       *drainReader
	drainEvents int
	drainStats  DrainStats
}

type pendingCall struct {
	id      uint64
	ch      chan reply // nil once the caller has given up
	command string
	// inOrder: ExecuteFunc's call, whose reply the reader hands over
	// without a copy and then waits until the caller has applied it.
	inOrder bool
}

// findPending returns the index of id in pending, or -1. Called with mu
// held.
func (c *Conn) findPending(id uint64) int {
	for i := range c.pending {
		if c.pending[i].id == id {
			return i
		}
	}
	return -1
}

// removePending removes pending[i], not keeping the order. Called with mu
// held.
func (c *Conn) removePending(i int) {
	last := len(c.pending) - 1
	c.pending[i] = c.pending[last]
	c.pending[last] = pendingCall{}
	c.pending = c.pending[:last]
}

type reply struct {
	ret []byte
	err error
	// resume, when not nil, is closed by the caller once it is done with
	// ret, which aliases the reader's buffer; the reader waits for it.
	resume chan struct{}
}

// maxAbandoned bounds the ids remembered for calls whose context ended
// before their reply, so that a peer that never answers cannot grow the
// table without bound.
const maxAbandoned = 256

// Dial connects to a QMP monitor and performs the handshake. Both are
// bounded by ctx: give it a deadline, or a peer that accepts and never
// greets holds the call until ctx is cancelled.
func Dial(ctx context.Context, network, address string, opts Options) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	return NewConn(ctx, nc, opts)
}

// NewConn performs the QMP handshake on an established connection (tests,
// vsock, a socket QEMU dialed in on) and returns the session. The handshake
// reads the greeting, tolerating events before it, and negotiates
// capabilities; it is bounded by ctx. On failure nc is closed.
func NewConn(ctx context.Context, nc net.Conn, opts Options) (*Conn, error) {
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	c := &Conn{
		nc:   nc,
		opts: opts,
		lr:   newLineReader(nc, opts.MaxMessageBytes),
		done: make(chan struct{}),
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	phase, err := c.handshake()
	dl, hasDL := ctx.Deadline()
	switch {
	case !stop() || ctx.Err() != nil:
		err = fmt.Errorf("qmp: %s: %w", phase, context.Cause(ctx))
	case err != nil && hasDL && !time.Now().Before(dl):
		// The connection's deadline, copied from ctx, fired a moment
		// before ctx itself noticed: report it as ctx's deadline.
		err = fmt.Errorf("qmp: %s: %w", phase, context.DeadlineExceeded)
	}
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	// From now on the reader holds a buffer only while there is something
	// to read (the handshake, bounded by deadlines, keeps its own).
	c.lr.idle = newIdleReader(nc)
	if !opts.ServeReader {
		c.serving.Store(true)
		go c.readLoop()
	}
	return c, nil
}

// Serve returns once the connection is dead. With Options.ServeReader,
// the first call is the connection's reader: it reads, delivers replies
// and calls OnEvent on the calling goroutine until then. Otherwise, and
// for later calls, it waits for Done.
func (c *Conn) Serve() {
	if c.serving.CompareAndSwap(false, true) {
		c.readLoop()
		return
	}
	<-c.done
}

// handshake runs synchronously, before the reader goroutine exists, on the
// same line reader, so that events arriving in the same read as the
// qmp_capabilities reply stay buffered for the reader and are not lost. It
// returns the phase it was in for error messages.
func (c *Conn) handshake() (phase string, err error) {
	phase = "waiting for greeting"
	var m message
	for {
		line, err := c.lr.next()
		if err != nil {
			return phase, fmt.Errorf("qmp: %s: %w", phase, readError(err))
		}
		if len(line) == 0 || (len(line) == 1 && line[0] == '\r') {
			continue
		}
		if err := parseMessage(line, &m); err != nil {
			return phase, fmt.Errorf("qmp: %s: %w", phase, protocolError("malformed message: "+err.Error(), line))
		}
		if m.hasEvent {
			c.deliverEvent(&m, line)
			continue
		}
		if !m.hasGreeting {
			return phase, fmt.Errorf("qmp: %s: %w", phase, protocolError("expected a greeting", line))
		}
		var g struct {
			QMP Greeting `json:"QMP"`
		}
		if err := json.Unmarshal(line, &g); err != nil {
			return phase, fmt.Errorf("qmp: %s: %w", phase, protocolError("malformed greeting: "+err.Error(), line))
		}
		c.greeting = g.QMP
		break
	}

	phase = "negotiating capabilities"
	c.nextID++
	id := c.nextID
	if err := c.write(context.Background(), id, "qmp_capabilities", nil); err != nil {
		return phase, fmt.Errorf("qmp: %s: %w", phase, err)
	}
	for {
		line, err := c.lr.next()
		if err != nil {
			return phase, fmt.Errorf("qmp: %s: %w", phase, readError(err))
		}
		if len(line) == 0 || (len(line) == 1 && line[0] == '\r') {
			continue
		}
		if err := parseMessage(line, &m); err != nil {
			c.protocolErr(protocolError("malformed message: "+err.Error(), line))
			continue
		}
		switch {
		case m.hasEvent:
			c.deliverEvent(&m, line)
		case m.hasRet || m.hasErr:
			if got, ok := parseID(m.id); !ok || got != id {
				c.protocolErr(protocolError("reply with unknown id", line))
				continue
			}
			if m.hasErr {
				return phase, decodeError("qmp_capabilities", m.err)
			}
			return phase, nil
		default:
			c.protocolErr(protocolError("message is neither a reply nor an event", line))
		}
	}
}

// Greeting returns the greeting QEMU sent.
func (c *Conn) Greeting() Greeting { return c.greeting }

// LocalAddr and RemoteAddr return the addresses of the underlying
// connection.
func (c *Conn) LocalAddr() net.Addr { return c.nc.LocalAddr() }

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Execute sends a command and waits for its reply, decoding the reply's
// "return" member into result unless result is nil. args, if not nil, is
// marshalled as the command's "arguments". A command outside the read-only
// allow-list is refused with an error wrapping ErrNotAllowed before
// anything is written. An error reply is returned as *Error. If ctx ends
// first, Execute returns its error and the connection stays usable.
func (c *Conn) Execute(ctx context.Context, command string, args, result any) error {
	r, err := c.call(ctx, command, args, false)
	if err != nil {
		return err
	}
	return r.decode(command, result)
}

// ExecuteFunc is Execute with the reply kept in its place among the
// events: apply receives the reply's "return" value on the calling
// goroutine while the reader waits, so every event QEMU sent before the
// reply has reached OnEvent before apply runs, and none sent after it does
// until apply has returned. A caller that folds events and query replies
// into one state this way never applies a reply that is older than an
// event it has already applied. The work of apply (decoding, say) runs on
// the caller's stack, not the reader's.
//
// The value passed to apply is valid only until apply returns. apply must
// be quick and must not call Execute or ExecuteFunc on this Conn: until it
// returns, no other reply or event is read. Its error is ExecuteFunc's.
// apply is not called for an error reply (ExecuteFunc returns the *Error)
// nor if the connection dies first; it is called for a reply that was
// already being delivered when ctx ended.
func (c *Conn) ExecuteFunc(ctx context.Context, command string, args any, apply func(ret []byte) error) error {
	r, err := c.call(ctx, command, args, true)
	if r.resume != nil {
		defer close(r.resume)
	}
	if err != nil {
		return err
	}
	return apply(r.ret)
}

// call sends a command and waits for its reply. With inOrder, a success
// reply's ret aliases the reader's buffer and the reader waits until the
// caller closes resume.
func (c *Conn) call(ctx context.Context, command string, args any, inOrder bool) (reply, error) {
	if !Allowed(command) {
		return reply{}, fmt.Errorf("%w: %q is not on the read-only allow-list", ErrNotAllowed, command)
	}
	var rawArgs []byte
	if args != nil {
		var err error
		if rawArgs, err = json.Marshal(args); err != nil {
			return reply{}, fmt.Errorf("qmp: %s: encoding arguments: %w", command, err)
		}
	}
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return reply{}, err
	}
	c.nextID++
	id := c.nextID
	c.pending = append(c.pending, pendingCall{id: id, ch: ch, command: command, inOrder: inOrder})
	c.mu.Unlock()

	if err := c.write(ctx, id, command, rawArgs); err != nil {
		// Part of the command may be on the wire: the session is
		// poisoned. The peer may well have hung up (a broken pipe)
		// after sending events that are still unread: drain them.
		if c.end(fmt.Errorf("writing %s: %w", command, err)) {
			c.startDrain()
		}
		// Exactly one answer comes for the call: end's, or a reply
		// the peer sent for this id before the command was even out,
		// which the reader took first. An in-order one holds the
		// reader until released.
		if r := <-ch; r.resume != nil {
			close(r.resume)
		}
		return reply{}, c.Err()
	}
	select {
	case r := <-ch:
		return r, r.err
	case <-ctx.Done():
		c.mu.Lock()
		i := c.findPending(id)
		if i >= 0 {
			c.pending[i].ch = nil
			c.abandoned++
			if c.abandoned > maxAbandoned {
				c.forgetAbandoned()
			}
		}
		c.mu.Unlock()
		if i < 0 {
			// The reader (or end) has taken the call: its reply
			// is on the way, and an in-order one holds the reader
			// until it is received.
			r := <-ch
			return r, r.err
		}
		return reply{}, fmt.Errorf("qmp: %s: %w", command, ctx.Err())
	}
}

func (r reply) decode(command string, result any) error {
	if r.err != nil {
		return r.err
	}
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(r.ret, result); err != nil {
		// A reply of the wrong shape is the peer's fault, as a
		// malformed message is.
		return fmt.Errorf("%w: %s: decoding reply: %w", ErrProtocol, command, err)
	}
	return nil
}

// forgetAbandoned drops every abandoned id; their late replies, if they
// ever come, are then reported as unknown ids. Called with mu held.
func (c *Conn) forgetAbandoned() {
	c.pending = slices.DeleteFunc(c.pending, func(p pendingCall) bool { return p.ch == nil })
	c.abandoned = 0
}

// write sends one command line. The write is bounded by ctx.
func (c *Conn) write(ctx context.Context, id uint64, command string, args []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := append(c.wbuf[:0], `{"execute":`...)
	b = strconv.AppendQuote(b, command)
	if len(args) > 0 {
		b = append(b, `,"arguments":`...)
		b = append(b, args...)
	}
	b = append(b, `,"id":`...)
	b = strconv.AppendUint(b, id, 10)
	b = append(b, "}\n"...)
	if cap(b) <= initialBufferBytes {
		c.wbuf = b
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.nc.SetWriteDeadline(dl)
		defer func() { _ = c.nc.SetWriteDeadline(time.Time{}) }()
	}
	if ctx.Done() != nil {
		// The end of ctx interrupts the write by moving the deadline to
		// the past. If it ends just after the write, that deadline must
		// not stay for the next one: written keeps a late call from
		// setting it, and a call that did is undone.
		var mu sync.Mutex
		written := false
		stop := context.AfterFunc(ctx, func() {
			mu.Lock()
			defer mu.Unlock()
			if !written {
				_ = c.nc.SetWriteDeadline(time.Unix(1, 0))
			}
		})
		defer func() {
			mu.Lock()
			written = true
			mu.Unlock()
			if !stop() {
				_ = c.nc.SetWriteDeadline(time.Time{})
			}
		}()
	}
	_, err := c.nc.Write(b)
	return err
}

// readLoop is the only reader after the handshake. It exits when the
// connection can be read no more (the peer hung up, a read failed, or a
// drain ended), closing the connection and then done.
//
// The message being dispatched lives in the Conn rather than in this
// frame: with Options.ServeReader, this is the caller's long-lived
// goroutine, parked here between messages, and the runtime shrinks a
// parked goroutine's stack only when little of it is in use.
func (c *Conn) readLoop() {
	defer close(c.done)
	for {
		line, err := c.lr.next()
		if err != nil {
			c.end(readError(err))
			if c.draining.Load() {
				c.finishDrain(err)
			}
			_ = c.nc.Close()
			return
		}
		if c.drain == nil && c.draining.Load() {
			// This line came with the first read since the drain
			// began, or was buffered when it did: it is the
			// drain's, with the rest of the buffer.
			c.beginDrainRead(int64(len(line)) + 1)
		}
		c.dispatch(line, &c.msg)
	}
}

func (c *Conn) dispatch(line []byte, m *message) {
	if len(line) == 0 || (len(line) == 1 && line[0] == '\r') {
		return
	}
	if err := parseMessage(line, m); err != nil {
		c.protocolErr(protocolError("malformed message: "+err.Error(), line))
		return
	}
	switch {
	case m.hasEvent:
		c.deliverEvent(m, line)
	case m.hasRet || m.hasErr:
		c.deliverReply(m, line)
	case m.hasGreeting:
		c.protocolErr(protocolError("unexpected second greeting", line))
	default:
		c.protocolErr(protocolError("message is neither a reply nor an event", line))
	}
}

func (c *Conn) deliverEvent(m *message, line []byte) {
	name, err := m.eventName()
	if err != nil || name == "" {
		c.protocolErr(protocolError("invalid event name", line))
		return
	}
	if c.drain != nil {
		c.drainEvents++
	}
	if c.opts.OnEvent == nil {
		return
	}
	ev := Event{Name: name, Time: parseTimestamp(m.timestamp)}
	if len(m.data) > 0 {
		ev.Data = m.data
	}
	c.opts.OnEvent(ev)
}

func (c *Conn) deliverReply(m *message, line []byte) {
	id, ok := parseID(m.id)
	c.mu.Lock()
	var p pendingCall
	i := -1
	if ok {
		i = c.findPending(id)
	}
	found := i >= 0
	if found {
		p = c.pending[i]
		c.removePending(i)
		if p.ch == nil {
			c.abandoned--
		}
	}
	c.mu.Unlock()
	if !ok || !found {
		if c.draining.Load() {
			// The session's calls were answered when it ended: a
			// reply to one of them (the query that timed out) is
			// expected, not the peer's fault.
			return
		}
		c.protocolErr(protocolError("reply with unknown id", line))
		return
	}
	if p.ch == nil {
		return // the caller gave up; a late reply is expected
	}
	var r reply
	switch {
	case m.hasErr:
		r.err = decodeError(p.command, m.err)
	case p.inOrder:
		r.ret, r.resume = m.ret, make(chan struct{})
	default:
		r.ret = append([]byte(nil), m.ret...)
	}
	p.ch <- r
	if r.resume != nil {
		<-r.resume // the caller is done with ret: read on
	}
}

// decodeError turns an "error" member into *Error.
func decodeError(command string, raw []byte) error {
	var e struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	}
	if err := json.Unmarshal(raw, &e); err != nil {
		return fmt.Errorf("qmp: %s: %w", command, protocolError("malformed error reply", raw))
	}
	return &Error{Command: command, Class: e.Class, Desc: e.Desc}
}

func (c *Conn) protocolErr(err error) {
	if c.opts.OnProtocolError != nil {
		c.opts.OnProtocolError(err)
	}
}

// readError gives the reader's errors a cause a person understands.
func readError(err error) error {
	switch {
	case errors.Is(err, io.EOF):
		return fmt.Errorf("peer closed the connection: %w", err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("peer closed the connection in the middle of a message: %w", err)
	case errors.Is(err, ErrMessageTooLarge):
		return err
	default:
		return fmt.Errorf("read: %w", err)
	}
}

// end records why the session ended (the first reason wins) and fails
// every waiting call; no call starts after it. It reports whether this
// call was the first, which then decides how the connection closes:
// at once (Close), or after a drain (startDrain). It does not touch the
// socket.
func (c *Conn) end(cause error) bool {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return false
	}
	c.err = &closedError{cause: cause}
	pending := c.pending
	c.pending = nil
	err := c.err
	c.mu.Unlock()
	for _, p := range pending {
		if p.ch != nil {
			p.ch <- reply{err: err}
		}
	}
	return true
}

// Close closes the connection at once, cutting short a drain under way.
// Waiting Execute calls return an error wrapping ErrClosed. Close is
// idempotent and does not wait for the reader goroutine; use Done for
// that.
func (c *Conn) Close() error {
	c.closed.Store(true)
	c.end(ErrClosed)
	_ = c.nc.Close()
	return nil
}

// Done returns a channel that is closed once the connection is dead and its
// reader goroutine has returned.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns nil while the connection is alive, and afterwards an error
// that wraps ErrClosed and the cause of death.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
