package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// greeting is QEMU 7.2's, as recorded.
const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}` + "\r\n"

const (
	// floodChunkBytes is the size of one write in flood mode.
	floodChunkBytes = 64 << 10
	// maxCommandBytes bounds a command line; a longer one ends the session.
	maxCommandBytes = 64 << 10
	// maxRefusalLogs bounds the refused commands logged per VM; all are
	// counted.
	maxRefusalLogs = 5
)

// vm is one fake QEMU: its identity, what its replies depend on, and its
// counters, which outlive sessions.
type vm struct {
	index int
	name  string
	uuid  string
	// hang: the VM answers the first session's qmp_capabilities, then
	// never answers again, like a QEMU whose main loop is stuck; later
	// connections get no greeting.
	hang  bool
	world world
	mix   []eventTemplate
	// pos is the next event of the mix. Only the goroutine that owns the
	// session touches it (the handshake burst, then the sender, which
	// starts after the burst and ends before the next session).
	pos int

	sent      atomic.Uint64 // events fully written
	sessions  atomic.Uint64 // connections served
	commands  atomic.Uint64 // commands received
	unknown   atomic.Uint64 // read-only commands answered with CommandNotFound
	refused   atomic.Uint64 // commands a read-only client never sends
	malformed atomic.Uint64 // lines that were not a command
	hung      atomic.Bool   // a hanging VM past its first session

	everNegotiated atomic.Bool
}

func newVM(index int, hang bool, mix []eventTemplate) *vm {
	return &vm{
		index: index,
		name:  vmName(index),
		uuid:  vmUUID(index),
		hang:  hang,
		mix:   mix,
		pos:   (index * 7) % len(mix),
	}
}

func vmName(i int) string { return "vm-" + pad(i, 5) }

func vmUUID(i int) string { return "5c0ffee0-0000-4000-8000-" + pad(i, 12) }

func pad(i, width int) string {
	s := strconv.Itoa(i)
	for len(s) < width {
		s = "0" + s
	}
	return s
}

func (v *vm) nextEvent() *eventTemplate {
	t := &v.mix[v.pos]
	v.pos++
	if v.pos == len(v.mix) {
		v.pos = 0
	}
	v.world.note(t)
	return t
}

// session is one client connection to a vm.
type session struct {
	vm   *vm
	f    *fleet
	conn net.Conn
	wmu  sync.Mutex // serializes writes: replies and event chunks
	buf  []byte     // reply and burst buffer, used by the serving goroutine only
	ends []int
}

// serve speaks QMP on conn until the client hangs up or ctx ends, then
// closes conn. It returns once the session's event sender has stopped.
func (v *vm) serve(ctx context.Context, f *fleet, conn net.Conn) {
	v.sessions.Add(1)
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer func() {
		cancel()
		stop()
		_ = conn.Close()
	}()
	if v.hung.Load() {
		_, _ = io.Copy(io.Discard, conn)
		return
	}
	s := &session{vm: v, f: f, conn: conn}
	if !s.write([]byte(greeting), nil) {
		return
	}
	var senderDone chan struct{}
	defer func() {
		if senderDone != nil {
			cancel()
			<-senderDone
		}
		if v.hang {
			v.hung.Store(true)
		}
	}()
	negotiated := false
	r := bufio.NewReaderSize(conn, 4<<10)
	for {
		line, err := readLine(r)
		if err != nil {
			if errors.Is(err, errLineTooLong) {
				v.malformed.Add(1)
				f.logf("%s: command longer than %d bytes; closing the session", v.name, maxCommandBytes)
			}
			return
		}
		if len(line) == 0 {
			continue
		}
		out, nowNegotiated := s.handle(line, negotiated)
		if out != nil && !s.write(out, s.ends) {
			return
		}
		if nowNegotiated && !negotiated {
			negotiated = true
			f.negotiated(v)
			if !v.hang {
				senderDone = make(chan struct{})
				go s.sendEvents(ctx, senderDone)
			}
		}
	}
}

var errLineTooLong = errors.New("line too long")

// readLine returns the next line without its line ending.
func readLine(r *bufio.Reader) ([]byte, error) {
	var long []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(long)+len(chunk) > maxCommandBytes {
				return nil, errLineTooLong
			}
			long = append(long, chunk...)
			continue
		}
		if err != nil {
			return nil, err
		}
		if long != nil {
			chunk = append(long, chunk...)
		}
		for len(chunk) > 0 && (chunk[len(chunk)-1] == '\n' || chunk[len(chunk)-1] == '\r') {
			chunk = chunk[:len(chunk)-1]
		}
		return chunk, nil
	}
}

// command is a QMP command as a client sends it.
type command struct {
	Execute string          `json:"execute"`
	ExecOOB string          `json:"exec-oob"`
	ID      json.RawMessage `json:"id"`
}

// handle answers one command line. It returns what to write (nil for
// nothing, as a hung QEMU) and whether the session is now negotiated. For
// the qmp_capabilities reply, s.ends marks the events of the burst that
// follows it in the same write.
func (s *session) handle(line []byte, negotiated bool) (out []byte, nowNegotiated bool) {
	v := s.vm
	s.ends = s.ends[:0]
	var cmd command
	if err := json.Unmarshal(line, &cmd); err != nil || (cmd.Execute == "" && cmd.ExecOOB == "") {
		v.malformed.Add(1)
		s.f.logf("%s: malformed command %q", v.name, excerpt(line))
		if err != nil {
			return s.errorReply(nil, "GenericError", "JSON parse error, "+err.Error()), negotiated
		}
		return s.errorReply(cmd.ID, "GenericError", "Expected either 'execute' or 'exec-oob'"), negotiated
	}
	v.commands.Add(1)
	name := cmd.Execute
	if cmd.ExecOOB != "" {
		name = cmd.ExecOOB
	}
	if cmd.ExecOOB != "" || !readOnly(name) {
		if n := v.refused.Add(1); n <= maxRefusalLogs {
			s.f.logf("%s: REFUSED %q: a read-only client never sends it (%s)", v.name, name, excerpt(line))
		}
		s.f.refusedAny.Store(true)
		return s.errorReply(cmd.ID, "CommandNotFound", "The command "+name+" has not been found"), negotiated
	}
	if v.hang && negotiated {
		return nil, negotiated
	}
	switch {
	case !negotiated && name != "qmp_capabilities":
		return s.errorReply(cmd.ID, "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"), false
	case name == "qmp_capabilities" && negotiated:
		return s.errorReply(cmd.ID, "CommandNotFound", "Capabilities negotiation is already complete, command ignored"), true
	case name == "qmp_capabilities":
		out = s.returnReply(cmd.ID, "{}")
		if !v.hang {
			out = s.appendBurst(out)
		}
		return out, true
	}
	if ret, ok := v.queryReply(name); ok {
		return s.returnReply(cmd.ID, ret), true
	}
	v.unknown.Add(1)
	return s.errorReply(cmd.ID, "CommandNotFound", "The command "+name+" has not been found"), true
}

// returnReply renders {"return": ret, "id": id} as QEMU 7.2 does.
func (s *session) returnReply(id json.RawMessage, ret string) []byte {
	b := append(s.buf[:0], `{"return": `...)
	b = append(b, ret...)
	if len(id) > 0 {
		b = append(b, `, "id": `...)
		b = append(b, id...)
	}
	b = append(b, "}\r\n"...)
	s.buf = b
	return b
}

// errorReply renders {"id": id, "error": {...}}: QEMU 7.2 puts the id
// first in error replies.
func (s *session) errorReply(id json.RawMessage, class, desc string) []byte {
	b := append(s.buf[:0], '{')
	if len(id) > 0 {
		b = append(b, `"id": `...)
		b = append(b, id...)
		b = append(b, ", "...)
	}
	b = append(b, `"error": {"class": `...)
	b = strconv.AppendQuote(b, class)
	b = append(b, `, "desc": `...)
	b = strconv.AppendQuote(b, desc)
	b = append(b, "}}\r\n"...)
	s.buf = b
	return b
}

// appendBurst appends the handshake burst: events QEMU had queued, sent
// in the same write as the qmp_capabilities reply.
func (s *session) appendBurst(b []byte) []byte {
	now := time.Now()
	for range s.f.cfg.burst {
		b = appendEvent(b, s.vm.nextEvent(), now.Unix(), int64(now.Nanosecond()/1000))
		s.ends = append(s.ends, len(b))
	}
	s.buf = b
	return b
}

// write sends b in one write. ends are the offsets in b at which an event
// ends; the events wholly written are counted as sent. It reports whether
// the whole of b went out.
func (s *session) write(b []byte, ends []int) bool {
	s.wmu.Lock()
	n, err := s.conn.Write(b)
	s.wmu.Unlock()
	if len(ends) > 0 {
		s.vm.sent.Add(uint64(sort.SearchInts(ends, n+1)))
	}
	return err == nil
}

// sendEvents sends the VM's events during the fleet's sending window: as
// fast as the socket takes them (rate 0), in writes of floodChunkBytes, or
// rate per second, each event in its own write at its time (a late timer
// sends the events it owes in one write).
func (s *session) sendEvents(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	f := s.f
	select {
	case <-ctx.Done():
		return
	case <-f.started:
	}
	f.senders.Add(1)
	defer f.senders.Add(-1)
	if f.cfg.rate <= 0 {
		s.flood(ctx)
	} else {
		s.paced(ctx)
	}
}

func (s *session) flood(ctx context.Context) {
	end := s.f.end
	buf := make([]byte, 0, floodChunkBytes+512)
	ends := make([]int, 0, floodChunkBytes/64)
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(end) {
			return
		}
		sec, usec := now.Unix(), int64(now.Nanosecond()/1000)
		buf, ends = buf[:0], ends[:0]
		for len(buf) < floodChunkBytes {
			buf = appendEvent(buf, s.vm.nextEvent(), sec, usec)
			ends = append(ends, len(buf))
		}
		if !s.write(buf, ends) {
			return
		}
	}
}

func (s *session) paced(ctx context.Context) {
	f := s.f
	interval := time.Duration(float64(time.Second) / f.cfg.rate)
	if interval <= 0 {
		interval = 1
	}
	next := f.start
	if now := time.Now(); now.After(next) {
		next = now
	}
	next = next.Add(rand.N(interval))
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	buf := make([]byte, 0, 4<<10)
	var ends []int
	for {
		if !next.Before(f.end) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		now := time.Now()
		buf, ends = buf[:0], ends[:0]
		for !next.After(now) && next.Before(f.end) && len(buf) < floodChunkBytes {
			buf = appendEvent(buf, s.vm.nextEvent(), next.Unix(), int64(next.Nanosecond()/1000))
			ends = append(ends, len(buf))
			next = next.Add(interval)
		}
		if len(buf) > 0 && !s.write(buf, ends) {
			return
		}
		timer.Reset(time.Until(next))
	}
}

// excerpt returns at most 120 bytes of b, for a log line.
func excerpt(b []byte) string {
	if len(b) > 120 {
		return string(b[:120]) + "..."
	}
	return string(b)
}
