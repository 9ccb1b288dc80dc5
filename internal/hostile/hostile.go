// Package hostile runs fake QMP peers on unix sockets, for chaos tests of
// the exporter: monitors that never greet, never finish the handshake, send
// garbage, invalid UTF-8, replies with ids nobody sent, a line too long to
// accept or half a line, flood events, hang up with events unread while
// the client writes a query (as a QEMU powering off does), and, to
// compare against, healthy ones that answer like Debian's QEMU 7.2 and
// emit a known number of events. Dial runs the same behaviours as a QEMU whose monitor dials the
// exporter's listener (a client-mode chardev), reconnecting like QEMU's
// reconnect=, with two more for that side: HangUp (connect and disconnect
// in a loop) and NewIdentity (a new VM on every connection). It is test
// tooling, not part of the exporter.
//
// # Sessions
//
// A Peer serves one client at a time, like a QEMU monitor with
// server=on: while a client is connected, further clients wait in the
// listen backlog and get nothing until the first one leaves. A session ends
// when the client hangs up or the Peer stops; the Peer then accepts the
// next client. A Peer that dials has one connection at a time too, and
// makes the next one when it ends.
//
// State that must survive a reconnect lives in the Peer, not the session:
// the events still to send (a Healthy peer emits exactly Events events over
// all its sessions, so that a test can compare them with what the exporter
// counted), the run state a query-status reports, and the flood's window.
//
// # Concurrency and cleanup
//
// Serve starts one goroutine, the accept loop (Dial: the dial loop),
// which runs each session itself; a session starts at most one more (an
// event writer, or a command reader while it writes) and waits for it
// before it returns. Everything stops when the ctx given to Serve or Dial
// ends or Close is called: the listener and the current connection are
// closed, which unblocks every read and write. Close waits for all of it
// and removes the socket file (of a Peer that listens), so a test that
// calls Close (t.Cleanup) leaves no goroutine behind and passes goleak.
//
// Every command a peer receives is recorded (Commands), so that a test can
// check that the exporter sent nothing outside its read-only allow-list.
package hostile

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/sockfile"
)

// maxCommandBytes bounds one line read from the client; the exporter's
// commands are a few dozen bytes.
const maxCommandBytes = 64 << 10

// Behaviour is how a Peer treats its clients: one of the types of this
// package (NeverGreet, NoCapabilitiesReply, Garbage, InvalidUTF8,
// UnknownID, HugeLine, HalfLineThenHang, Flood, Healthy, Scripted, PowerOff,
// HangUp,
// NewIdentity). A Behaviour is a
// plain value; what must last across sessions is kept by the Peer.
type Behaviour interface {
	// serve runs one session on s; it returns when the client hangs up,
	// the session's context ends or the behaviour has nothing left to do
	// but wait for either (then it waits).
	serve(ctx context.Context, s *session) error
	// eventsToSend is how many events the peer will emit over its life
	// (-1: as many as it can, until its window ends).
	eventsToSend() int
}

// Identity is what a peer answers to query-name and query-uuid.
type Identity struct {
	// Name is the VM's -name, reported by query-name; empty reports none
	// ({}), as QEMU does without -name.
	Name string
	// UUID is reported by query-uuid; empty means QEMU's all-zero UUID.
	UUID string
}

// Peer is a fake QMP monitor listening on a unix socket (Serve), or
// dialling one (Dial).
type Peer struct {
	path   string
	b      Behaviour
	ln     *net.UnixListener // nil for a Peer that dials
	cancel context.CancelFunc
	done   chan struct{} // closed when the accept loop has returned

	// eventsDone is closed once the peer has emitted every event it was
	// made to (at once for behaviours that emit a fixed set per session
	// or none).
	eventsDone     chan struct{}
	eventsDoneOnce sync.Once

	mu       sync.Mutex // guards the fields below
	commands []string
	conns    int
	sent     int       // events written in full
	left     int       // events still to send (Healthy, InvalidUTF8)
	paused   bool      // run state reported by query-status
	floodEnd time.Time // end of the flood window; zero before it starts
	written  []int64   // bytes of the payload written per session (HugeLine)
	err      error     // first unexpected error of a session
}

