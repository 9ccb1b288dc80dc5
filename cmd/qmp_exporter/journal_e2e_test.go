package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/browserlab"
	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
	"github.com/qmp-exporter/qmp_exporter/internal/hostile"
	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
)

var updateScreenshots = flag.Bool("update-screenshots", false, "write the pages' screenshots of TestJournalEndToEnd to docs/ for the README")

// pageEvent is an event as /events?format=json gives it.
type pageEvent struct {
	Seq       uint64          `json:"seq"`
	Time      time.Time       `json:"time"`
	VM        string          `json:"vm"`
	Event     string          `json:"event"`
	Source    string          `json:"source"`
	Data      json.RawMessage `json:"data"`
	Truncated bool            `json:"data_truncated"`
}

// pageVM is a row of /vms?format=json.
type pageVM struct {
	VM        string `json:"vm"`
	Up        bool   `json:"up"`
	Status    string `json:"status"`
	Source    string `json:"source"`
	Panics    uint64 `json:"guest_panics"`
	IOErrors  uint64 `json:"block_io_errors"`
	Attention int    `json:"attention"`
	LastEvent *struct {
		Event string `json:"event"`
	} `json:"last_event"`
}

func (e *e2e) get(path string) string {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.ctx, "GET", "http://"+e.exp.Addr+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		e.t.Fatalf("GET %s: %d %v\n%s", path, resp.StatusCode, err, body)
	}
	return string(body)
}

func (e *e2e) getJSON(path string, out any) {
	e.t.Helper()
	if err := json.Unmarshal([]byte(e.get(path)), out); err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
}

// dataField returns a string member of an event's data.
func dataField(ev pageEvent, name string) string {
	var m map[string]any
	_ = json.Unmarshal(ev.Data, &m)
	s, _ := m[name].(string)
	return s
}

