package libvirtd

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"

	"github.com/digitalocean/go-libvirt"
	"go.uber.org/goleak"
)

// frame builds a call frame of proc in program prog with payload n bytes
// long.
func frame(prog, proc uint32, n int) []byte {
	b := make([]byte, headerBytes+n)
	binary.BigEndian.PutUint32(b[0:], uint32(len(b)))
	binary.BigEndian.PutUint32(b[4:], prog)
	binary.BigEndian.PutUint32(b[8:], protocolVersion)
	binary.BigEndian.PutUint32(b[12:], proc)
	binary.BigEndian.PutUint32(b[20:], 7) // serial
	for i := headerBytes; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

// recordConn is the far side of a guarded connection: it keeps what
// reaches it.
type recordConn struct {
	net.Conn
	mu     sync.Mutex
	got    []byte
	closed bool
}

func (r *recordConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, p...)
	return len(p), nil
}

func (r *recordConn) Close() error { r.closed = true; return nil }

// TestGuardSplitsAndChecksFrames feeds the guard frames split at every
// byte boundary, and frames it must refuse: nothing of a refused frame
// reaches the socket, and the connection is closed.
func TestGuardSplitsAndChecksFrames(t *testing.T) {
	allowedFrame := frame(remoteProgram, 212, 40) // domain-get-state
	keptJobStats := frame(remoteProgram, 298, 40) // domain-get-job-stats
	binary.BigEndian.PutUint32(keptJobStats[len(keptJobStats)-4:], jobStatsCompleted|jobStatsKeepCompleted)
	stream := slices.Concat(allowedFrame, frame(remoteProgram, 273, 8), frame(remoteProgram, 4, 0), keptJobStats)
	for cut := 1; cut < len(stream); cut++ {
		r := &recordConn{}
		g := &guardedConn{Conn: r}
		for _, part := range [][]byte{stream[:cut], stream[cut:]} {
			if _, err := g.Write(part); err != nil {
				t.Fatalf("cut %d: %v", cut, err)
			}
		}
		if !slices.Equal(r.got, stream) {
			t.Fatalf("cut %d: the socket got %d bytes, want the %d written", cut, len(r.got), len(stream))
		}
	}

	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"domain-suspend", frame(remoteProgram, 34, 40)},
		{"domain-destroy", frame(remoteProgram, 12, 40)},
		{"qemu-domain-monitor-command", frame(0x20008087, 1, 40)},
		{"qemu program, allowed number", frame(0x20008087, 212, 40)},
		{"a stream packet", func() []byte { b := frame(remoteProgram, 212, 8); b[19] = 3; return b }()},
		{"domain-get-xml-desc with the secure flag", func() []byte {
			b := frame(remoteProgram, 14, 40)
			binary.BigEndian.PutUint32(b[len(b)-4:], domainXMLSecure)
			return b
		}()},
		{"domain-get-job-stats discarding the completed job's", func() []byte {
			b := frame(remoteProgram, 298, 40)
			binary.BigEndian.PutUint32(b[len(b)-4:], jobStatsCompleted)
			return b
		}()},
		{"an oversized call", func() []byte {
			b := frame(remoteProgram, 212, 8)
			binary.BigEndian.PutUint32(b, maxCallBytes+1)
			return b
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recordConn{}
			g := &guardedConn{Conn: r}
			if _, err := g.Write(allowedFrame); err != nil {
				t.Fatal(err)
			}
			// Split the refused frame so that its header arrives in two writes.
			_, err1 := g.Write(tc.frame[:10])
			_, err2 := g.Write(tc.frame[10:])
			if !errors.Is(err2, ErrNotAllowed) || err1 != nil {
				t.Fatalf("writes returned %v, %v; want nil, then ErrNotAllowed", err1, err2)
			}
			if !slices.Equal(r.got, allowedFrame) || !r.closed {
				t.Fatalf("the socket got %d bytes (want only the %d of the allowed frame), closed=%v", len(r.got), len(allowedFrame), r.closed)
			}
			if _, err := g.Write(allowedFrame); !errors.Is(err, ErrNotAllowed) {
				t.Fatalf("a write after a refusal returned %v", err)
			}
		})
	}
}

