package qmp

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// A drain is how a session ends when the end is decided on this side, or
// forced by a failed write, rather than by the peer hanging up: the
// reader goes on reading what the peer has already sent, delivering its
// events, until the peer hangs up or a bound is reached, and only then
// is the connection closed. Closing at once would throw away the bytes
// waiting in the socket: a QEMU that emits an event asking for a
// follow-up query, then SHUTDOWN, then exits (a panic or a watchdog with
// action poweroff) makes the query's write fail with a broken pipe while
// SHUTDOWN is still unread, and a load generator that stops mid-flood
// does the same with thousands of events.
//
// What the peer has sent is already in this host's socket buffers, so
// reading it never waits; the bounds only stop a peer that is still
// alive (a hung QEMU whose query timed out, a flood that goes on) from
// holding the session open.
const (
	// drainMaxBytes bounds what a drain reads. A peer that has hung up
	// can only have left what the kernel buffered for it: about 200 KiB
	// on a unix socket (the sender's default send buffer), at most
	// 6 MiB on TCP (Linux's largest default receive window). More than
	// that means the peer is still writing, and reading on would only
	// postpone the end. 8 MiB is about 50,000 events, some tens of
	// milliseconds of work.
	drainMaxBytes = 8 << 20

	// drainIdle ends a drain when nothing arrives for this long: data
	// already sent is read at once, so waiting longer only delays the
	// end of a session with a peer that is alive but silent (a hung
	// QEMU after a command timeout, whose session ends this much later
	// than it would without a drain). It is long enough that a reader
	// delayed by a busy host between arming the wait and reading still
	// finds the bytes that were there.
	drainIdle = 250 * time.Millisecond

	// drainMaxTime bounds a whole drain, whatever arrives: a peer that
	// trickles a byte now and then cannot hold the session open longer
	// than this.
	drainMaxTime = 2 * time.Second
)

var (
	// errDrainBytes ends a drain that read drainMaxBytes.
	errDrainBytes = fmt.Errorf("stopped after %d MiB", drainMaxBytes>>20)
	// errDrainIdle ends a drain when the peer sent nothing for drainIdle.
	errDrainIdle = fmt.Errorf("nothing more within %s", drainIdle)
	// errDrainTime ends a drain that lasted drainMaxTime.
	errDrainTime = fmt.Errorf("stopped after %s", drainMaxTime)
)

// DrainStats says what a Conn's reader read after the end of its session
// was decided (see Conn.Drain).
type DrainStats struct {
	// Drained is true when the session ended through a drain: Drain was
	// called, a write failed, or a newer connection replaced this one.
	Drained bool
	// Events and Bytes are what the drain delivered to OnEvent and read.
	Events int
	Bytes  int64
	// Complete is true when the drain read everything the peer sent: it
	// ended because the peer hung up. Otherwise a bound, Close or an
	// oversized message cut it short and the peer may have sent more.
	Complete bool
	// End says why the drain ended.
	End error
}

// Drain ends the session without losing what the peer has already sent:
// every waiting call fails at once with an error wrapping ErrClosed, as
// with Close, and no command goes out any more, but the reader goes on
// delivering the events the peer sent until it hangs up (its write side
// is shut, so a live QEMU sees the end and closes its side at once), or
// until the drain's bounds (8 MiB read, nothing more for 250 ms, 2 s in
// all), and only then closes the connection. Done is closed after that;
// Drained tells what the drain read.
//
// A drain needs the reader to run: with Options.ServeReader, Serve must
// be called. Close during a drain cuts it short. Drain is idempotent and
// does nothing on a connection that is already dead; it does not wait.
func (c *Conn) Drain() {
	if c.end(ErrClosed) {
		c.startDrain()
	}
}

// Drained reports what the drain of the session read, once Done is
// closed. Before that, or if the session ended otherwise, it returns the
// zero DrainStats.
func (c *Conn) Drained() DrainStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.drainStats
}

// startDrain is called once, by whoever ended the session for a drain.
// It shuts the write side so that the peer sees the end, and bounds the
// reader's current wait, since the reader may be parked on a silent
// peer; the reader itself switches to a drainReader with the first
// message it reads after this.
func (c *Conn) startDrain() {
	c.draining.Store(true)
	_ = c.nc.SetReadDeadline(time.Now().Add(drainIdle))
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// drainReader is the reader's source during a drain: the connection,
// read with the drain's bounds.
type drainReader struct {
	nc    net.Conn
	end   time.Time // drainMaxTime after the reader began draining
	bytes int64
	// idle tells whether the last read's deadline was drainIdle's
	// rather than end, so that a timeout says which bound ended the
	// drain.
	idle bool
}

func (d *drainReader) Read(p []byte) (int, error) {
	left := drainMaxBytes - d.bytes
	if left <= 0 {
		return 0, errDrainBytes
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	dl := time.Now().Add(drainIdle)
	d.idle = dl.Before(d.end)
	if !d.idle {
		dl = d.end
	}
	_ = d.nc.SetReadDeadline(dl)
	n, err := d.nc.Read(p)
	d.bytes += int64(n)
	return n, err
}

// beginDrainRead switches the reader to a drainReader: from now on it
// reads without the idle reader's pooled buffers and within the drain's
// bounds. The line just read (lineBytes with its newline) and what is
// buffered after it count as read by the drain. Called on the reader
// goroutine.
func (c *Conn) beginDrainRead(lineBytes int64) {
	c.drain = &drainReader{
		nc:    c.nc,
		end:   time.Now().Add(drainMaxTime),
		bytes: lineBytes + int64(c.lr.end-c.lr.start),
	}
	c.lr.r = c.drain
	c.lr.idle = nil
}

// finishDrain records how the drain ended, given the reader's last
// error. Called on the reader goroutine before the connection closes.
func (c *Conn) finishDrain(err error) {
	st := DrainStats{Drained: true, Events: c.drainEvents}
	if c.drain != nil {
		st.Bytes = c.drain.bytes
	}
	switch {
	case c.closed.Load():
		st.End = ErrClosed
	case errors.Is(err, os.ErrDeadlineExceeded):
		st.End = errDrainIdle
		if c.drain != nil && !c.drain.idle {
			st.End = errDrainTime
		}
	case errors.Is(err, errDrainBytes), errors.Is(err, ErrMessageTooLarge):
		st.End = err
	default:
		// The peer hung up (EOF, a reset): nothing is left to read.
		st.Complete = true
		st.End = readError(err)
		if errors.Is(err, io.EOF) {
			st.End = io.EOF
		}
	}
	c.mu.Lock()
	c.drainStats = st
	c.mu.Unlock()
}
