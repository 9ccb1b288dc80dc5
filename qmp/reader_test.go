package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// chunkIdle is an idleReader that serves chunks and checks that the line
// reader holds no buffer while it waits.
type chunkIdle struct {
	t      *testing.T
	chunks []string
	waits  int
}

func (c *chunkIdle) readIdle(lr *lineReader) (int, error) {
	c.waits++
	if lr.buf != nil {
		c.t.Errorf("wait %d: the reader holds a %d-byte buffer while idle", c.waits, len(lr.buf))
	}
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	lr.borrow()
	n := copy(lr.buf, c.chunks[0])
	if n < len(c.chunks[0]) {
		c.t.Fatalf("chunk of %d bytes does not fit the borrowed buffer", len(c.chunks[0]))
	}
	c.chunks = c.chunks[1:]
	return n, nil
}

// TestLineReaderIdleHoldsNoBuffer: between messages, a reader with an
// idleReader holds no buffer; a line split across reads, and one longer
// than the borrowed buffer, still come out whole.
func TestLineReaderIdleHoldsNoBuffer(t *testing.T) {
	long := strings.Repeat("y", 3*initialBufferBytes)
	rest := strings.NewReader(long[initialBufferBytes-3:] + "\nlast\n")
	idle := &chunkIdle{t: t, chunks: []string{"one\ntw", "", "", "x\n", "ab\n" + long[:initialBufferBytes-3]}}
	lr := newLineReader(rest, 1<<20)
	lr.buf = nil // as after a handshake that used it up
	lr.idle = idle
	// Chunks after the first are read by lr.r while a partial line is
	// buffered; re-route those through idle's remaining chunks.
	lr.r = readerFunc(func(p []byte) (int, error) {
		if len(idle.chunks) > 0 {
			n := copy(p, idle.chunks[0])
			idle.chunks[0] = idle.chunks[0][n:]
			if idle.chunks[0] == "" {
				idle.chunks = idle.chunks[1:]
			}
			return n, nil
		}
		return rest.Read(p)
	})
	var got []string
	for {
		line, err := lr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(line))
	}
	want := []string{"one", "twx", "ab", long, "last"}
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: got %d bytes %.20q, want %d bytes %.20q", i, len(got[i]), got[i], len(want[i]), want[i])
		}
	}
	if idle.waits < 3 {
		t.Errorf("%d idle waits, want one before each message that starts with nothing buffered", idle.waits)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// TestConnOverUnixSocket runs a session over a real socket, where the
// reader waits through the socket's RawConn: events, a reply larger than
// the borrowed buffer and written in pieces, a deadline-free wait, and
// the peer hanging up.
func TestConnOverUnixSocket(t *testing.T) {
	testConnOverSocket(t, "unix", filepath.Join(t.TempDir(), "qmp.sock"))
}

// TestConnOverTCP: TCP targets and listeners take the same raw read path.
func TestConnOverTCP(t *testing.T) {
	testConnOverSocket(t, "tcp", "127.0.0.1:0")
}

func testConnOverSocket(t *testing.T, network, address string) {
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	big := strings.Repeat("z", 100<<10)
	srvErr := make(chan error, 1)
	go func() {
		srvErr <- func() error {
			nc, err := ln.Accept()
			if err != nil {
				return err
			}
			defer nc.Close()
			r := bufio.NewReader(nc)
			write := func(s string) error { _, err := io.WriteString(nc, s); return err }
			if err := write(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}` + "\r\n"); err != nil {
				return err
			}
			for range 2 {
				line, err := r.ReadString('\n')
				if err != nil {
					return err
				}
				var cmd struct {
					Execute string          `json:"execute"`
					ID      json.RawMessage `json:"id"`
				}
				if err := json.Unmarshal([]byte(line), &cmd); err != nil {
					return err
				}
				switch cmd.Execute {
				case "qmp_capabilities":
					if err := write(`{"return": {}, "id": ` + string(cmd.ID) + "}\r\n"); err != nil {
						return err
					}
				case "query-qmp-schema":
					reply := `{"return": {"name": "` + big + `"}, "id": ` + string(cmd.ID) + "}\r\n"
					// An event first, then the reply in three writes.
					if err := write(`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}` + "\r\n"); err != nil {
						return err
					}
					for _, part := range []string{reply[:10], reply[10 : len(reply)/2], reply[len(reply)/2:]} {
						if err := write(part); err != nil {
							return err
						}
					}
				}
			}
			if err := write(`{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 3}}` + "\r\n"); err != nil {
				return err
			}
			return nil // hangs up
		}()
	}()
	events := make(chan string, 4)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, network, ln.Addr().String(), Options{OnEvent: func(ev Event) { events <- ev.Name }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.lr.idle.(*rawIdleReader); !ok {
		t.Fatalf("a %s socket is read through %T, want its RawConn", network, c.lr.idle)
	}
	var got struct {
		Name string `json:"name"`
	}
	if err := c.Execute(ctx, "query-qmp-schema", nil, &got); err != nil {
		t.Fatal(err)
	}
	if got.Name != big {
		t.Errorf("reply of %d bytes came out as %d", len(big), len(got.Name))
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the peer's hang-up went unnoticed")
	}
	if err := c.Err(); !errors.Is(err, io.EOF) {
		t.Errorf("Err() = %v, want the peer's EOF", err)
	}
	close(events)
	var names []string
	for n := range events {
		names = append(names, n)
	}
	if strings.Join(names, " ") != "STOP RESUME" {
		t.Errorf("events %v, want STOP RESUME", names)
	}
	if err := <-srvErr; err != nil {
		t.Errorf("server: %v", err)
	}
}