// TestJournalEndToEnd: on a real QEMU, a block I/O error and a guest
// panic are on /vms, on /events with their data (the I/O error's reason,
// the panic's action), in the JSON of both and in the event log, in
// QEMU's order; and both pages render in a real browser.
func TestJournalEndToEnd(t *testing.T) {
	ctx, cancel, bin := qemuE2E(t, 4*time.Minute)
	defer cancel()
	chromium := browserlab.Require(t)
	dir := t.TempDir()
	vm, err := qemulab.Start(ctx, qemulab.Options{Dir: filepath.Join(dir, "vm"), Name: "journal", UUID: e2eUUID,
		Devices: true, FaultyDisk: &qemulab.FaultyDisk{Once: true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	logPath := filepath.Join(dir, "events.log")
	e := startExporter(t, ctx, bin, "--qmp.socket="+vm.ExporterSocket, "--events.log-file="+logPath)
	e.wait("up", func(m exporterproc.Metrics) bool { return m.Has(`qmp_up{vm="journal"}`, 1) })

	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("disk read", vm.DiskRead(ctx, qemulab.FaultySector))
	must("disk write", vm.DiskWrite(ctx, qemulab.FaultySector))
	// QEMU 10.0 rate-limits BLOCK_IO_ERROR: the second report may come up
	// to a second after the STOP it caused, so wait for both.
	e.wait("both I/O errors and io-error", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_vm_status{status="io-error",vm="journal"}`, 1) &&
			m.Has(`qmp_block_io_errors_total{action="report",device="`+qemulab.FaultyDiskID+`",operation="read",vm="journal"}`, 1) &&
			m.Has(`qmp_block_io_errors_total{action="stop",device="`+qemulab.FaultyDiskID+`",operation="write",vm="journal"}`, 1)
	})
	_, err = vm.Ctl.Execute(ctx, "cont", nil)
	must("cont", err)
	e.wait("running", func(m exporterproc.Metrics) bool { return m.Has(`qmp_vm_status{status="running",vm="journal"}`, 1) })
	must("panic", vm.Panic(ctx))
	e.wait("guest-panicked", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_vm_status{status="guest-panicked",vm="journal"}`, 1)
	})

	// /events: newest first; reversed, QEMU's order on the wire, with the
	// two I/O errors' reasons and the panic. (Not always the order of
	// QEMU's timestamps: QEMU 10.0 sends a rate-limited BLOCK_IO_ERROR
	// after the STOP it caused, with the time of the error.)
	var events struct {
		Events []pageEvent `json:"events"`
	}
	e.getJSON("/events?vm=journal&format=json", &events)
	inOrder := slices.Clone(events.Events)
	slices.Reverse(inOrder)
	var story []string
	for _, ev := range inOrder {
		switch ev.Event {
		case "BLOCK_IO_ERROR":
			story = append(story, ev.Event+":"+dataField(ev, "operation")+":"+dataField(ev, "reason"))
		case "GUEST_PANICKED":
			story = append(story, ev.Event+":"+dataField(ev, "action"))
		}
		if ev.VM != "journal" || ev.Source != "socket" {
			t.Errorf("event %s has vm %q, source %q", ev.Event, ev.VM, ev.Source)
		}
	}
	want := []string{"BLOCK_IO_ERROR:read:Input/output error", "BLOCK_IO_ERROR:write:No space left on device", "GUEST_PANICKED:pause"}
	if !slices.Equal(story, want) {
		t.Errorf("/events tells %q; want %q", story, want)
	}

	// /vms: the panicked VM comes first, with its counts.
	var vms struct {
		VMs []pageVM `json:"vms"`
	}
	e.getJSON("/vms?format=json", &vms)
	if len(vms.VMs) != 1 {
		t.Fatalf("/vms has %d rows; want 1", len(vms.VMs))
	}
	if r := vms.VMs[0]; r.VM != "journal" || !r.Up || r.Status != "guest-panicked" || r.Panics != 1 || r.IOErrors != 2 ||
		r.Attention != 3 || r.LastEvent == nil {
		t.Errorf("/vms row = %+v", r)
	}

	// The event log has the same events, in the same order, with data.
	var logged []pageEvent
	waitLog := func() bool {
		logged = readEventLog(t, logPath)
		return len(logged) >= len(inOrder)
	}
	for deadline := time.Now().Add(10 * time.Second); !waitLog() && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
	}
	if len(logged) != len(inOrder) {
		t.Fatalf("event log has %d events; /events %d", len(logged), len(inOrder))
	}
	for i := range logged {
		l, p := logged[i], inOrder[i]
		if l.Event != p.Event || !l.Time.Equal(p.Time) || string(compactJSON(l.Data)) != string(compactJSON(p.Data)) || l.VM != "journal" {
			t.Errorf("log line %d = %s %s %s; /events has %s %s %s", i, l.Event, l.Time, l.Data, p.Event, p.Time, p.Data)
		}
	}

	// A real browser renders both pages with the data.
	b := browserlab.Browser{Path: chromium, Dir: dir}
	base := "http://" + e.exp.Addr
	dom, err := b.DumpDOM(ctx, base+"/vms")
	must("chromium /vms", err)
	for _, s := range []string{"journal", "guest-panicked", "socket"} {
		if !strings.Contains(dom, s) {
			t.Errorf("/vms in Chromium lacks %q:\n%s", s, dom)
		}
	}
	dom, err = b.DumpDOM(ctx, base+"/events?vm=journal")
	must("chromium /events", err)
	for _, s := range []string{"No space left on device", "Input/output error", "GUEST_PANICKED", `"pause"`} {
		if !strings.Contains(dom, s) {
			t.Errorf("/events in Chromium lacks %q:\n%s", s, dom)
		}
	}
	shots := filepath.Join("..", "..", ".build", "screenshots")
	for _, p := range []struct{ page, file string }{{"/vms", "vms.png"}, {"/events?vm=journal", "events.png"}} {
		path := filepath.Join(shots, p.file)
		must("screenshot "+p.page, b.Screenshot(ctx, base+p.page, path, 1100, 700))
		if *updateScreenshots {
			png, err := os.ReadFile(path)
			must("read screenshot", err)
			must("update docs", os.WriteFile(filepath.Join("..", "..", "docs", "page-"+p.file), png, 0o644))
		}
	}
}

