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
	// Replies maps a command name to QEMU's first recorded answer: the
	// state when the client connected, which is what a client's initial
	// queries see. (Later answers depend on when they are asked relative to
	// the events, which a replay cannot reproduce faithfully.)
	Replies map[string]Reply
	// Events are the recorded event lines, in wire order.
	Events []string
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
	tr := &Transcript{Replies: map[string]Reply{}}
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
			if _, seen := tr.Replies[cmd]; !seen {
				tr.Replies[cmd] = r
			}
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

// EmitEvent sends the transcript's i-th event.
func (s *Server) EmitEvent(tr *Transcript, i int) error { return s.EmitRaw(tr.Events[i]) }