// Serve listens on path (a stale socket file there is removed first) and
// serves clients with b until ctx ends or Close is called.
func Serve(ctx context.Context, path string, b Behaviour) (*Peer, error) {
	if b == nil {
		return nil, errors.New("hostile: nil Behaviour")
	}
	if err := sockfile.RemoveStale(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("hostile: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	ctx, cancel := context.WithCancel(ctx)
	p := &Peer{path: path, b: b, ln: ln, cancel: cancel, done: make(chan struct{}), eventsDone: make(chan struct{})}
	p.left = b.eventsToSend()
	if p.left == 0 {
		p.finishEvents()
	}
	go p.acceptLoop(ctx)
	return p, nil
}

// Dial runs b as a QEMU whose monitor dials the exporter (a client-mode
// chardev, -chardev socket,path=...,reconnect=N): it connects to the unix
// socket path, serves the exporter on that connection as b says (the
// exporter, which accepted, is the client), and when the connection ends
// connects again after retry, like QEMU's reconnect, until ctx ends or
// Close is called. A connection that fails (nothing listening yet) is
// retried after retry too. The Peer's methods work as for Serve;
// Connections counts the connections made.
//
// Behaviours that wait for the client to go away (NeverGreet and the
// others) hold their connection until the exporter gives up on it. With
// retry 0, HangUp connects and disconnects in a tight loop.
func Dial(ctx context.Context, path string, retry time.Duration, b Behaviour) (*Peer, error) {
	if b == nil {
		return nil, errors.New("hostile: nil Behaviour")
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &Peer{path: path, b: b, cancel: cancel, done: make(chan struct{}), eventsDone: make(chan struct{})}
	p.left = b.eventsToSend()
	if p.left == 0 {
		p.finishEvents()
	}
	go p.dialLoop(ctx, retry)
	return p, nil
}

// dialLoop connects, serves and connects again until ctx ends.
func (p *Peer) dialLoop(ctx context.Context, retry time.Duration) {
	defer close(p.done)
	var d net.Dialer
	for ctx.Err() == nil {
		nc, err := d.DialContext(ctx, "unix", p.path)
		if err == nil {
			p.mu.Lock()
			p.conns++
			p.mu.Unlock()
			p.runSession(ctx, nc)
		}
		if !sleep(ctx, retry) {
			return
		}
	}
}

// Path returns the socket's path.
func (p *Peer) Path() string { return p.path }

// Close stops the peer, waits for its goroutines and removes the socket
// (if it listened).
// It returns the first unexpected error a session met, if any. It is
// idempotent.
func (p *Peer) Close() error {
	p.cancel()
	<-p.done
	return p.Err()
}

// Done is closed once the peer has stopped (ctx ended or Close).
func (p *Peer) Done() <-chan struct{} { return p.done }

// Err returns the first unexpected error a session met: a failure of the
// peer itself, not the client hanging up or the peer being stopped.
func (p *Peer) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Commands returns the name of every command received, in order, over all
// sessions. A line that was not a command object is recorded as it came,
// prefixed with "malformed: ".
func (p *Peer) Commands() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.commands...)
}

// Connections returns how many clients the peer has accepted.
func (p *Peer) Connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conns
}

// Sent returns how many events the peer has written in full to its
// clients: what a client that read everything must have seen.
func (p *Peer) Sent() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent
}

// EventsDone is closed once the peer has emitted every event it was made
// to emit (Healthy: Events; Flood: when its window ends; InvalidUTF8: its
// set), and at once for behaviours that emit none.
func (p *Peer) EventsDone() <-chan struct{} { return p.eventsDone }

// PayloadWritten returns, per session, how many bytes of its oversized
// payload a HugeLine peer managed to write before the client gave up.
func (p *Peer) PayloadWritten() []int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int64(nil), p.written...)
}

