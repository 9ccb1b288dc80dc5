package collector

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/qmp-exporter/qmp_exporter/qmp/qmptest"
)

// dialInFake returns a QEMU that dials in with the given name and UUID.
func dialInFake(t *testing.T, name, uuid string) (net.Conn, *qmptest.Server) {
	return qmptest.New(t, qmptest.Options{Handle: func(cmd qmptest.Command) (qmptest.Reply, bool) {
		switch cmd.Execute {
		case "query-name":
			return qmptest.Return(map[string]string{"name": name}), true
		case "query-uuid":
			return qmptest.Return(map[string]string{"UUID": uuid}), true
		case "query-status":
			return qmptest.Return(map[string]any{"status": "running", "running": true}), true
		case "query-version":
			return qmptest.ReturnRaw(`{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}`), true
		}
		return qmptest.Reply{}, false
	}})
}

// TestDialInIdentity: a VM that dials in again (after a QEMU restart) is
// the same series, recognised by its UUID; another UUID is another VM;
// a VM that stays away past StaleAfter is forgotten.
func TestDialInIdentity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewManager(Options{StaleAfter: time.Minute})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { m.Run(ctx); close(done) }()
		defer func() { cancel(); <-done }()
		synctest.Wait()
		lo := ListenOptions{Name: "/run/qmp_exporter/qmp.sock", Labels: map[string]string{"host": "hv1"}}
		const u1 = "11111111-2f0e-4d59-9d4b-7c1c7d0e2a11"

		c1, s1 := dialInFake(t, "web", u1)
		go m.dialIn(ctx, c1, lo)
		synctest.Wait()
		if err := s1.Emit("STOP", nil); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		got := scrape(t, m, "qmp_up", "qmp_events_total", "qmp_listener_connections_total")
		for _, w := range []string{`qmp_up{host="hv1",vm="web"} 1`, `qmp_events_total{event="STOP",host="hv1",vm="web"} 1`,
			`qmp_listener_connections_total{listener="/run/qmp_exporter/qmp.sock",result="accepted"} 1`} {
			if !strings.Contains(got, w) {
				t.Errorf("missing %s in\n%s", w, got)
			}
		}

		// QEMU restarts and dials again: same series, counters kept.
		s1.Close()
		synctest.Wait()
		if got := scrape(t, m, "qmp_up"); !strings.Contains(got, `qmp_up{host="hv1",vm="web"} 0`) {
			t.Errorf("after hang-up:\n%s", got)
		}
		c2, s2 := dialInFake(t, "web", u1)
		go m.dialIn(ctx, c2, lo)
		synctest.Wait()
		if err := s2.Emit("STOP", nil); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		got = scrape(t, m, "qmp_up", "qmp_events_total")
		if !strings.Contains(got, `qmp_up{host="hv1",vm="web"} 1`) || !strings.Contains(got, `qmp_events_total{event="STOP",host="hv1",vm="web"} 2`) {
			t.Errorf("the VM dialling again is not the same series:\n%s", got)
		}

		// Another VM.
		c3, s3 := dialInFake(t, "db", "22222222-2f0e-4d59-9d4b-7c1c7d0e2a11")
		go m.dialIn(ctx, c3, lo)
		synctest.Wait()
		if got := scrape(t, m, "qmp_up"); !strings.Contains(got, `qmp_up{host="hv1",vm="db"} 1`) {
			t.Errorf("second VM missing:\n%s", got)
		}

		// db goes away for good: forgotten after StaleAfter.
		s3.Close()
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if got := scrape(t, m, "qmp_up"); strings.Contains(got, `vm="db"`) || !strings.Contains(got, `vm="web"`) {
			t.Errorf("after StaleAfter, want db gone and web kept:\n%s", got)
		}

		// A listener restricted to some uids refuses a peer whose
		// credentials cannot be read (a pipe has none).
		c4, _ := dialInFake(t, "x", "33333333-2f0e-4d59-9d4b-7c1c7d0e2a11")
		m.dialIn(ctx, c4, ListenOptions{Name: "restricted", AllowedUIDs: []uint32{0}})
		if got := scrape(t, m, "qmp_listener_connections_total"); !strings.Contains(got, `qmp_listener_connections_total{listener="restricted",result="refused"} 1`) {
			t.Errorf("refusal not counted:\n%s", got)
		}
	})
}

// TestPeerCred reads SO_PEERCRED on a real unix socket: the peer is this
// very process.
func TestPeerCred(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer server.Close()
	cred, err := peerCred(server)
	if err != nil {
		t.Fatal(err)
	}
	if cred.uid != uint32(os.Getuid()) || cred.pid != int32(os.Getpid()) {
		t.Errorf("peer credentials %+v, want uid %d pid %d", cred, os.Getuid(), os.Getpid())
	}
}
