//go:build unix

package qmp

import (
	"io"
	"net"
	"os"
	"syscall"
)

// rawIdleReader reads a socket through its syscall.RawConn: the runtime's
// poller waits for readability (honouring deadlines and Close, as Read
// does) and the read itself borrows a buffer only once there is something
// to read. It makes the same system calls as net.Conn.Read: a read that
// finds nothing, the wait, the read that succeeds.
type rawIdleReader struct {
	rc syscall.RawConn
	// fn is read bound once, so that a wait allocates nothing.
	fn func(fd uintptr) bool
	lr *lineReader
	n  int
	// err is read(2)'s error; EAGAIN never leaves read.
	err error
}

// newIdleReader returns nc's idleReader, or nil when nc is not a socket
// of this operating system (net.Pipe, TLS).
func newIdleReader(nc net.Conn) idleReader {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawIdleReader{rc: rc}
	r.fn = r.read
	return r
}

func (r *rawIdleReader) readIdle(lr *lineReader) (int, error) {
	r.lr, r.n, r.err = lr, 0, nil
	err := r.rc.Read(r.fn)
	r.lr = nil
	switch {
	case err != nil: // closed, or a deadline
		return 0, err
	case r.err != nil:
		return 0, os.NewSyscallError("read", r.err)
	case r.n == 0:
		return 0, io.EOF
	}
	return r.n, nil
}

// read is called by RawConn.Read with the socket's descriptor; it returns
// false to wait for readability.
func (r *rawIdleReader) read(fd uintptr) bool {
	r.lr.borrow()
	for {
		n, err := syscall.Read(int(fd), r.lr.buf)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			r.lr.giveBack()
			return false
		case err != nil:
			r.lr.giveBack()
			r.err = err
		default:
			r.n = n
		}
		return true
	}
}
