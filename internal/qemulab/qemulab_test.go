package qemulab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait on QEMU.
const testTimeout = 20 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// startVM starts a lab VM that is closed when the test ends. opts.Dir
// defaults to a fresh t.TempDir().
func startVM(t *testing.T, opts Options) *VM {
	t.Helper()
	RequireQEMU(t)
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	v, err := Start(testContext(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("qemu output:\n%s", v.Output())
		}
		if err := v.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return v
}

// execute runs a command on the control monitor and fails the test on error.
func execute(t *testing.T, ctx context.Context, m *Monitor, cmd string, args any) json.RawMessage {
	t.Helper()
	ret, err := m.Execute(ctx, cmd, args)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return ret
}

// wait waits for an expected event and decodes its data into a map.
func wait(t *testing.T, ctx context.Context, e *Expectation) (Event, map[string]any) {
	t.Helper()
	ev, err := e.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Seconds <= 0 {
		t.Errorf("%s: bad timestamp %d.%06d in %s", ev.Name, ev.Seconds, ev.Microseconds, ev.Raw)
	}
	data := map[string]any{}
	if ev.Data != nil {
		if err := json.Unmarshal(ev.Data, &data); err != nil {
			t.Fatalf("%s: data: %v", ev.Name, err)
		}
	}
	return ev, data
}

// wantFields checks data fields of an event.
func wantFields(t *testing.T, ev Event, data map[string]any, want map[string]any) {
	t.Helper()
	for k, w := range want {
		if got, ok := data[k]; !ok || got != w {
			t.Errorf("%s: data[%q] = %#v (present %v), want %#v; event %s", ev.Name, k, got, ok, w, ev.Raw)
		}
	}
}

func queryStatus(t *testing.T, ctx context.Context, m *Monitor) string {
	t.Helper()
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(execute(t, ctx, m, "query-status", nil), &st); err != nil {
		t.Fatal(err)
	}
	return st.Status
}

// rawClient is a plain QMP client written with net and encoding/json only,
// independent of Monitor, standing in for the exporter.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(t *testing.T, ctx context.Context, path string) *rawClient {
	t.Helper()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return &rawClient{t: t, conn: c, r: bufio.NewReader(c)}
}

func (c *rawClient) read() map[string]any {
	c.t.Helper()
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		c.t.Fatalf("exporter socket: read: %v", err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(line, &m); err != nil {
		c.t.Fatalf("exporter socket: %v in %q", err, line)
	}
	return m
}

func (c *rawClient) send(line string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(line + "\n")); err != nil {
		c.t.Fatalf("exporter socket: write: %v", err)
	}
}

