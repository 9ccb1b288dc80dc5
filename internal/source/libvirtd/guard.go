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
	14:  "domain-get-xml-desc", // the live XML, never with its secure flag (checkArgs)
	66:  "auth-list",
	70:  "auth-polkit",
	212: "domain-get-state",
	159: "domain-memory-stats",
	273: "connect-list-all-domains",
	298: "domain-get-job-stats", // never discarding the completed job's (checkArgs)
	316: "connect-domain-event-callback-register-any",
	317: "connect-domain-event-callback-deregister-any",
}

// ErrNotAllowed is the error of a call the allow-list refuses; the
// connection is closed with it.
var ErrNotAllowed = errors.New("libvirt: procedure not on the read-only allow-list")

// guardedConn passes to libvirt only the frames of allowed calls. It
// parses the stream of writes into frames (go-libvirt writes a frame in
// one Write when it is small, in several when it is not, and never mixes
// two in one Write), holds each frame until it is whole (at most
// maxCallBytes), and checks its header and arguments before any of its
// bytes go out. A refused frame closes the connection: go-libvirt keeps a
// write error for good, so the source reconnects.
type guardedConn struct {
	net.Conn

	mu    sync.Mutex
	frame []byte // the frame being collected
	err   error  // the refusal, once there is one
}

// Write checks and forwards p, frame by frame. A frame's bytes are
// reported written once they are held; they reach the socket when the
// frame is whole and allowed.
func (c *guardedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	n := 0
	for len(p) > 0 {
		need := headerBytes
		if len(c.frame) >= headerBytes {
			need = int(binary.BigEndian.Uint32(c.frame[0:4]))
		}
		k := min(need-len(c.frame), len(p))
		c.frame = append(c.frame, p[:k]...)
		p = p[k:]
		n += k
		if len(c.frame) == headerBytes {
			if err := checkHeader(c.frame); err != nil {
				return n - k, c.refuse(err)
			}
		}
		if len(c.frame) < headerBytes || len(c.frame) < int(binary.BigEndian.Uint32(c.frame[0:4])) {
			continue
		}
		if err := checkArgs(c.frame); err != nil {
			return n - k, c.refuse(err)
		}
		if _, err := c.Conn.Write(c.frame); err != nil {
			return n, err
		}
		c.frame = c.frame[:0]
	}
	return n, nil
}

func (c *guardedConn) refuse(err error) error {
	c.err = err
	c.frame = nil
	c.Conn.Close()
	return err
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

// Flags the guard checks. domainXMLSecure is VIR_DOMAIN_XML_SECURE: the
// XML with its secrets (console passwords); the read-only socket refuses
// it, and the guard refuses it too, whatever socket it is given.
// jobStatsCompleted asks for the last completed job's statistics, which
// libvirt then discards unless jobStatsKeepCompleted is set too: a read
// that would take them from an administrator's `virsh domjobinfo
// --completed` is refused.
const (
	domainXMLSecure       = 1
	jobStatsCompleted     = 1
	jobStatsKeepCompleted = 2
)

// checkArgs accepts the arguments of a whole frame whose header passed:
// domain-get-xml-desc only without the secure flag, domain-get-job-stats
// only keeping a completed job's statistics. The arguments of both end
// with the flags (remote_protocol.x: the domain, then unsigned flags).
func checkArgs(f []byte) error {
	proc := binary.BigEndian.Uint32(f[12:16])
	if proc != 14 && proc != 298 {
		return nil
	}
	if len(f) < headerBytes+4 {
		return fmt.Errorf("%w: %s without its arguments", ErrNotAllowed, allowed[proc])
	}
	flags := binary.BigEndian.Uint32(f[len(f)-4:])
	switch {
	case proc == 14 && flags&domainXMLSecure != 0:
		return fmt.Errorf("%w: domain-get-xml-desc with the secure flag (flags %#x)", ErrNotAllowed, flags)
	case proc == 298 && flags&jobStatsCompleted != 0 && flags&jobStatsKeepCompleted == 0:
		return fmt.Errorf("%w: domain-get-job-stats discarding the completed job's statistics (flags %#x)", ErrNotAllowed, flags)
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
