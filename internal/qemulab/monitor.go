package qemulab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"
)

// ErrClosed is wrapped by the errors of a Monitor whose connection has ended,
// whether because Close was called or because QEMU hung up or exited.
var ErrClosed = errors.New("qemulab: monitor closed")

// CommandError is a QMP error reply: {"error": {"class": ..., "desc": ...}}.
type CommandError struct {
	Command string // the command that failed
	Class   string // QMP error class, e.g. "GenericError", "DeviceNotActive"
	Desc    string // QEMU's human-readable description
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("qemulab: %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is one QMP event as received by a Monitor.
type Event struct {
	// Index is the position of the event in the monitor's event log
	// (0 for the first event the monitor received).
	Index        int
	Name         string
	Data         json.RawMessage // nil when the event has no data
	Seconds      int64           // QEMU's timestamp; -1 when QEMU's clock failed
	Microseconds int64
	Raw          []byte // the event exactly as QEMU sent it, without the line ending
}

// Decode unmarshals the event's data into v.
func (e Event) Decode(v any) error {
	if e.Data == nil {
		return fmt.Errorf("qemulab: %s has no data", e.Name)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("qemulab: %s data: %w", e.Name, err)
	}
	return nil
}

// Time returns the event's QEMU timestamp.
func (e Event) Time() time.Time {
	return time.Unix(e.Seconds, e.Microseconds*1000)
}

// MonitorOptions tunes NewMonitor and DialMonitor. The zero value is fine.
type MonitorOptions struct {
	// Trace, if set, is called with every JSON object exchanged, exactly as
	// it went over the wire, without the line ending: sent is true for the
	// client's commands (called before they are written) and false for what
	// QEMU sends (greeting, replies, events; called from the reader goroutine
	// in wire order). Trace must not block and must not call the Monitor.
	// The slice must not be retained after Trace returns.
	Trace func(sent bool, line []byte)
}

// Monitor is a raw QMP client for tests: it may send any command.
//
// It numbers commands with a uint64 id and matches replies by id, so
// Execute may be called from several goroutines at once. One reader goroutine,
// started by NewMonitor and stopped by Close, decodes everything QEMU sends:
// replies go to the waiting Execute, events are appended to an unbounded log
// (fine for a short-lived test VM) that Expect, WaitEvent and Events read.
type Monitor struct {
	conn     net.Conn
	dec      *json.Decoder
	trace    func(bool, []byte)
	greeting json.RawMessage

	wmu sync.Mutex // serializes writes to conn

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]pendingCall
	events  []Event
	changed chan struct{} // closed and replaced whenever an event is appended
	err     error         // why the reader stopped; wraps ErrClosed

	done      chan struct{} // closed when the reader goroutine has returned
	closeOnce sync.Once
}

type pendingCall struct {
	command string
	ch      chan reply // buffered (1): the reader never blocks on it
}

type reply struct {
	ret json.RawMessage
	err error
}

// envelope is what any QMP server message decodes into.
type envelope struct {
	QMP       json.RawMessage `json:"QMP"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID json.RawMessage `json:"id"`
}

// DialMonitor connects to the QMP server socket at path (unix) and performs
// the handshake like NewMonitor. The dial and the handshake are bounded by ctx.
func DialMonitor(ctx context.Context, path string, opts MonitorOptions) (*Monitor, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qemulab: dial monitor: %w", err)
	}
	return NewMonitor(ctx, c, opts)
}

// NewMonitor takes ownership of c, reads the QMP greeting (tolerating events
// sent before it), sends qmp_capabilities and waits for its return. The
// handshake is bounded by ctx; on failure c is closed. After a successful
// return the caller must call Close to stop the reader goroutine.
func NewMonitor(ctx context.Context, c net.Conn, opts MonitorOptions) (*Monitor, error) {
	m := &Monitor{
		conn:    c,
		dec:     json.NewDecoder(c),
		trace:   opts.Trace,
		pending: make(map[uint64]pendingCall),
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	if err := m.readGreeting(ctx); err != nil {
		c.Close()
		return nil, err
	}
	go m.readLoop()
	if _, err := m.Execute(ctx, "qmp_capabilities", nil); err != nil {
		m.Close()
		return nil, fmt.Errorf("qemulab: handshake: %w", err)
	}
	return m, nil
}

func (m *Monitor) readGreeting(ctx context.Context) error {
	release := bound(ctx, m.conn.SetReadDeadline)
	defer release()
	for {
		var raw json.RawMessage
		if err := m.dec.Decode(&raw); err != nil {
			return fmt.Errorf("qemulab: read greeting: %w", ctxErr(ctx, err))
		}
		if m.trace != nil {
			m.trace(false, raw)
		}
		var env envelope
		if err := json.Unmarshal(raw, &env); err != nil {
			return fmt.Errorf("qemulab: read greeting: %w", err)
		}
		switch {
		case env.QMP != nil:
			m.greeting = raw
			return nil
		case env.Event != "":
			m.addEvent(&env, raw)
		default:
			return fmt.Errorf("qemulab: expected a QMP greeting, got %s", raw)
		}
	}
}

// Greeting returns the greeting QEMU sent, e.g. {"QMP": {"version": ...}}.
func (m *Monitor) Greeting() json.RawMessage { return m.greeting }

func (m *Monitor) readLoop() {
	defer close(m.done)
	var err error
	for {
		var raw json.RawMessage
		if err = m.dec.Decode(&raw); err != nil {
			break
		}
		if m.trace != nil {
			m.trace(false, raw)
		}
		var env envelope
		if err = json.Unmarshal(raw, &env); err != nil {
			break
		}
		switch {
		case env.Event != "":
			m.addEvent(&env, raw)
		case env.Return != nil || env.Error != nil:
			m.deliver(&env)
		}
		// Anything else (a second greeting, an unknown shape) is ignored.
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.err = fmt.Errorf("%w: %w", ErrClosed, err)
	for id, p := range m.pending {
		p.ch <- reply{err: fmt.Errorf("qemulab: %s: %w", p.command, m.err)}
		delete(m.pending, id)
	}
}

func (m *Monitor) addEvent(env *envelope, raw json.RawMessage) {
	ev := Event{Name: env.Event, Data: env.Data, Raw: raw}
	if env.Timestamp != nil {
		ev.Seconds, ev.Microseconds = env.Timestamp.Seconds, env.Timestamp.Microseconds
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ev.Index = len(m.events)
	m.events = append(m.events, ev)
	close(m.changed)
	m.changed = make(chan struct{})
}

// deliver hands a reply to its waiting Execute. A reply with an id we don't
// know (its Execute gave up) is dropped.
func (m *Monitor) deliver(env *envelope) {
	id, err := strconv.ParseUint(string(env.ID), 10, 64)
	if err != nil {
		return
	}
	m.mu.Lock()
	p, ok := m.pending[id]
	delete(m.pending, id)
	m.mu.Unlock()
	if !ok {
		return
	}
	if env.Error != nil {
		p.ch <- reply{err: &CommandError{Command: p.command, Class: env.Error.Class, Desc: env.Error.Desc}}
		return
	}
	p.ch <- reply{ret: env.Return}
}

// Execute sends command with args (any JSON-marshalable value, or nil for
// none) and waits for its reply. It returns the "return" value, or a
// *CommandError for an error reply. If ctx ends first, Execute returns an
// error wrapping ctx.Err(); the monitor stays usable and the late reply is
// dropped. If the connection ends, the error wraps ErrClosed.
func (m *Monitor) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	m.mu.Lock()
	if m.err != nil {
		err := m.err
		m.mu.Unlock()
		return nil, fmt.Errorf("qemulab: %s: %w", command, err)
	}
	m.nextID++
	id := m.nextID
	ch := make(chan reply, 1)
	m.pending[id] = pendingCall{command: command, ch: ch}
	m.mu.Unlock()

	msg := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{command, args, id}
	line, err := json.Marshal(msg)
	if err == nil {
		err = ctx.Err() // don't send a command nobody waits for
	}
	if err == nil {
		err = m.write(ctx, line)
	}
	if err != nil {
		m.forget(id)
		return nil, fmt.Errorf("qemulab: %s: %w", command, err)
	}
	select {
	case r := <-ch:
		return r.ret, r.err
	case <-ctx.Done():
		m.forget(id)
		return nil, fmt.Errorf("qemulab: %s: %w", command, ctx.Err())
	}
}

func (m *Monitor) forget(id uint64) {
	m.mu.Lock()
	delete(m.pending, id)
	m.mu.Unlock()
}

// write sends one line. A write that failed after sending part of the line
// leaves the stream broken, so it closes the connection: the reader then
// fails every pending call.
func (m *Monitor) write(ctx context.Context, line []byte) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if m.trace != nil {
		m.trace(true, line)
	}
	release := bound(ctx, m.conn.SetWriteDeadline)
	n, err := m.conn.Write(append(line, '\n'))
	release()
	if err != nil {
		if n > 0 {
			m.conn.Close()
		}
		return ctxErr(ctx, err)
	}
	return nil
}

// Mark returns the current length of the event log: a position to pass to
// WaitEvent so that only events received from now on are considered.
func (m *Monitor) Mark() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.events)
}

// Events returns a copy of every event received so far, oldest first.
func (m *Monitor) Events() []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Event(nil), m.events...)
}

// WaitEvent returns the first event named name at log position since or
// later, waiting for it if needed. Take since from Mark (or an earlier
// Event.Index+1) before triggering the event, so that an event QEMU sends
// before the triggering command returns is not missed. Events received before
// the connection ended are still found after it ended.
func (m *Monitor) WaitEvent(ctx context.Context, name string, since int) (Event, error) {
	return m.WaitFunc(ctx, name, since, func(ev Event) bool { return ev.Name == name })
}

// WaitFunc is like WaitEvent but returns the first event at position since
// or later for which match returns true. what names the awaited event in
// errors. match is called with the monitor's lock held: it must not call the
// Monitor.
func (m *Monitor) WaitFunc(ctx context.Context, what string, since int, match func(Event) bool) (Event, error) {
	for {
		m.mu.Lock()
		for i := max(since, 0); i < len(m.events); i++ {
			if match(m.events[i]) {
				ev := m.events[i]
				m.mu.Unlock()
				return ev, nil
			}
		}
		since = len(m.events)
		changed, closedErr := m.changed, m.err
		m.mu.Unlock()
		if closedErr != nil {
			return Event{}, fmt.Errorf("qemulab: wait for %s: %w", what, closedErr)
		}
		select {
		case <-changed:
		case <-m.done:
		case <-ctx.Done():
			return Event{}, fmt.Errorf("qemulab: wait for %s: %w", what, ctx.Err())
		}
	}
}

// EventWith returns a match function for WaitFunc that accepts events named
// name whose data member key is the JSON string val, e.g.
// EventWith("BLOCK_JOB_READY", "device", "mirror0").
func EventWith(name, key, val string) func(Event) bool {
	return func(ev Event) bool {
		if ev.Name != name || ev.Data == nil {
			return false
		}
		var data map[string]json.RawMessage
		if json.Unmarshal(ev.Data, &data) != nil {
			return false
		}
		var got string
		return json.Unmarshal(data[key], &got) == nil && got == val
	}
}

// Expectation waits for events of one name received after its creation.
// Create it with Monitor.Expect before triggering the event. It is not safe
// for concurrent use.
type Expectation struct {
	m    *Monitor
	name string
	next int
}

// Expect returns an Expectation for the next event named name received from
// now on.
func (m *Monitor) Expect(name string) *Expectation {
	return &Expectation{m: m, name: name, next: m.Mark()}
}

// Wait returns the next matching event and advances past it, so a second
// Wait returns the one after.
func (e *Expectation) Wait(ctx context.Context) (Event, error) {
	ev, err := e.m.WaitEvent(ctx, e.name, e.next)
	if err == nil {
		e.next = ev.Index + 1
	}
	return ev, err
}

// Done is closed when the connection has ended and the reader has stopped.
func (m *Monitor) Done() <-chan struct{} { return m.done }

// Err returns why the connection ended (wrapping ErrClosed), or nil while it
// is alive.
func (m *Monitor) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Close closes the connection and waits for the reader goroutine to return.
// Pending Execute calls fail with ErrClosed. Close is idempotent and safe to
// call from any goroutine except from a Trace callback.
func (m *Monitor) Close() error {
	m.closeOnce.Do(func() { m.conn.Close() })
	<-m.done
	return nil
}
