package qmp

import (
	"bytes"
	"io"
	"sync"
)

const (
	// DefaultMaxMessageBytes is the default bound on one message: five
	// times QEMU 7.2's ~200 KB query-qmp-schema reply.
	DefaultMaxMessageBytes = 1 << 20

	// initialBufferBytes is the read buffer of an idle connection. Events
	// are a few hundred bytes; replies of a few KiB (query-block) grow the
	// buffer, which shrinks back once they are consumed, so thousands of
	// idle connections cost little (make bench: 4 KiB per VM was a third
	// of an idle VM's heap).
	initialBufferBytes = 1 << 10

	// shrinkAboveBytes is the buffer size above which the reader returns
	// to initialBufferBytes once the large message has been consumed.
	shrinkAboveBytes = 8 << 10
)

// lineReader splits a byte stream into lines ("\n"-terminated) with a bound
// on line length. Unlike bufio.Scanner it grows its buffer on demand up to
// the bound, shrinks it again after a large line, and never copies a line
// that fits: next returns a slice of its buffer, valid until the next call.
type lineReader struct {
	r          io.Reader
	buf        []byte
	start, end int // unread bytes are buf[start:end]
	scanned    int // bytes after start already known to hold no '\n'
	max        int
	err        error // sticky read error, returned once buffered lines are used up

	// idle, when set, reads into a buffer borrowed for the read only
	// when no byte is buffered, so that a connection waiting for its
	// next message holds no buffer (see idleReader).
	idle idleReader
	// pooled is the borrowed buffer buf is, nil when buf is its own.
	pooled *[]byte
}

// idleReader waits until its connection is readable, with no buffer
// held meanwhile, and reads then into the one lr borrows. It returns what
// an io.Reader's Read would.
type idleReader interface {
	readIdle(lr *lineReader) (int, error)
}

// bufPool holds the read buffers of connections that are waiting: with
// thousands of mostly idle connections, only those reading hold one.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, initialBufferBytes)
	return &b
}}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{r: r, buf: make([]byte, initialBufferBytes), max: max}
}

// borrow makes buf a buffer from bufPool.
func (lr *lineReader) borrow() {
	lr.pooled = bufPool.Get().(*[]byte)
	lr.buf, lr.start, lr.end, lr.scanned = *lr.pooled, 0, 0, 0
}

// giveBack drops buf, which must hold no unread byte, and returns the
// borrowed buffer to bufPool (buf is that buffer, or one makeRoom made
// in its place; either way no line handed out is valid any more).
func (lr *lineReader) giveBack() {
	if lr.pooled != nil {
		bufPool.Put(lr.pooled)
	}
	lr.buf, lr.pooled, lr.start, lr.end, lr.scanned = nil, nil, 0, 0, 0
}

// next returns the next line without its "\n". At end of stream it returns
// io.EOF if the stream ended between lines and io.ErrUnexpectedEOF if it
// ended inside one.
func (lr *lineReader) next() ([]byte, error) {
	for {
		if i := bytes.IndexByte(lr.buf[lr.start+lr.scanned:lr.end], '\n'); i >= 0 {
			j := lr.start + lr.scanned + i
			line := lr.buf[lr.start:j]
			lr.start, lr.scanned = j+1, 0
			return line, nil
		}
		lr.scanned = lr.end - lr.start
		if lr.scanned > lr.max {
			return nil, ErrMessageTooLarge
		}
		if lr.err != nil {
			if lr.err == io.EOF && lr.scanned > 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, lr.err
		}
		var n int
		var err error
		if lr.idle != nil && lr.start == lr.end {
			// Nothing buffered: wait without a buffer.
			lr.giveBack()
			n, err = lr.idle.readIdle(lr)
		} else {
			lr.makeRoom()
			n, err = lr.r.Read(lr.buf[lr.end:])
		}
		lr.end += n
		if err != nil {
			lr.err = err
		}
	}
}

// makeRoom moves unread bytes to the front of the buffer, and resizes it:
// up (doubling, to at most max+1 so that an overlong line is detected)
// when it is full, down when a large line has been consumed.
func (lr *lineReader) makeRoom() {
	if lr.buf == nil {
		lr.buf = make([]byte, initialBufferBytes)
	}
	unread := lr.end - lr.start
	if len(lr.buf) > shrinkAboveBytes && unread < initialBufferBytes/2 {
		nb := make([]byte, initialBufferBytes)
		copy(nb, lr.buf[lr.start:lr.end])
		lr.buf, lr.start, lr.end = nb, 0, unread
		return
	}
	if lr.start > 0 {
		copy(lr.buf, lr.buf[lr.start:lr.end])
		lr.start, lr.end = 0, unread
	}
	if lr.end == len(lr.buf) {
		size := 2 * len(lr.buf)
		if size > lr.max+1 {
			size = lr.max + 1
		}
		if size <= len(lr.buf) {
			size = len(lr.buf) + 1
		}
		nb := make([]byte, size)
		copy(nb, lr.buf[:lr.end])
		lr.buf = nb
	}
}
