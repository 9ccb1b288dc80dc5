package hostile

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// NeverGreet accepts a client and never sends a byte: a monitor whose
// QEMU is wedged before its greeting. It records whatever the client sends.
type NeverGreet struct{}

func (NeverGreet) eventsToSend() int { return 0 }

func (NeverGreet) serve(_ context.Context, s *session) error { return s.drain() }

// HangUp closes every connection at once without a byte: with Dial and
// no retry interval, a client that connects and disconnects in a tight
// loop.
type HangUp struct{}

func (HangUp) eventsToSend() int { return 0 }

func (HangUp) serve(context.Context, *session) error { return nil }

// NewIdentity answers like QEMU 7.2, but as a different VM on every
// session: the name and UUID carry the session's number (Prefix-N). It
// hangs up right after answering query-uuid unless Stay is set. Against a
// listener, it is a client that makes up a new VM on each connection.
type NewIdentity struct {
	Prefix string
	Stay   bool
}

func (NewIdentity) eventsToSend() int { return 0 }

func (b NewIdentity) serve(_ context.Context, s *session) error {
	s.p.mu.Lock()
	n := s.p.conns
	s.p.mu.Unlock()
	id := Identity{Name: fmt.Sprintf("%s-%d", b.Prefix, n), UUID: fmt.Sprintf("0e0e0e0e-0000-4000-8000-%012d", n)}
	if err := s.negotiate(); err != nil {
		return err
	}
	errDone := errors.New("identified")
	err := s.answerLoop(id, func(c command) (bool, error) {
		if c.Execute != "query-uuid" || b.Stay {
			return false, nil
		}
		if err := s.answer(c, id); err != nil {
			return true, err
		}
		return true, errDone
	})
	if errors.Is(err, errDone) {
		return nil
	}
	return err
}

// NoCapabilitiesReply greets and then answers nothing, not even
// qmp_capabilities.
type NoCapabilitiesReply struct{}

func (NoCapabilitiesReply) eventsToSend() int { return 0 }

func (NoCapabilitiesReply) serve(_ context.Context, s *session) error {
	if err := s.greet(); err != nil {
		return err
	}
	return s.drain()
}

// Garbage completes the handshake, then sends lines that are not QMP
// messages (not JSON, JSON of the wrong shape, a second greeting, control
// bytes): a burst at once, and two more instead of each reply. It never
// answers a query.
type Garbage struct{}

func (Garbage) eventsToSend() int { return 0 }

func (Garbage) serve(_ context.Context, s *session) error {
	if err := s.negotiate(); err != nil {
		return err
	}
	for _, l := range garbageLines {
		if err := s.writeLine(l); err != nil {
			return err
		}
	}
	for i := 0; ; i += 2 {
		if _, err := s.readCommand(); err != nil {
			return err
		}
		for j := range 2 {
			if err := s.writeLine(garbageLines[(i+j)%len(garbageLines)]); err != nil {
				return err
			}
		}
	}
}

// InvalidUTF8 answers like QEMU 7.2, except that its name, UUID and
// package string carry bytes that are not UTF-8, and on its first session
// it emits events whose names and strings carry them too (see
// InvalidUTF8TrayDevice and the constants after it for what a client
// should make of them).
type InvalidUTF8 struct{ Identity }

func (InvalidUTF8) eventsToSend() int { return len(invalidUTF8Events) }

func (b InvalidUTF8) serve(ctx context.Context, s *session) error {
	if err := s.negotiate(); err != nil {
		return err
	}
	for s.eventsLeft() {
		i, ok := s.takeEvent(len(invalidUTF8Events))
		if !ok {
			break
		}
		e := invalidUTF8Events[i]
		if err := s.sendEvent(event(time.Now(), e.name, e.data)); err != nil {
			s.giveBack()
			return err
		}
	}
	return s.answerLoop(b.Identity, func(c command) (bool, error) {
		switch c.Execute {
		case "query-name":
			return true, s.reply(c, "{\"name\": \""+b.Name+"-\xff\xfe\"}")
		case "query-uuid":
			return true, s.reply(c, "{\"UUID\": \""+b.UUID+"\xc3\"}")
		case "query-version":
			return true, s.reply(c, "{\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian \xff\xfe 7.2\"}")
		}
		return false, nil
	})
}

// UnknownID answers like QEMU 7.2, but before each reply (qmp_capabilities
// included) it sends replies with ids the client never used, or with none.
type UnknownID struct{ Identity }

func (UnknownID) eventsToSend() int { return 0 }