// TestEvents drives every recipe of the lab notes on one real QEMU and checks
// the events, including the data fields consumers rely on.
func TestEvents(t *testing.T) {
	v := startVM(t, Options{Devices: true, VNC: true, Name: "lab", UUID: "6a1b3d47-46c4-4a51-9c6b-1f2a47f0c0de"})
	ctx := testContext(t)
	ctl := v.Ctl

	if got := queryStatus(t, ctx, ctl); got != "running" {
		t.Errorf("status at start = %q, want running", got)
	}

	t.Run("exporter socket sees events", func(t *testing.T) {
		c := dialRaw(t, ctx, v.ExporterSocket)
		if g := c.read(); g["QMP"] == nil {
			t.Fatalf("greeting = %v", g)
		}
		c.send(`{"execute":"qmp_capabilities","id":"caps"}`)
		if r := c.read(); r["id"] != "caps" || r["return"] == nil {
			t.Fatalf("qmp_capabilities reply = %v", r)
		}

		stop := ctl.Expect("STOP")
		execute(t, ctx, ctl, "stop", nil)
		wait(t, ctx, stop)
		for {
			if m := c.read(); m["event"] == "STOP" {
				break
			}
		}
		if got := queryStatus(t, ctx, ctl); got != "paused" {
			t.Errorf("status after stop = %q, want paused", got)
		}
	})

	t.Run("cont", func(t *testing.T) {
		resume := ctl.Expect("RESUME")
		execute(t, ctx, ctl, "cont", nil)
		wait(t, ctx, resume)
		if got := queryStatus(t, ctx, ctl); got != "running" {
			t.Errorf("status after cont = %q, want running", got)
		}
	})

	t.Run("system_reset", func(t *testing.T) {
		reset := ctl.Expect("RESET")
		execute(t, ctx, ctl, "system_reset", nil)
		ev, data := wait(t, ctx, reset)
		wantFields(t, ev, data, map[string]any{"guest": false, "reason": "host-qmp-system-reset"})
	})

	t.Run("guest reset", func(t *testing.T) {
		reset := ctl.Expect("RESET")
		if err := v.GuestReset(ctx); err != nil {
			t.Fatal(err)
		}
		ev, data := wait(t, ctx, reset)
		wantFields(t, ev, data, map[string]any{"guest": true, "reason": "guest-reset"})
	})

	t.Run("watchdog", func(t *testing.T) {
		wd, reset := ctl.Expect("WATCHDOG"), ctl.Expect("RESET")
		if err := v.FireWatchdog(ctx); err != nil {
			t.Fatal(err)
		}
		ev, data := wait(t, ctx, wd)
		wantFields(t, ev, data, map[string]any{"action": "reset"})
		// QEMU 7.2 reports the watchdog's reset as a guest reset.
		ev, data = wait(t, ctx, reset)
		wantFields(t, ev, data, map[string]any{"guest": true, "reason": "guest-reset"})
	})

	t.Run("crash loaded", func(t *testing.T) {
		crash := ctl.Expect("GUEST_CRASHLOADED")
		if err := v.CrashLoaded(ctx); err != nil {
			t.Fatal(err)
		}
		ev, data := wait(t, ctx, crash)
		wantFields(t, ev, data, map[string]any{"action": "run"})
	})

	t.Run("tray", func(t *testing.T) {
		noIDPath, err := v.QdevOfDrive(ctx, CDROMNoIDDrive)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(noIDPath, "/machine/peripheral-anon/") {
			t.Errorf("qdev of %s = %q, want a QOM path", CDROMNoIDDrive, noIDPath)
		}
		for _, tc := range []struct {
			name, id, wantDevice string
		}{
			{"named drive", CDROMNamedID, CDROMNamedDrive},
			{"anonymous blockdev", CDROMAnonID, ""},
			{"device without id", noIDPath, CDROMNoIDDrive},
		} {
			t.Run(tc.name, func(t *testing.T) {
				for _, open := range []bool{true, false} {
					cmd := "blockdev-open-tray"
					if !open {
						cmd = "blockdev-close-tray"
					}
					moved := ctl.Expect("DEVICE_TRAY_MOVED")
					execute(t, ctx, ctl, cmd, map[string]any{"id": tc.id})
					ev, data := wait(t, ctx, moved)
					wantFields(t, ev, data, map[string]any{"device": tc.wantDevice, "id": tc.id, "tray-open": open})
				}
			})
		}
	})

	t.Run("vnc", func(t *testing.T) {
		connected, initialized := ctl.Expect("VNC_CONNECTED"), ctl.Expect("VNC_INITIALIZED")
		disconnected := ctl.Expect("VNC_DISCONNECTED")
		c, err := VNCHandshake(ctx, v.VNCSocket)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range []*Expectation{connected, initialized} {
			ev, data := wait(t, ctx, e)
			if data["client"] == nil || data["server"] == nil {
				t.Errorf("%s without client/server: %s", ev.Name, ev.Raw)
			}
		}
		c.Close()
		wait(t, ctx, disconnected)
	})

	t.Run("device_del", func(t *testing.T) {
		execute(t, ctx, ctl, "device_add", map[string]any{"driver": "usb-kbd", "id": "kbd0", "bus": XHCIBus})
		deleted := ctl.Expect("DEVICE_DELETED")
		execute(t, ctx, ctl, "device_del", map[string]any{"id": "kbd0"})
		ev, data := wait(t, ctx, deleted)
		wantFields(t, ev, data, map[string]any{"device": "kbd0"})
		if p, _ := data["path"].(string); !strings.HasPrefix(p, "/machine/peripheral/kbd0") {
			t.Errorf("DEVICE_DELETED path = %q", p)
		}
	})

	t.Run("panic", func(t *testing.T) {
		panicked, stop := ctl.Expect("GUEST_PANICKED"), ctl.Expect("STOP")
		if err := v.Panic(ctx); err != nil {
			t.Fatal(err)
		}
		ev, data := wait(t, ctx, panicked)
		wantFields(t, ev, data, map[string]any{"action": "pause"})
		wait(t, ctx, stop)
		if got := queryStatus(t, ctx, ctl); got != "guest-panicked" {
			t.Errorf("status after panic = %q, want guest-panicked", got)
		}
	})

	t.Run("quit", func(t *testing.T) {
		shutdown := ctl.Expect("SHUTDOWN")
		if err := v.Quit(ctx); err != nil {
			t.Fatal(err)
		}
		// The event arrived before quit returned; Ctl is closed now but its
		// log is kept.
		ev, data := wait(t, ctx, shutdown)
		wantFields(t, ev, data, map[string]any{"guest": false, "reason": "host-qmp-quit"})
		select {
		case <-v.Exited():
		default:
			t.Error("Exited not closed after Quit")
		}
		if _, err := os.Stat(v.ExporterSocket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("exporter socket after quit: %v, want it removed", err)
		}
		if _, err := ctl.Execute(ctx, "query-status", nil); !errors.Is(err, ErrClosed) {
			t.Errorf("Execute after Quit = %v, want ErrClosed", err)
		}
	})
}

