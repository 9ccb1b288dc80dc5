package libvirtd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/digitalocean/go-libvirt/socket"
)

// The libvirt RPC frame as a client writes it: a big-endian length (of
// the whole frame, itself included), then program, version, procedure,
// type, serial and status, each 4 bytes, then the XDR arguments.
const (
	headerBytes = 28
	// maxCallBytes bounds one call: the source's calls carry a domain
	// and a few integers, far below it.
	maxCallBytes = 64 << 10

	remoteProgram   = 0x20008086 // libvirt's remote protocol
	protocolVersion = 1
	typeCall        = 0
	statusOK        = 0
)

// allowed is the read-only allow-list: the only procedures of libvirt's
// remote program the source may call. Everything else, every procedure
// of the QEMU program (QEMUDomainMonitorCommand taints a domain) and
// every stream or file-descriptor packet, is refused before a byte of
// it is written. The numbers are those of libvirt's remote_protocol.x.
var allowed = map[uint32]string{
	1:   "connect-open",
	2:   "connect-close",
	4:   "connect-get-version", // the hypervisor's (QEMU's) version
	14:  "domain-get-xml-desc", // the live XML; the read-only socket refuses its secure flag
	66:  "auth-list",
	70:  "auth-polkit",
	212: "domain-get-state",
	159: "domain-memory-stats",
	273: "connect-list-all-domains",
	316: "connect-domain-event-callback-register-any",
	317: "connect-domain-event-callback-deregister-any",
}

// ErrNotAllowed is the error of a call the allow-list refuses; the
// connection is closed with it.
var ErrNotAllowed = errors.New("libvirt: procedure not on the read-only allow-list")

// guardedConn passes to libvirt only the frames of allowed procedures.
// It parses the stream of writes into frames (go-libvirt writes a frame
// in one Write when it is small, in several when it is not, and never
// mixes two in one Write) and checks each frame's header before any of
// its bytes go out. A refused frame closes the connection: go-libvirt
// keeps a write error for good, so the source reconnects.
type guardedConn struct {
	net.Conn

	mu sync.Mutex
	// head collects a header split across writes; rest is how many bytes
	// of the current, already checked, frame are still to come.
	head []byte
	rest int
	err  error // the refusal, once there is one
}

// Write checks and forwards p, frame by frame.
func (c *guardedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	n := 0
	for len(p) > 0 {
		if c.rest > 0 {
			k := min(c.rest, len(p))
			w, err := c.Conn.Write(p[:k])
			n += w
			if err != nil {
				return n, err
			}
			c.rest -= k
			p = p[k:]
			continue
		}
		k := min(headerBytes-len(c.head), len(p))
		c.head = append(c.head, p[:k]...)
		p = p[k:]
		n += k
		if len(c.head) < headerBytes {
			break
		}
		if err := checkHeader(c.head); err != nil {
			c.err = err
			c.Conn.Close()
			return n - k, err
		}
		if _, err := c.Conn.Write(c.head); err != nil {
			return n, err
		}
		c.rest = int(binary.BigEndian.Uint32(c.head[0:4])) - headerBytes
		c.head = c.head[:0]
	}
	return n, nil
}

// checkHeader accepts the header of a call to an allowed procedure.
func checkHeader(h []byte) error {
	length := binary.BigEndian.Uint32(h[0:4])
	prog := binary.BigEndian.Uint32(h[4:8])
	vers := binary.BigEndian.Uint32(h[8:12])
	proc := binary.BigEndian.Uint32(h[12:16])
	typ := binary.BigEndian.Uint32(h[16:20])
	status := binary.BigEndian.Uint32(h[24:28])
	switch {
	case prog != remoteProgram:
		return fmt.Errorf("%w: program %#x, procedure %d", ErrNotAllowed, prog, proc)
	case vers != protocolVersion || typ != typeCall || status != statusOK:
		return fmt.Errorf("%w: packet version %d, type %d, status %d", ErrNotAllowed, vers, typ, status)
	case length < headerBytes || length > maxCallBytes:
		return fmt.Errorf("%w: frame of %d bytes", ErrNotAllowed, length)
	}
	if _, ok := allowed[proc]; !ok {
		return fmt.Errorf("%w: procedure %d", ErrNotAllowed, proc)
	}
	return nil
}

// guardedDialer gives go-libvirt guarded connections.
type guardedDialer struct{ inner socket.Dialer }

// Dial dials the inner dialer and guards the connection.
func (d guardedDialer) Dial() (net.Conn, error) {
	c, err := d.inner.Dial()
	if err != nil {
		return nil, err
	}
	return &guardedConn{Conn: c}, nil
}
