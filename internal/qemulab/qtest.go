package qemulab

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
)

// QTest is a client of QEMU's qtest line protocol: a command such as
// "outb 0x505 0x1" is answered by a line starting with "OK" (or "FAIL"/"ERR").
// Commands are serialized; QTest is safe for concurrent use. There is no
// background goroutine: each call reads its own answer, bounded by its ctx.
// A call that fails half-way (timeout, I/O error) leaves the stream in an
// unknown state, so every later call fails too.
type QTest struct {
	mu     sync.Mutex
	conn   net.Conn
	r      *bufio.Reader
	broken error
}

func newQTest(c net.Conn) *QTest {
	return &QTest{conn: c, r: bufio.NewReader(c)}
}

// Command sends one qtest command line (without the newline) and returns the
// text after "OK" in the answer, trimmed. Asynchronous "IRQ ..." lines (only
// sent after irq_intercept_in/out) are skipped.
func (q *QTest) Command(ctx context.Context, line string) (string, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.broken != nil {
		return "", fmt.Errorf("qemulab: qtest %q: %w", line, q.broken)
	}
	answer, err := q.roundTrip(ctx, line)
	if err != nil {
		q.broken = err
		return "", fmt.Errorf("qemulab: qtest %q: %w", line, err)
	}
	switch {
	case answer == "OK":
		return "", nil
	case strings.HasPrefix(answer, "OK "):
		return strings.TrimSpace(answer[3:]), nil
	default:
		return "", fmt.Errorf("qemulab: qtest %q: %s", line, answer)
	}
}

func (q *QTest) roundTrip(ctx context.Context, line string) (string, error) {
	release := bound(ctx, q.conn.SetDeadline)
	defer release()
	if _, err := q.conn.Write([]byte(line + "\n")); err != nil {
		return "", ctxErr(ctx, err)
	}
	for {
		s, err := q.r.ReadString('\n')
		if err != nil {
			return "", ctxErr(ctx, err)
		}
		s = strings.TrimRight(s, "\r\n")
		if strings.HasPrefix(s, "IRQ ") {
			continue
		}
		return s, nil
	}
}

// Outb writes val to I/O port port, as the guest's "out" instruction would.
func (q *QTest) Outb(ctx context.Context, port uint16, val uint8) error {
	return q.out(ctx, "outb", port, uint32(val))
}

// Outw writes a 16-bit val to I/O port port.
func (q *QTest) Outw(ctx context.Context, port uint16, val uint16) error {
	return q.out(ctx, "outw", port, uint32(val))
}

// Outl writes a 32-bit val to I/O port port.
func (q *QTest) Outl(ctx context.Context, port uint16, val uint32) error {
	return q.out(ctx, "outl", port, val)
}

func (q *QTest) out(ctx context.Context, cmd string, port uint16, val uint32) error {
	_, err := q.Command(ctx, fmt.Sprintf("%s 0x%x 0x%x", cmd, port, val))
	return err
}

// Inb reads I/O port port, as the guest's "in" instruction would.
func (q *QTest) Inb(ctx context.Context, port uint16) (uint8, error) {
	v, err := q.in(ctx, "inb", port, 0xff)
	return uint8(v), err
}

// Inw reads a 16-bit value from I/O port port.
func (q *QTest) Inw(ctx context.Context, port uint16) (uint16, error) {
	v, err := q.in(ctx, "inw", port, 0xffff)
	return uint16(v), err
}

// Inl reads a 32-bit value from I/O port port.
func (q *QTest) Inl(ctx context.Context, port uint16) (uint32, error) {
	return q.in(ctx, "inl", port, 0xffffffff)
}

func (q *QTest) in(ctx context.Context, cmd string, port uint16, maxVal uint64) (uint32, error) {
	s, err := q.Command(ctx, fmt.Sprintf("%s 0x%x", cmd, port))
	if err != nil {
		return 0, err
	}
	var v uint64
	if _, err := fmt.Sscanf(s, "0x%x", &v); err != nil || v > maxVal {
		return 0, fmt.Errorf("qemulab: qtest %s 0x%x: unexpected answer %q", cmd, port, s)
	}
	return uint32(v), nil
}

// Close closes the qtest connection. It is idempotent.
func (q *QTest) Close() error {
	q.conn.Close()
	return nil
}