// fakeLibvirtd answers AuthList, ConnectOpen and ConnectGetVersion on the
// server end of a pipe and records the procedure of every frame it reads.
func fakeLibvirtd(t *testing.T, srv net.Conn) (procs func() []uint32) {
	var mu sync.Mutex
	var seen []uint32
	go func() {
		defer srv.Close()
		for {
			h := make([]byte, headerBytes)
			if _, err := io.ReadFull(srv, h); err != nil {
				return
			}
			body := make([]byte, binary.BigEndian.Uint32(h)-headerBytes)
			if _, err := io.ReadFull(srv, body); err != nil {
				return
			}
			proc := binary.BigEndian.Uint32(h[12:])
			mu.Lock()
			seen = append(seen, proc)
			mu.Unlock()
			var reply []byte
			switch proc {
			case 66: // auth-list: one entry, none
				reply = []byte{0, 0, 0, 1, 0, 0, 0, 0}
			case 4: // connect-get-version: 7.2.0
				reply = binary.BigEndian.AppendUint64(nil, 7002000)
			case 14: // domain-get-xml-desc: an XDR string, padded to 4
				reply = append(binary.BigEndian.AppendUint32(nil, 9), "<domain/>\x00\x00\x00"...)
			}
			out := make([]byte, headerBytes, headerBytes+len(reply))
			copy(out, h)
			binary.BigEndian.PutUint32(out, uint32(headerBytes+len(reply)))
			binary.BigEndian.PutUint32(out[16:], 1) // reply
			if _, err := srv.Write(append(out, reply...)); err != nil {
				return
			}
		}
	}()
	return func() []uint32 {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

type pipeDialer struct{ c net.Conn }

func (d pipeDialer) Dial() (net.Conn, error) { return d.c, nil }

// TestForbiddenCallNeverReachesLibvirtd drives go-libvirt itself through
// the guard: connecting and allowed calls pass (the domain XML without
// its secrets among them), while DomainSuspend, QEMUDomainMonitorCommand
// (which taints a domain) and the domain XML with its secrets fail with
// ErrNotAllowed and never reach the daemon.
func TestForbiddenCallNeverReachesLibvirtd(t *testing.T) {
	for _, forbidden := range []struct {
		name string
		call func(l *libvirt.Libvirt) error
	}{
		{"domain-suspend", func(l *libvirt.Libvirt) error { return l.DomainSuspend(libvirt.Domain{Name: "vm1"}) }},
		{"qemu-domain-monitor-command", func(l *libvirt.Libvirt) error {
			_, err := l.QEMUDomainMonitorCommand(libvirt.Domain{Name: "vm1"}, `{"execute":"stop"}`, 0)
			return err
		}},
		{"domain-get-xml-desc with the secure flag", func(l *libvirt.Libvirt) error {
			_, err := l.DomainGetXMLDesc(libvirt.Domain{Name: "vm1"}, libvirt.DomainXMLSecure)
			return err
		}},
		{"domain-get-job-stats discarding the completed job's", func(l *libvirt.Libvirt) error {
			_, _, err := l.DomainGetJobStats(libvirt.Domain{Name: "vm1"}, libvirt.DomainJobStatsCompleted)
			return err
		}},
	} {
		t.Run(forbidden.name, func(t *testing.T) {
			client, srv := net.Pipe()
			procs := fakeLibvirtd(t, srv)
			l := libvirt.NewWithDialer(guardedDialer{inner: pipeDialer{client}})
			if err := l.Connect(); err != nil {
				t.Fatal(err)
			}
			if v, err := l.ConnectGetVersion(); err != nil || v != 7002000 {
				t.Fatalf("ConnectGetVersion = %d, %v", v, err)
			}
			if x, err := l.DomainGetXMLDesc(libvirt.Domain{Name: "vm1"}, libvirt.DomainXMLInactive); err != nil || x != "<domain/>" {
				t.Fatalf("DomainGetXMLDesc without the secure flag = %q, %v", x, err)
			}
			if err := forbidden.call(l); !errors.Is(err, ErrNotAllowed) {
				t.Fatalf("the forbidden call returned %v, want ErrNotAllowed", err)
			}
			<-l.Disconnected()
			if got, want := procs(), []uint32{66, 1, 4, 14}; !slices.Equal(got, want) {
				t.Errorf("libvirtd received procedures %v, want %v", got, want)
			}
		})
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
