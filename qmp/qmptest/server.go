// Package qmptest provides a scripted, in-memory fake QEMU monitor for
// tests of QMP clients. It speaks over net.Pipe, so no socket is opened,
// and because net.Pipe is synchronous, a client that silently relies on
// buffering shows up as a hang that the test's context turns into a
// failure.
//
// The fake is for unit tests and benchmarks. It is no substitute for an
// end-to-end test against a real qemu-system-x86_64.
package qmptest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Greeting72 is the greeting of Debian's QEMU 7.2, as recorded.
const Greeting72 = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}`

// Command is a command the fake received.
type Command struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	ID        json.RawMessage `json:"id,omitempty"`
	// Raw is the line as received, without its line ending.
	Raw string `json:"-"`
}

// Reply is what a Handler answers: a sequence of parts sent in order. Build
// it with Return, Fail and Raw, and chain with Then. The zero Reply
// (NoReply) sends nothing, as a hung QEMU would.
type Reply struct{ parts []part }

type part struct {
	raw    string          // sent verbatim when set
	ret    json.RawMessage // {"return": ret, "id": <echoed>}
	class  string          // {"error": {...}, "id": <echoed>} when set
	desc   string
	isFail bool
}

// NoReply sends nothing.
var NoReply = Reply{}

// Return answers with {"return": v}, echoing the command's id.
func Return(v any) Reply {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("qmptest: Return: %v", err))
	}
	return Reply{parts: []part{{ret: b}}}
}

// ReturnRaw answers with {"return": <raw JSON>}, echoing the command's id.
func ReturnRaw(raw string) Reply { return Reply{parts: []part{{ret: json.RawMessage(raw)}}} }

// Fail answers with an error reply of the given class, echoing the id.
func Fail(class, desc string) Reply {
	return Reply{parts: []part{{isFail: true, class: class, desc: desc}}}
}

// Raw sends lines verbatim, each followed by "\r\n" as QEMU does. Use it
// for events before a reply, replies with wrong ids, or garbage.
func Raw(lines ...string) Reply {
	r := Reply{}
	for _, l := range lines {
		r.parts = append(r.parts, part{raw: l})
	}
	return r
}

// Then returns r followed by next.
func (r Reply) Then(next Reply) Reply {
	return Reply{parts: append(append([]part(nil), r.parts...), next.parts...)}
}

// Handler answers one command. It runs on the fake's goroutine.
type Handler func(Command) Reply

// Options script a Server.
type Options struct {
	// Greeting is sent when the client connects; empty means the
	// transcript's greeting, else Greeting72.
	Greeting string
	// NoGreeting makes the fake accept and then say nothing.
	NoGreeting bool
	// BeforeGreeting lines are sent before the greeting.
	BeforeGreeting []string
	// Handle answers commands other than qmp_capabilities (and that one
	// too when HandleCapabilities is set). Returning ok=false falls back to
	// the default: the transcript's answer if there is one, else
	// CommandNotFound.
	Handle func(Command) (Reply, bool)
	// HandleCapabilities passes qmp_capabilities to Handle as well.
	HandleCapabilities bool
	// Transcript supplies the greeting and the default answers.
	Transcript *Transcript
}

// Server is the fake QEMU's end of a net.Pipe.
type Server struct {
	t    testing.TB
	opts Options
	conn net.Conn

	wmu sync.Mutex // serializes writes to conn

	mu         sync.Mutex
	received   []Command
	negotiated chan struct{}
	negOnce    sync.Once

	done chan struct{}
}

// New starts a fake QEMU and returns the client end of the pipe, to be
// passed to qmp.NewConn, and the server. The server stops, and the test
// waits for its goroutine, in t.Cleanup.
func New(t testing.TB, opts Options) (net.Conn, *Server) {
	t.Helper()
	client, server := net.Pipe()
	return start(t, opts, client, server)
}

// NewUnix is New over a unix socket instead of a pipe: a write completes
// into the kernel's buffer without waiting for the reader, as on a real
// monitor socket. (A pipe's write waits for the read, so a deadline that
// fires meanwhile fails it.)
func NewUnix(t testing.TB, opts Options) (net.Conn, *Server) {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "qmp.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	return start(t, opts, client, server)
}

func start(t testing.TB, opts Options, client, server net.Conn) (net.Conn, *Server) {
	s := &Server{t: t, opts: opts, conn: server, negotiated: make(chan struct{}), done: make(chan struct{})}
	go s.serve()
	t.Cleanup(func() {
		_ = s.conn.Close()
		_ = client.Close()
		<-s.done
	})
	return client, s
}

func (s *Server) serve() {
	defer close(s.done)
	if s.opts.NoGreeting {
		_, _ = io.Copy(io.Discard, s.conn)
		return
	}
	greeting := s.opts.Greeting
	if greeting == "" && s.opts.Transcript != nil {
		greeting = s.opts.Transcript.Greeting
	}
	if greeting == "" {
		greeting = Greeting72
	}
	for _, l := range s.opts.BeforeGreeting {
		if s.writeLine(l) != nil {
			return
		}
	}
	if s.writeLine(greeting) != nil {
		return
	}
	r := bufio.NewReader(s.conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		var cmd Command
		if err := json.Unmarshal([]byte(line), &cmd); err != nil {
			s.t.Errorf("qmptest: client sent a malformed command %q: %v", line, err)
			continue
		}
		cmd.Raw = line
		s.mu.Lock()
		s.received = append(s.received, cmd)
		s.mu.Unlock()
		if err := s.send(cmd, s.answer(cmd)); err != nil {
			return
		}
		if cmd.Execute == "qmp_capabilities" {
			s.negOnce.Do(func() { close(s.negotiated) })
		}
	}
}

func (s *Server) answer(cmd Command) Reply {
	if cmd.Execute == "qmp_capabilities" && !s.opts.HandleCapabilities {
		return Return(struct{}{})
	}
	if s.opts.Handle != nil {
		if r, ok := s.opts.Handle(cmd); ok {
			return r
		}
	}
	if tr := s.opts.Transcript; tr != nil {
		if r, ok := tr.Replies[cmd.Execute]; ok {
			return r
		}
	}
	return Fail("CommandNotFound", fmt.Sprintf("The command %s has not been found", cmd.Execute))
}

func (s *Server) send(cmd Command, r Reply) error {
	for _, p := range r.parts {
		var line string
		switch {
		case p.raw != "":
			line = p.raw
		case p.isFail:
			e, _ := json.Marshal(map[string]string{"class": p.class, "desc": p.desc})
			line = fmt.Sprintf(`{"error": %s%s}`, e, idSuffix(cmd.ID))
		default:
			line = fmt.Sprintf(`{"return": %s%s}`, p.ret, idSuffix(cmd.ID))
		}
		if err := s.writeLine(line); err != nil {
			return err
		}
	}
	return nil
}

func idSuffix(id json.RawMessage) string {
	if len(id) == 0 {
		return ""
	}
	return `, "id": ` + string(id)
}

func (s *Server) writeLine(line string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := io.WriteString(s.conn, line+"\r\n")
	return err
}

// Negotiated returns a channel closed once the fake has answered
// qmp_capabilities.
func (s *Server) Negotiated() <-chan struct{} { return s.negotiated }

// Emit sends an event with the given name and data (marshalled; nil for
// none) and a fixed timestamp. It blocks until the client has read it, or
// returns an error once the pipe is closed.
func (s *Server) Emit(name string, data any) error {
	ev := map[string]any{
		"event":     name,
		"timestamp": map[string]int64{"seconds": 1700000000, "microseconds": 123456},
	}
	if data != nil {
		ev["data"] = data
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return s.writeLine(string(b))
}

// EmitRaw sends a line verbatim followed by "\r\n".
func (s *Server) EmitRaw(line string) error { return s.writeLine(line) }

// WriteRaw sends bytes verbatim with no line ending (half a message, a
// huge line in pieces).
func (s *Server) WriteRaw(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := s.conn.Write(b)
	return err
}

// Received returns the commands received so far, in order.
func (s *Server) Received() []Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Command(nil), s.received...)
}

// Close hangs up, as a QEMU that exits or is killed does.
func (s *Server) Close() error { return s.conn.Close() }

// Done returns a channel closed when the fake's goroutine has returned.
func (s *Server) Done() <-chan struct{} { return s.done }

// ErrNoGreeting is returned by LoadTranscript for a file without one.
var ErrNoGreeting = errors.New("qmptest: transcript has no greeting")
