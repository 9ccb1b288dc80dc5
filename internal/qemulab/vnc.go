package qemulab

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
)

// VNCHandshake connects to QEMU's VNC server on the unix socket at path and
// performs the RFB 3.8 handshake with security type None, up to and
// including ServerInit. QEMU emits VNC_CONNECTED when the connection is
// accepted and VNC_INITIALIZED once the handshake is done; closing the
// returned connection makes it emit VNC_DISCONNECTED. The whole handshake is
// bounded by ctx; the returned connection has no deadline set.
func VNCHandshake(ctx context.Context, path string) (net.Conn, error) {
	return VNCHandshakeAt(ctx, "unix", path)
}

// VNCHandshakeAt is VNCHandshake for a VNC server at any address, such
// as the TCP port libvirt gives a domain's VNC display.
func VNCHandshakeAt(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("qemulab: vnc: %w", err)
	}
	release := bound(ctx, c.SetDeadline)
	err = rfbHandshake(c)
	release()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("qemulab: vnc handshake: %w", ctxErr(ctx, err))
	}
	return c, nil
}

const (
	rfbVersion38     = "RFB 003.008\n"
	rfbSecurityNone  = 1
	rfbMaxReasonSize = 1 << 16
)

func rfbHandshake(rw io.ReadWriter) error {
	// ProtocolVersion: the server speaks first.
	banner := make([]byte, len(rfbVersion38))
	if _, err := io.ReadFull(rw, banner); err != nil {
		return fmt.Errorf("read version: %w", err)
	}
	if !bytes.HasPrefix(banner, []byte("RFB ")) {
		return fmt.Errorf("not an RFB server: %q", banner)
	}
	if _, err := io.WriteString(rw, rfbVersion38); err != nil {
		return err
	}

	// Security: a count, then that many one-byte types; a count of 0 is
	// followed by a reason string.
	var n [1]byte
	if _, err := io.ReadFull(rw, n[:]); err != nil {
		return fmt.Errorf("read security types: %w", err)
	}
	if n[0] == 0 {
		return fmt.Errorf("server refused: %s", readReason(rw))
	}
	types := make([]byte, n[0])
	if _, err := io.ReadFull(rw, types); err != nil {
		return fmt.Errorf("read security types: %w", err)
	}
	if !slices.Contains(types, rfbSecurityNone) {
		return fmt.Errorf("security type None not offered (got %v)", types)
	}
	if _, err := rw.Write([]byte{rfbSecurityNone}); err != nil {
		return err
	}
	var result uint32
	if err := binary.Read(rw, binary.BigEndian, &result); err != nil {
		return fmt.Errorf("read security result: %w", err)
	}
	if result != 0 {
		return fmt.Errorf("security failed: %s", readReason(rw))
	}

	// ClientInit (shared flag set), then ServerInit: width, height, a 16-byte
	// pixel format, and the desktop name.
	if _, err := rw.Write([]byte{1}); err != nil {
		return err
	}
	var init struct {
		Width, Height uint16
		PixelFormat   [16]byte
		NameLength    uint32
	}
	if err := binary.Read(rw, binary.BigEndian, &init); err != nil {
		return fmt.Errorf("read server init: %w", err)
	}
	if init.NameLength > rfbMaxReasonSize {
		return fmt.Errorf("desktop name too long (%d bytes)", init.NameLength)
	}
	if _, err := io.CopyN(io.Discard, rw, int64(init.NameLength)); err != nil {
		return fmt.Errorf("read desktop name: %w", err)
	}
	return nil
}

// readReason reads an RFB failure reason (a uint32 length and the text).
func readReason(r io.Reader) string {
	var size uint32
	if err := binary.Read(r, binary.BigEndian, &size); err != nil {
		return "(no reason: " + err.Error() + ")"
	}
	if size > rfbMaxReasonSize {
		return fmt.Sprintf("(reason of %d bytes)", size)
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(r, buf); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return "(no reason: " + err.Error() + ")"
	}
	return string(buf)
}