func (p *Peer) finishEvents() { p.eventsDoneOnce.Do(func() { close(p.eventsDone) }) }

func (p *Peer) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

// acceptLoop accepts one client at a time until ctx ends.
func (p *Peer) acceptLoop(ctx context.Context) {
	defer close(p.done)
	stop := context.AfterFunc(ctx, func() { p.ln.Close() })
	defer stop()
	defer p.ln.Close()
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				p.fail(fmt.Errorf("hostile: accept: %w", err))
			}
			return
		}
		p.mu.Lock()
		p.conns++
		p.mu.Unlock()
		p.runSession(ctx, nc)
	}
}

// runSession serves one client until it hangs up or ctx ends.
func (p *Peer) runSession(ctx context.Context, nc net.Conn) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Closing the connection is what unblocks the session's reads and
	// writes when it must end.
	stop := context.AfterFunc(sctx, func() { nc.Close() })
	defer stop()
	defer nc.Close()
	s := &session{p: p, nc: nc, br: bufio.NewReader(nc), cancel: cancel}
	err := p.b.serve(sctx, s)
	if err != nil && sctx.Err() == nil && !hungUp(err) {
		p.fail(err)
	}
}

// hungUp reports whether err only says that the client went away.
func hungUp(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) || isConnReset(err)
}

// isConnReset reports a write to, or read from, a client that has gone.
func isConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// session is one client's connection.
type session struct {
	p      *Peer
	nc     net.Conn
	br     *bufio.Reader
	cancel context.CancelFunc // ends the session

	wmu sync.Mutex // serializes writes: replies and events interleave by line
}

// command is one command received.
type command struct {
	Execute string          `json:"execute"`
	ID      json.RawMessage `json:"id"`
}

// readCommand reads the next line from the client and records it.
func (s *session) readCommand() (command, error) {
	line, err := readLine(s.br, maxCommandBytes)
	if err != nil {
		return command{}, err
	}
	var c command
	if err := json.Unmarshal(line, &c); err != nil || c.Execute == "" {
		c = command{Execute: "malformed: " + string(line)}
	}
	s.p.mu.Lock()
	s.p.commands = append(s.p.commands, c.Execute)
	s.p.mu.Unlock()
	return c, nil
}

