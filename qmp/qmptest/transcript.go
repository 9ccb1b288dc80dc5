package qmptest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
)

// Transcript is a QMP conversation recorded from a real QEMU: a JSON Lines
// file with one object per message, {"dir": "recv"|"send", "line": {...}},
// where "recv" lines came from QEMU and "send" lines from the client.
type Transcript struct {
	// Greeting is QEMU's greeting line.
	Greeting string
	// Replies maps a command name to QEMU's recorded answer (the last one
	// recorded for that command).
	Replies map[string]Reply
	// Events are the recorded event lines, in wire order.
	Events []string

	// timeline keeps every recorded reply with the number of events QEMU
	// had sent before it, so that a replay can answer a query with what
	// QEMU said at that point of the recording.
	timeline map[string][]timedReply
}

type timedReply struct {
	afterEvents int
	reply       Reply
}

// ReplyAt returns the answer to command as recorded after the first
// `events` events: the last reply recorded at or before that point, else
// the first one recorded. ok is false if the command was never recorded.
func (tr *Transcript) ReplyAt(command string, events int) (Reply, bool) {
	replies := tr.timeline[command]
	if len(replies) == 0 {
		return Reply{}, false
	}
	r := replies[0].reply
	for _, t := range replies {
		if t.afterEvents <= events {
			r = t.reply
		}
	}
	return r, true
}

type transcriptLine struct {
	Dir  string          `json:"dir"`
	Line json.RawMessage `json:"line"`
}

// LoadTranscript reads a transcript file.
func LoadTranscript(path string) (*Transcript, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := &Transcript{Replies: map[string]Reply{}, timeline: map[string][]timedReply{}}
	commands := map[string]string{} // id → command name
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var tl transcriptLine
		if err := json.Unmarshal(sc.Bytes(), &tl); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		var msg struct {
			QMP     json.RawMessage `json:"QMP"`
			Event   string          `json:"event"`
			Execute string          `json:"execute"`
			Return  json.RawMessage `json:"return"`
			Error   *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			ID json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(tl.Line, &msg); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		compact := new(bytes.Buffer)
		if err := json.Compact(compact, tl.Line); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		switch {
		case tl.Dir == "send":
			commands[string(msg.ID)] = msg.Execute
		case msg.QMP != nil:
			tr.Greeting = compact.String()
		case msg.Event != "":
			tr.Events = append(tr.Events, compact.String())
		case msg.Error != nil || msg.Return != nil:
			cmd := commands[string(msg.ID)]
			r := ReturnRaw(string(msg.Return))
			if msg.Error != nil {
				r = Fail(msg.Error.Class, msg.Error.Desc)
			}
			tr.Replies[cmd] = r
			tr.timeline[cmd] = append(tr.timeline[cmd], timedReply{afterEvents: len(tr.Events), reply: r})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if tr.Greeting == "" {
		return nil, fmt.Errorf("%s: %w", path, ErrNoGreeting)
	}
	return tr, nil
}

// EmitEvents sends the transcript's events in recorded order.
func (s *Server) EmitEvents(tr *Transcript) error {
	for i := range tr.Events {
		if err := s.EmitEvent(tr, i); err != nil {
			return err
		}
	}
	return nil
}

// EmitEvent sends the transcript's i-th event. From then on, a server
// replaying tr answers queries with what QEMU replied at that point of the
// recording.
func (s *Server) EmitEvent(tr *Transcript, i int) error {
	s.mu.Lock()
	s.eventsSent = i + 1
	s.mu.Unlock()
	return s.EmitRaw(tr.Events[i])
}
