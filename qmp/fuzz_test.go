package qmp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// transcriptSeeds returns every message recorded from real QEMU in the
// collector's transcripts.
func transcriptSeeds(tb testing.TB) [][]byte {
	files, _ := filepath.Glob("../collector/testdata/transcripts/*.jsonl")
	var out [][]byte
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			var tl struct {
				Line json.RawMessage `json:"line"`
			}
			if json.Unmarshal(sc.Bytes(), &tl) == nil && len(tl.Line) > 0 {
				out = append(out, append([]byte(nil), tl.Line...))
			}
		}
	}
	return out
}

var handSeeds = []string{
	`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}`,
	`{"timestamp": {"seconds": 1267020223, "microseconds": 435656}, "event": "BALLOON_CHANGE", "data": {"actual": 944766976}}`,
	`{"return": {}, "id": 1}`,
	`{"error": {"class": "CommandNotFound", "desc": "x"}, "id": 7}`,
	`{"event": "X\u0041", "data": [1, -2.5e3, true, false, null, "\"\\\/\b\f\n\r\t"]}`,
	"{\"a\":1}\r\n{\"b\":2}\n",
	`{"a":`,
	`[[[[[[[[[[[[`,
	`{"event": {}}`,
	"\xff\xfe",
}

// FuzzDecode feeds arbitrary bytes to the reader and the message parser.
// It checks that nothing panics or hangs, that the line bound holds, and
// that the hand-written scanner agrees with encoding/json on which lines
// are valid JSON objects.
func FuzzDecode(f *testing.F) {
	for _, s := range handSeeds {
		f.Add([]byte(s))
	}
	for _, s := range transcriptSeeds(f) {
		f.Add(append(s, '\r', '\n'))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 4096
		lr := newLineReader(bytes.NewReader(data), max)
		var m message
		for {
			line, err := lr.next()
			if err != nil {
				if err != io.EOF && err != io.ErrUnexpectedEOF && err != ErrMessageTooLarge {
					t.Fatalf("unexpected reader error %v", err)
				}
				return
			}
			if len(line) > max {
				t.Fatalf("line of %d bytes passed a %d-byte bound", len(line), max)
			}
			perr := parseMessage(line, &m)
			trimmed := bytes.Trim(line, " \t\r\n") // JSON's white space, not Unicode's
			isObject := json.Valid(line) && len(trimmed) > 0 && trimmed[0] == '{'
			if perr == nil && !isObject {
				t.Fatalf("scanner accepted %q, encoding/json rejects it", line)
			}
			// A non-string "event" is valid JSON but not a QMP message.
			nonStringEvent := perr != nil && strings.Contains(perr.Error(), "event name is not a string")
			if perr != nil && isObject && !nonStringEvent && !bytes.Contains(line, []byte("[[")) && !bytes.Contains(line, []byte("{{")) && bytes.Count(line, []byte("{"))+bytes.Count(line, []byte("[")) < maxDepth {
				t.Fatalf("scanner rejected valid object %q: %v", line, perr)
			}
			if perr == nil && m.hasEvent {
				if _, err := m.eventName(); err != nil && !bytes.Contains(m.event, []byte(`\`)) {
					t.Fatalf("eventName(%q): %v", m.event, err)
				}
				_ = parseTimestamp(m.timestamp)
			}
			if perr == nil {
				parseID(m.id)
			}
		}
	})
}

func BenchmarkDecodeEvent(b *testing.B) {
	line := []byte(`{"timestamp": {"seconds": 1732550000, "microseconds": 123456}, "event": "BLOCK_IO_ERROR", "data": {"device": "", "node-name": "disk0-format", "operation": "write", "action": "stop", "nospace": false, "reason": "Input/output error", "qom-path": "/machine/peripheral/disk0/virtio-backend"}}`)
	var m message
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		if err := parseMessage(line, &m); err != nil {
			b.Fatal(err)
		}
		if _, err := m.eventName(); err != nil {
			b.Fatal(err)
		}
		_ = parseTimestamp(m.timestamp)
	}
}

// repeatReader yields the same bytes forever.
type repeatReader struct {
	data []byte
	off  int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.data[r.off:])
		n += c
		r.off = (r.off + c) % len(r.data)
	}
	return n, nil
}

// BenchmarkReaderEvent measures the reader's whole per-event path: line
// split, parse, timestamp, delivery to OnEvent.
func BenchmarkReaderEvent(b *testing.B) {
	line := []byte(`{"timestamp": {"seconds": 1732550000, "microseconds": 123456}, "event": "RTC_CHANGE", "data": {"offset": 3600, "qom-path": "/machine/unattached/device[4]"}}` + "\r\n")
	n := 0
	c := &Conn{opts: Options{OnEvent: func(ev Event) { n += len(ev.Data) }}, lr: newLineReader(&repeatReader{data: line}, DefaultMaxMessageBytes)}
	var m message
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		l, err := c.lr.next()
		if err != nil {
			b.Fatal(err)
		}
		c.dispatch(l, &m)
	}
	if n == 0 {
		b.Fatal("no event delivered")
	}
}