func (b UnknownID) serve(_ context.Context, s *session) error {
	strays := func() error {
		for _, l := range strayReplies {
			if err := s.writeLine(l); err != nil {
				return err
			}
		}
		return nil
	}
	if err := s.greet(); err != nil {
		return err
	}
	for {
		c, err := s.readCommand()
		if err != nil {
			return err
		}
		if err := strays(); err != nil {
			return err
		}
		if c.Execute == "qmp_capabilities" {
			if err := s.reply(c, `{}`); err != nil {
				return err
			}
			break
		}
		if err := s.replyError(c, "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"); err != nil {
			return err
		}
	}
	return s.answerLoop(b.Identity, func(command) (bool, error) { return false, strays() })
}

// DefaultHugeLineBytes is the size of a HugeLine's line when Bytes is 0.
const DefaultHugeLineBytes = 64 << 20

// hugeChunk is the size of each write of a HugeLine.
const hugeChunk = 256 << 10

// HugeLine completes the handshake and then writes one line of Bytes
// bytes (DefaultHugeLineBytes if 0), the start of an event whose data is
// padded, in chunks and without a newline, answering nothing. It stops
// writing when the client hangs up (PayloadWritten tells how far it got)
// or the session ends, and then waits for the client to leave.
type HugeLine struct{ Bytes int }

func (HugeLine) eventsToSend() int { return 0 }

func (b HugeLine) serve(ctx context.Context, s *session) error {
	if err := s.negotiate(); err != nil {
		return err
	}
	size := b.Bytes
	if size <= 0 {
		size = DefaultHugeLineBytes
	}
	var wg sync.WaitGroup
	var readErr error
	wg.Go(func() { readErr = s.drain() })
	head := []byte(`{"timestamp": ` + timestamp(time.Now()) + `, "event": "STOP", "data": {"pad": "`)
	chunk := []byte(strings.Repeat("A", hugeChunk))
	var written int64
	n, err := s.write(head)
	written += int64(n)
	for err == nil && written < int64(size) && ctx.Err() == nil {
		c := chunk[:min(int64(len(chunk)), int64(size)-written)]
		n, err = s.write(c)
		written += int64(n)
	}
	s.p.mu.Lock()
	s.p.written = append(s.p.written, written)
	s.p.mu.Unlock()
	if err != nil {
		// The client gave up on the line; make sure the reader ends too.
		s.cancel()
	}
	wg.Wait()
	if err != nil && !hungUp(err) && ctx.Err() == nil {
		return err
	}
	return readErr
}

// HalfLineThenHang completes the handshake, writes the first half of an
// event line and then nothing more, ever; it reads and records commands
// without answering them.
type HalfLineThenHang struct{}

func (HalfLineThenHang) eventsToSend() int { return 0 }

func (HalfLineThenHang) serve(_ context.Context, s *session) error {
	if err := s.negotiate(); err != nil {
		return err
	}
	line := event(time.Now(), "RESET", `{"guest": false, "reason": "host-qmp-system-reset"}`)
	if _, err := s.write([]byte(line[:len(line)/2])); err != nil {
		return err
	}
	return s.drain()
}

// floodCycles is how many healthy cycles make one write of a Flood.
const floodCycles = 8

// Flood answers like QEMU 7.2 and, from its first handshake on, writes
// events as fast as the client reads them, for the duration For (until
// the peer stops if For is 0); it then only answers queries. Its events
// are Healthy's mix, written in batches of whole cycles with the replies
// between batches, so query-status is always right to say "running".
// Sent counts every event written in full.
type Flood struct {
	Identity
	For time.Duration
}

func (Flood) eventsToSend() int { return -1 }

func (b Flood) serve(ctx context.Context, s *session) error {
	if err := s.negotiate(); err != nil {
		return err
	}
	s.p.mu.Lock()
	if s.p.floodEnd.IsZero() {
		s.p.floodEnd = time.Now().Add(b.For)
		if b.For <= 0 {
			s.p.floodEnd = time.Now().Add(100 * 365 * 24 * time.Hour)
		}
	}
	end := s.p.floodEnd
	s.p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() {
		var batch []byte
		var events int
		var built time.Time
		for ctx.Err() == nil {
			now := time.Now()
			if !now.Before(end) {
				s.p.finishEvents()
				return
			}
			if now.Sub(built) > 100*time.Millisecond {
				batch, events = floodBatch(floodCycles, now)
				built = now
			}
			n, err := s.write(batch)
			if n == len(batch) {
				s.countSent(events)
			} else {
				s.countSent(strings.Count(string(batch[:n]), "\n"))
			}
			if err != nil {
				return
			}
		}
	})
	err := s.answerLoop(b.Identity, nil)
	s.cancel()
	wg.Wait()
	return err
}