// TestPagesInABrowserShowGuestMarkupAsText: a VM whose name and event
// data are markup and script. In Chromium nothing of it runs, and the
// text shows literally.
func TestPagesInABrowserShowGuestMarkupAsText(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	chromium := browserlab.Require(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	bin := buildExporter(t, ctx)
	dir := t.TempDir()
	const name = `<script>document.title="owned-by-name"</script><b id="injected">x</b>`
	peer, err := hostile.Serve(ctx, filepath.Join(dir, "evil.qmp"), hostile.Scripted{
		Identity: hostile.Identity{Name: name, UUID: "0badc0de-0000-4000-8000-000000000001"},
		Events: []hostile.ScriptedEvent{{Name: "GUEST_PANICKED",
			Data: `{"action":"pause","info":{"type":"<img src=x onerror=\"document.title='owned-by-data'\">","message":"</pre><script>document.title='owned-by-data'</script>"}}`}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	e := startExporter(t, ctx, bin, "--qmp.socket="+peer.Path())
	e.wait("panic folded", func(m exporterproc.Metrics) bool {
		return m.Has(`qmp_events_total{event="GUEST_PANICKED",vm="`+strings.ReplaceAll(name, `"`, `\"`)+`"}`, 1)
	})

	b := browserlab.Browser{Path: chromium, Dir: dir}
	for _, page := range []string{"/vms", "/events", "/events?vm=" + url.QueryEscape(name)} {
		dom, err := b.DumpDOM(ctx, "http://"+e.exp.Addr+page)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(dom, "<title>owned-by") {
			t.Errorf("%s: a script from the guest ran:\n%s", page, dom)
		}
		if strings.Contains(dom, `<b id="injected">`) || strings.Contains(dom, "<img") {
			t.Errorf("%s: guest markup became elements:\n%s", page, dom)
		}
		// The text is there, shown as text (escaped once in the DOM dump).
		if !strings.Contains(dom, `&lt;script&gt;document.title="owned-by-name"&lt;/script&gt;`) {
			t.Errorf("%s: the VM's name is not shown literally:\n%s", page, dom)
		}
	}
	dom, err := b.DumpDOM(ctx, "http://"+e.exp.Addr+"/events")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(dom, `&lt;/pre&gt;&lt;script&gt;document.title='owned-by-data'&lt;/script&gt;`) {
		t.Errorf("/events does not show the event's data literally:\n%s", dom)
	}
	if err := b.Screenshot(ctx, "http://"+e.exp.Addr+"/events", filepath.Join("..", "..", ".build", "screenshots", "events-markup.png"), 1100, 500); err != nil {
		t.Error(err)
	}
}

func readEventLog(t *testing.T, path string) []pageEvent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []pageEvent
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev pageEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("event log line %q: %v", sc.Text(), err)
		}
		out = append(out, ev)
	}
	return out
}

func compactJSON(raw json.RawMessage) []byte {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}

// TestEventLogReopensOnSIGHUP: logrotate moves the event log away and
// sends SIGHUP; the exporter writes on in a new file, and between the two
// files no event is missing or repeated.
func TestEventLogReopensOnSIGHUP(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	bin := buildExporter(t, ctx)
	dir := t.TempDir()
	const total = 300
	peer, err := hostile.Serve(ctx, filepath.Join(dir, "vm.qmp"), hostile.Healthy{
		Identity: hostile.Identity{Name: "rotated", UUID: "0badc0de-0000-4000-8000-000000000002"}, Events: total, Rate: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	logPath := filepath.Join(dir, "events.log")
	e := startExporter(t, ctx, bin, "--qmp.socket="+peer.Path(), "--events.log-file="+logPath)
	e.wait("some events logged", func(m exporterproc.Metrics) bool {
		v, _ := m.Value(`qmp_events_total{event="STOP",vm="rotated"}`)
		return v >= 5
	})
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if err := e.exp.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case <-peer.EventsDone():
	case <-ctx.Done():
		t.Fatal("the peer did not send its events")
	}
	m := e.wait("every event counted", func(m exporterproc.Metrics) bool { return eventsCounted(m) == total })
	var old, cur []pageEvent
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		old, cur = readEventLog(t, logPath+".1"), readEventLog(t, logPath)
		if len(old)+len(cur) >= total {
			break
		}
	}
	if len(old) == 0 || len(cur) == 0 || len(old)+len(cur) != total {
		t.Fatalf("rotated file has %d events, new file %d; want both non-empty, %d in all (counted %v)", len(old), len(cur), total, eventsCounted(m))
	}
	if v, ok := m.Value(`qmp_event_log_dropped_total`); !ok || v != 0 {
		t.Errorf("qmp_event_log_dropped_total = %v (present %v); want 0", v, ok)
	}
}

// eventsCounted sums qmp_events_total over all its series.
func eventsCounted(m exporterproc.Metrics) (n float64) {
	for series, v := range m {
		if strings.HasPrefix(series, "qmp_events_total{") {
			n += v
		}
	}
	return n
}