// readLine reads one "\n"-terminated line, without its line ending, of at
// most max bytes.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max {
			return nil, fmt.Errorf("hostile: client line longer than %d bytes", max)
		}
		if err == nil {
			return bytes.TrimRight(line, "\r\n"), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

// drain reads and records commands, answering none, until the client
// hangs up or the session ends.
func (s *session) drain() error {
	for {
		if _, err := s.readCommand(); err != nil {
			return err
		}
	}
}

// write sends b as it is, under the write lock.
func (s *session) write(b []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.nc.Write(b)
}

// writeLine sends one message followed by "\r\n", as QEMU does.
func (s *session) writeLine(line string) error {
	_, err := s.write([]byte(line + "\r\n"))
	return err
}

// reply answers c with {"return": ret, "id": <c's id>}; ret is raw JSON.
func (s *session) reply(c command, ret string) error {
	return s.writeLine(`{"return": ` + ret + idSuffix(c) + `}`)
}

// replyError answers c with an error reply of the given class.
func (s *session) replyError(c command, class, desc string) error {
	d, _ := json.Marshal(desc)
	id := ""
	if len(c.ID) > 0 {
		id = `"id": ` + string(c.ID) + `, `
	}
	return s.writeLine(`{` + id + `"error": {"class": "` + class + `", "desc": ` + string(d) + `}}`)
}

func idSuffix(c command) string {
	if len(c.ID) == 0 {
		return ""
	}
	return `, "id": ` + string(c.ID)
}

// greet sends QEMU 7.2's greeting.
func (s *session) greet() error { return s.writeLine(Greeting72) }

// negotiate greets and completes qmp_capabilities. It answers (like QEMU)
// CommandNotFound to anything sent before qmp_capabilities.
func (s *session) negotiate() error {
	if err := s.greet(); err != nil {
		return err
	}
	for {
		c, err := s.readCommand()
		if err != nil {
			return err
		}
		if c.Execute == "qmp_capabilities" {
			return s.reply(c, `{}`)
		}
		if err := s.replyError(c, "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"); err != nil {
			return err
		}
	}
}

// countSent adds n events written in full.
func (s *session) countSent(n int) {
	s.p.mu.Lock()
	s.p.sent += n
	s.p.mu.Unlock()
}

// sendEvent writes one event line and counts it once written in full.
func (s *session) sendEvent(line string) error {
	if err := s.writeLine(line); err != nil {
		return err
	}
	s.countSent(1)
	return nil
}

// takeEvent reserves the next of the peer's remaining events: it returns
// its index in the peer's sequence, or false when none is left.
func (s *session) takeEvent(total int) (int, bool) {
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	if s.p.left <= 0 {
		return 0, false
	}
	i := total - s.p.left
	s.p.left--
	return i, true
}

// giveBack returns an event reserved by takeEvent that could not be sent.
func (s *session) giveBack() {
	s.p.mu.Lock()
	s.p.left++
	s.p.mu.Unlock()
}

// eventsLeft reports whether events remain; when none do, it marks the
// peer's events done.
func (s *session) eventsLeft() bool {
	s.p.mu.Lock()
	left := s.p.left
	s.p.mu.Unlock()
	if left <= 0 {
		s.p.finishEvents()
		return false
	}
	return true
}

// answerLoop reads commands and answers them as QEMU 7.2 would, for id.
// hook, if not nil, runs first for each command; when it reports the
// command handled, the usual answer is not sent. answerLoop returns when
// the client hangs up or the session ends.
func (s *session) answerLoop(id Identity, hook func(command) (handled bool, err error)) error {
	for {
		c, err := s.readCommand()
		if err != nil {
			return err
		}
		if hook != nil {
			handled, err := hook(c)
			if err != nil {
				return err
			}
			if handled {
				continue
			}
		}
		if err := s.answer(c, id); err != nil {
			return err
		}
	}
}

// answer sends QEMU 7.2's reply to c (shapes from the recorded
// transcripts in collector/testdata/transcripts).
func (s *session) answer(c command, id Identity) error {
	s.p.mu.Lock()
	paused := s.p.paused
	s.p.mu.Unlock()
	switch c.Execute {
	case "qmp_capabilities":
		return s.replyError(c, "CommandNotFound", "Capabilities negotiation is already complete, command ignored")
	case "query-status":
		if paused {
			return s.reply(c, `{"status": "paused", "singlestep": false, "running": false}`)
		}
		return s.reply(c, `{"status": "running", "singlestep": false, "running": true}`)
	case "query-name":
		if id.Name == "" {
			return s.reply(c, `{}`)
		}
		return s.reply(c, `{"name": `+jsonString(id.Name)+`}`)
	case "query-uuid":
		u := id.UUID
		if u == "" {
			u = "00000000-0000-0000-0000-000000000000"
		}
		return s.reply(c, `{"UUID": `+jsonString(u)+`}`)
	case "query-version":
		return s.reply(c, version72)
	case "query-balloon":
		return s.replyError(c, "DeviceNotActive", "No balloon device has been activated")
	case "query-block", "query-jobs", "query-block-jobs":
		return s.reply(c, `[]`)
	case "query-migrate":
		return s.reply(c, `{}`)
	case "query-vnc":
		return s.reply(c, `{"enabled": false}`)
	case "query-spice":
		return s.reply(c, `{"migrated": false, "enabled": false, "mouse-mode": "client"}`)
	default:
		return s.replyError(c, "CommandNotFound", "The command "+c.Execute+" has not been found")
	}
}

func jsonString(v string) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// setPaused records the run state that query-status reports after an
// event changed it.
func (s *session) setPaused(paused bool) {
	s.p.mu.Lock()
	s.p.paused = paused
	s.p.mu.Unlock()
}

// sleep waits for d or the end of ctx, whichever comes first, and reports
// whether ctx is still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