// Healthy answers like QEMU 7.2 and, from its first handshake on, emits
// exactly Events events over its life, Rate per second (as fast as it can
// if Rate is 0), a mix of STOP, RESUME, RESET, RTC_CHANGE, VNC_*,
// WATCHDOG, DEVICE_TRAY_MOVED and POWERDOWN with the data QEMU 7.2 gives
// them. An event that could not be written because the session ended is
// sent on the next session. query-status follows STOP and RESUME.
type Healthy struct {
	Identity
	Events int
	Rate   float64
}

func (b Healthy) eventsToSend() int { return b.Events }

func (b Healthy) serve(ctx context.Context, s *session) error {
	if err := s.negotiate(); err != nil {
		return err
	}
	var interval time.Duration
	if b.Rate > 0 {
		interval = time.Duration(float64(time.Second) / b.Rate)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for s.eventsLeft() {
			i, ok := s.takeEvent(b.Events)
			if !ok {
				return
			}
			line, paused := healthyEvent(i, time.Now())
			// QEMU changes the run state, then reports it.
			s.setPaused(paused)
			if err := s.sendEvent(line); err != nil {
				s.giveBack()
				return
			}
			if !s.eventsLeft() || !sleep(ctx, interval) {
				return
			}
		}
	})
	err := s.answerLoop(b.Identity, nil)
	s.cancel()
	wg.Wait()
	return err
}

// Scripted answers like QEMU 7.2 with its Identity and, on its first
// session, emits Events in order: a test chooses names and data that a
// real QEMU would not send, such as markup for the pages' escaping.
type Scripted struct {
	Identity
	Events []ScriptedEvent
}

// ScriptedEvent is one event a Scripted peer emits; Data is raw JSON, or
// empty for none.
type ScriptedEvent struct{ Name, Data string }

func (b Scripted) eventsToSend() int { return len(b.Events) }

func (b Scripted) serve(_ context.Context, s *session) error {
	if err := s.negotiate(); err != nil {
		return err
	}
	for s.eventsLeft() {
		i, ok := s.takeEvent(len(b.Events))
		if !ok {
			break
		}
		if err := s.sendEvent(event(time.Now(), b.Events[i].Name, b.Events[i].Data)); err != nil {
			s.giveBack()
			return err
		}
	}
	return s.answerLoop(b.Identity, nil)
}

// PowerOff answers like QEMU 7.2 until Now is closed, then leaves the
// way a QEMU whose guest panicked with action poweroff does, while the
// client writes the query the panic asks for: it stops reading, so that
// the client's next command fails to write with a broken pipe, writes
// its Events events (at least 2) at once, GUEST_PANICKED {"action":
// "poweroff"} first, SHUTDOWN {"guest": true, "reason": "guest-panic"}
// last and Healthy's mix between, and hangs up. Sent counts an event once
// written in full, that is waiting in the client's receive buffer, which
// a client that closes on its failed write throws away. It leaves once
// over its life; later sessions only answer.
type PowerOff struct {
	Identity
	Events int
	Now    <-chan struct{}
}

func (b PowerOff) eventsToSend() int { return b.Events }

func (b PowerOff) serve(ctx context.Context, s *session) error {
	if err := s.negotiate(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	var leaveErr error
	gone := make(chan struct{}) // the client hung up, or leave stopped reading
	wg.Go(func() {
		select {
		case <-b.Now:
			leaveErr = b.leave(s)
		case <-gone:
		case <-ctx.Done():
		}
	})
	err := s.answerLoop(b.Identity, nil)
	close(gone)
	wg.Wait() // a leave under way writes all its events first
	s.cancel()
	if leaveErr != nil {
		return leaveErr
	}
	return err
}

// leave stops reading, writes the peer's events if it still has them,
// and ends the session.
func (b PowerOff) leave(s *session) error {
	if !s.eventsLeft() {
		return nil
	}
	defer s.cancel() // closes the connection: the hang-up
	if cr, ok := s.nc.(interface{ CloseRead() error }); ok {
		if err := cr.CloseRead(); err != nil {
			return fmt.Errorf("hostile: stop reading: %w", err)
		}
	}
	var batch strings.Builder
	n := 0
	for {
		i, ok := s.takeEvent(b.Events)
		if !ok {
			break
		}
		line, _ := healthyEvent(i, time.Now())
		switch i {
		case 0:
			line = event(time.Now(), "GUEST_PANICKED", `{"action": "poweroff"}`)
		case b.Events - 1:
			line = event(time.Now(), "SHUTDOWN", `{"guest": true, "reason": "guest-panic"}`)
		}
		batch.WriteString(line + "\r\n")
		n++
	}
	written, err := s.write([]byte(batch.String()))
	if written == batch.Len() {
		s.countSent(n)
	} else {
		s.countSent(strings.Count(batch.String()[:written], "\n"))
	}
	s.eventsLeft() // none are: marks the peer's events done
	if err != nil && !hungUp(err) {
		return err
	}
	return nil
}