// TestKill checks that SIGKILL leaves the exporter socket behind, refusing
// connections, and that a new VM in the same directory replaces it.
func TestKill(t *testing.T) {
	dir := t.TempDir()
	v := startVM(t, Options{Dir: dir})
	if err := v.Kill(); err != nil {
		t.Fatal(err)
	}
	<-v.Exited()
	if err := v.Kill(); err != nil { // no-op now
		t.Errorf("second Kill: %v", err)
	}
	fi, err := os.Stat(v.ExporterSocket)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("exporter socket after SIGKILL: %v %v, want a stale socket file", fi, err)
	}
	if c, err := net.Dial("unix", v.ExporterSocket); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Errorf("dial stale socket: %v, want connection refused", err)
	}

	ctx := testContext(t)
	v2 := startVM(t, Options{Dir: dir})
	c := dialRaw(t, ctx, v2.ExporterSocket)
	if g := c.read(); g["QMP"] == nil {
		t.Errorf("greeting on restarted VM = %v", g)
	}
}

func TestStartOptions(t *testing.T) {
	// A directory whose socket paths would exceed sun_path.
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(long, 0o755); err != nil {
		t.Fatal(err)
	}
	v := startVM(t, Options{Dir: long, Paused: true, NoExporterMonitor: true})
	if v.Dir == long || v.ExporterSocket != "" {
		t.Errorf("Dir = %q, ExporterSocket = %q; want a short dir and no exporter socket", v.Dir, v.ExporterSocket)
	}
	ctx := testContext(t)
	if got := queryStatus(t, ctx, v.Ctl); got != "prelaunch" {
		t.Errorf("status with Paused = %q, want prelaunch", got)
	}
	var name struct{ Name *string }
	if err := json.Unmarshal(execute(t, ctx, v.Ctl, "query-name", nil), &name); err != nil || name.Name != nil {
		t.Errorf("query-name without Name: %v %v", name.Name, err)
	}
	_, err := v.Ctl.Execute(ctx, "no-such-command", nil)
	var ce *CommandError
	if !errors.As(err, &ce) || ce.Class != "CommandNotFound" {
		t.Errorf("unknown command error = %v, want CommandNotFound", err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(v.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("short dir %s after Close: %v, want removed", v.Dir, err)
	}
	if err := v.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestStartFailure(t *testing.T) {
	RequireQEMU(t)
	v, err := Start(testContext(t), Options{Dir: t.TempDir(), ExtraArgs: []string{"-no-such-option"}})
	if err == nil {
		v.Close()
		t.Fatal("Start succeeded with a bad option")
	}
	if !strings.Contains(err.Error(), "no-such-option") || !strings.Contains(err.Error(), "qemu exited") {
		t.Errorf("error lacks QEMU's exit and stderr: %v", err)
	}
}

func TestStartCancelled(t *testing.T) {
	RequireQEMU(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if v, err := Start(ctx, Options{Dir: t.TempDir()}); !errors.Is(err, context.Canceled) {
		if v != nil {
			v.Close()
		}
		t.Errorf("Start with a cancelled context: %v, want context.Canceled", err)
	}
}

// TestMonitorAndQTest exercises the clients themselves on a real QEMU:
// concurrent commands matched by id, a cancelled command that leaves the
// monitor usable, and qtest reads and failures.
func TestMonitorAndQTest(t *testing.T) {
	v := startVM(t, Options{Devices: true})
	ctx := testContext(t)

	errc := make(chan error, 8)
	for range 8 {
		go func() {
			var err error
			for range 20 {
				var ret json.RawMessage
				if ret, err = v.Ctl.Execute(ctx, "query-status", nil); err != nil {
					break
				}
				if !strings.Contains(string(ret), `"running"`) {
					err = errors.New("unexpected reply " + string(ret))
					break
				}
			}
			errc <- err
		}()
	}
	for range 8 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := v.Ctl.Execute(cctx, "query-status", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Execute with a cancelled context = %v, want context.Canceled", err)
	}
	if got := queryStatus(t, ctx, v.Ctl); got != "running" {
		t.Errorf("status after a cancelled command = %q", got)
	}
	if _, err := v.Ctl.WaitEvent(cctx, "NEVER", v.Ctl.Mark()); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitEvent with a cancelled context = %v, want context.Canceled", err)
	}

	// pvpanic's port reads back the events it supports: panicked|crash-loaded,
	// and shutdown from QEMU 9.1 on.
	want := uint8(pvpanicPanicked | pvpanicCrash)
	if v.Version().AtLeast(9, 1) {
		want |= pvpanicShutdown
	}
	if got, err := v.QTest.Inb(ctx, pvpanicPort); err != nil || got != want {
		t.Errorf("inb pvpanic = %#x, %v; want %#x on QEMU %v", got, err, want, v.Version())
	}
	if _, err := v.QTest.Command(ctx, "no_such_qtest_command"); err == nil || !strings.Contains(err.Error(), "FAIL") {
		t.Errorf("unknown qtest command: %v, want FAIL", err)
	}
	if err := v.QTest.Outb(ctx, pvpanicPort, 0); err != nil {
		t.Errorf("qtest after a FAIL answer: %v", err)
	}
}

// TestVersion: the VM's Version is the release QEMU reports, and AtLeast
// orders releases by major, then minor number.
func TestVersion(t *testing.T) {
	v := startVM(t, Options{})
	var q struct{ QEMU Version }
	if err := json.Unmarshal(execute(t, testContext(t), v.Ctl, "query-version", nil), &q); err != nil {
		t.Fatal(err)
	}
	if q.QEMU.Major == 0 || v.Version() != q.QEMU {
		t.Errorf("Version() = %v, query-version says %v", v.Version(), q.QEMU)
	}
	if bv, err := BinaryVersion(testContext(t)); err != nil || bv != q.QEMU {
		t.Errorf("BinaryVersion() = %v, %v; query-version says %v", bv, err, q.QEMU)
	}
	for _, tc := range []struct {
		v            Version
		major, minor int
		want         bool
	}{
		{Version{7, 2, 22}, 7, 2, true},
		{Version{7, 2, 22}, 9, 1, false},
		{Version{10, 0, 2}, 9, 1, true},
		{Version{10, 0, 2}, 9, 2, true},
		{Version{10, 0, 2}, 10, 0, true},
		{Version{10, 0, 2}, 10, 1, false},
		{Version{9, 2, 0}, 9, 1, true},
	} {
		if got := tc.v.AtLeast(tc.major, tc.minor); got != tc.want {
			t.Errorf("%v.AtLeast(%d, %d) = %v, want %v", tc.v, tc.major, tc.minor, got, tc.want)
		}
	}
}
