package qemulab

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// SPICE link protocol (spice-protocol's protocol.h), version 2.2.
const (
	spiceMagic          = "REDQ"
	spiceMajor          = 2
	spiceMinor          = 2
	spiceChannelMain    = 1
	spiceLinkMessSize   = 18  // connection_id u32, type u8, id u8, 3 x u32
	spicePubKeyBytes    = 162 // DER SubjectPublicKeyInfo of an RSA-1024 key
	spiceTicketBytes    = 128 // RSA-1024 ciphertext
	spiceLinkReplyFixed = 4 + spicePubKeyBytes + 12
	spiceMaxReply       = 1 << 16
)

// SPICEHandshake connects to QEMU's SPICE server on the unix socket at path
// (Options.SPICE) and links a main channel with an empty ticket, which
// disable-ticketing=on accepts. QEMU emits SPICE_CONNECTED as soon as the
// connection is accepted and SPICE_INITIALIZED once the channel is linked;
// closing the returned connection makes it emit SPICE_DISCONNECTED. On a
// unix socket they carry
//
//	{"server": {"port": "<path>", "family": "unix", "host": "localhost"},
//	 "client": {"port": "", "family": "unix", "host": "localhost"}}
//
// where the server's "port" is the socket path only if it is shorter than
// 32 bytes (QEMU formats it with getnameinfo into a 32-byte buffer), else
// "". SPICE_INITIALIZED adds "auth": "none" to "server" and
// connection-id (a random int32, may be negative), channel-type (1, main),
// channel-id and tls to "client"; query-spice then lists the channel.
// A client that sends a bad ticket still produces SPICE_CONNECTED and
// SPICE_DISCONNECTED, without SPICE_INITIALIZED. The handshake is bounded
// by ctx; the returned connection has no deadline set.
func SPICEHandshake(ctx context.Context, path string) (net.Conn, error) {
	return SPICEHandshakeAt(ctx, "unix", path)
}

// SPICEHandshakeAt is SPICEHandshake on a display reached at address of
// network ("unix" or "tcp"), such as a libvirt domain's SPICE port.
func SPICEHandshakeAt(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("qemulab: spice: %w", err)
	}
	release := bound(ctx, c.SetDeadline)
	err = spiceLink(c)
	release()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("qemulab: spice handshake: %w", ctxErr(ctx, err))
	}
	return c, nil
}

func spiceLink(rw io.ReadWriter) error {
	le := binary.LittleEndian
	msg := make([]byte, 16+spiceLinkMessSize)
	copy(msg, spiceMagic)
	le.PutUint32(msg[4:], spiceMajor)
	le.PutUint32(msg[8:], spiceMinor)
	le.PutUint32(msg[12:], spiceLinkMessSize)
	m := msg[16:]
	le.PutUint32(m[0:], 0)                  // connection_id: a new session
	m[4], m[5] = spiceChannelMain, 0        // channel type and id
	le.PutUint32(m[6:], 0)                  // num_common_caps
	le.PutUint32(m[10:], 0)                 // num_channel_caps
	le.PutUint32(m[14:], spiceLinkMessSize) // caps_offset
	if _, err := rw.Write(msg); err != nil {
		return err
	}

	var hdr [16]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return fmt.Errorf("read link header: %w", err)
	}
	if string(hdr[:4]) != spiceMagic {
		return fmt.Errorf("not a SPICE server: %q", hdr[:4])
	}
	if major := le.Uint32(hdr[4:]); major != spiceMajor {
		return fmt.Errorf("SPICE protocol %d, want %d", major, spiceMajor)
	}
	size := le.Uint32(hdr[12:])
	if size < spiceLinkReplyFixed || size > spiceMaxReply {
		return fmt.Errorf("link reply of %d bytes", size)
	}
	reply := make([]byte, size)
	if _, err := io.ReadFull(rw, reply); err != nil {
		return fmt.Errorf("read link reply: %w", err)
	}
	if code := le.Uint32(reply); code != 0 {
		return fmt.Errorf("link refused: error %d", code)
	}
	pub, err := x509.ParsePKIXPublicKey(reply[4 : 4+spicePubKeyBytes])
	if err != nil {
		return fmt.Errorf("server key: %w", err)
	}
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok {
		return errors.New("server key is not RSA")
	}
	// The ticket is the password with its NUL terminator, RSA-OAEP
	// (SHA-1) encrypted with the server's key.
	ticket, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, rsaPub, []byte{0}, nil)
	if err != nil {
		return fmt.Errorf("encrypt ticket: %w", err)
	}
	if len(ticket) != spiceTicketBytes {
		return fmt.Errorf("ticket of %d bytes, want %d", len(ticket), spiceTicketBytes)
	}
	if _, err := rw.Write(ticket); err != nil {
		return err
	}
	var result [4]byte
	if _, err := io.ReadFull(rw, result[:]); err != nil {
		return fmt.Errorf("read link result: %w", err)
	}
	if code := le.Uint32(result[:]); code != 0 {
		return fmt.Errorf("link result: error %d", code)
	}
	return nil
}
