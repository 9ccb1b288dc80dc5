// Package tailbuf keeps the last bytes of a child process's output, for
// error messages of the test tooling that runs QEMU, Prometheus and the
// exporter.
package tailbuf

import (
	"io"
	"sync"
)

// Buffer keeps the last Max bytes written to it and copies every write to
// W, if set. It is safe for concurrent use (a process's stdout and stderr
// are copied by two goroutines). The zero value keeps nothing.
type Buffer struct {
	Max int
	W   io.Writer

	mu sync.Mutex
	b  []byte
}

// New returns a Buffer keeping the last max bytes and copying to w.
func New(max int, w io.Writer) *Buffer { return &Buffer{Max: max, W: w} }

// Write implements io.Writer. It never fails: a failing copy to W must not
// break the child's output pipe.
func (t *Buffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.W != nil {
		_, _ = t.W.Write(p)
	}
	t.b = append(t.b, p...)
	if len(t.b) > 2*t.Max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.Max:]...)
	}
	return len(p), nil
}

// String returns the last Max bytes written.
func (t *Buffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.b) > t.Max {
		return string(t.b[len(t.b)-t.Max:])
	}
	return string(t.b)
}
