package pages

import (
	"encoding/json"
	"io"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/journal"
	"github.com/qmp-exporter/qmp_exporter/qmp"
)

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

// newFleet returns a fleet with a journal and three VMs: "quiet" (up,
// running), "hostile" (up, panicked, with markup in its name and data)
// and "gone" (down).
func newFleet(t *testing.T) *fleet.Fleet {
	t.Helper()
	f := fleet.New(fleet.Options{Journal: journal.New(journal.Options{})})
	add := func(key string, meta fleet.Meta, events ...qmp.Event) {
		v, err := f.Add(key, meta, t0)
		if err != nil {
			t.Fatal(err)
		}
		st := v.Lock()
		if key != "c" {
			st.MarkUp(t0)
			st.SetStatus("running")
		}
		for _, ev := range events {
			v.Apply(ev)
		}
		v.Unlock()
	}
	add("a", fleet.Meta{Name: "quiet"}, qmp.Event{Name: "RESUME", Time: t0.Add(time.Second)})
	add("b", fleet.Meta{Name: `<script>alert("vm")</script>`, Kind: fleet.Listener},
		qmp.Event{Name: "STOP", Time: t0.Add(2 * time.Second)},
		qmp.Event{Name: "GUEST_PANICKED", Time: t0.Add(3 * time.Second),
			Data: []byte(`{"action":"pause","info":{"type":"hyper-v","arg1":1,"msg":"<img src=x onerror=alert(1)>"}}`)})
	add("c", fleet.Meta{Name: "gone", Kind: fleet.Libvirt})
	return f
}

func get(t *testing.T, p *Pages, url string) (string, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", url, nil)
	if strings.HasPrefix(url, "/vms") {
		p.ServeVMs(rec, req)
	} else {
		p.ServeEvents(rec, req)
	}
	body, _ := io.ReadAll(rec.Result().Body)
	return string(body), rec.Result().Header.Get("Content-Type")
}

func TestVMsNeedingAttentionComeFirst(t *testing.T) {
	p := New(newFleet(t))
	p.now = func() time.Time { return t0.Add(time.Minute) }
	rows := p.VMs()
	var order []string
	for _, r := range rows {
		order = append(order, r.VM)
	}
	want := []string{`<script>alert("vm")</script>`, "gone", "quiet"}
	if strings.Join(order, "|") != strings.Join(want, "|") {
		t.Fatalf("order %q; want %q (panicked, down, fine)", order, want)
	}
	if r := rows[0]; r.UpSince == nil || !r.UpSince.Equal(t0) || r.Status != "guest-panicked" || r.Panics != 1 || r.Source != "listener" || r.LastEvent == nil || r.LastEvent.Event != "GUEST_PANICKED" {
		t.Errorf("panicked row = %+v", r)
	}
	if r := rows[1]; r.Up || r.DownSince == nil || r.UpSince != nil || r.Source != "libvirt" || r.LastEvent != nil {
		t.Errorf("down row = %+v", r)
	}
}

func TestEventsNewestFirstAndFiltered(t *testing.T) {
	p := New(newFleet(t))
	all, _ := p.Events(EventQuery{Limit: 10})
	var names []string
	for _, e := range all {
		names = append(names, e.Event)
	}
	if strings.Join(names, " ") != "GUEST_PANICKED STOP RESUME" {
		t.Errorf("events %q; want newest first", names)
	}
	quiet, _ := p.Events(EventQuery{VM: "quiet", Limit: 10})
	if len(quiet) != 1 || quiet[0].Event != "RESUME" {
		t.Errorf("vm=quiet gave %+v", quiet)
	}
	stops, _ := p.Events(EventQuery{Event: "STOP", Limit: 10})
	if len(stops) != 1 || stops[0].VM != `<script>alert("vm")</script>` {
		t.Errorf("event=STOP gave %+v", stops)
	}
	one, _ := p.Events(EventQuery{Limit: 1})
	if len(one) != 1 || one[0].Event != "GUEST_PANICKED" {
		t.Errorf("limit=1 gave %+v", one)
	}
}

// TestPagesShowGuestTextLiterally: names and data that guests control
// are escaped text, never markup.
func TestPagesShowGuestTextLiterally(t *testing.T) {
	p := New(newFleet(t))
	for _, u := range []string{"/vms", "/events", "/events?vm=" + url.QueryEscape(`<script>alert("vm")</script>`)} {
		body, ctype := get(t, p, u)
		if ctype != "text/html; charset=utf-8" {
			t.Errorf("%s: Content-Type %q", u, ctype)
		}
		for _, raw := range []string{"<script>", "<img"} {
			if strings.Contains(body, raw) {
				t.Errorf("%s: raw %q in the page", u, raw)
			}
		}
		if !strings.Contains(body, "&lt;script&gt;alert(&#34;vm&#34;)&lt;/script&gt;") {
			t.Errorf("%s: the VM's name is not shown escaped", u)
		}
	}
	body, _ := get(t, p, "/events")
	if !strings.Contains(body, "&lt;img src=x onerror=alert(1)&gt;") {
		t.Errorf("/events does not show the panic's data escaped:\n%s", body)
	}
}

func TestJSONFormat(t *testing.T) {
	p := New(newFleet(t))
	body, ctype := get(t, p, "/events?format=json&event=GUEST_PANICKED")
	if ctype != "application/json" {
		t.Errorf("Content-Type %q", ctype)
	}
	var out struct {
		Events []struct {
			VM, Event, Source string
			Time              time.Time
			Data              struct{ Action string }
		}
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("%v in %s", err, body)
	}
	if len(out.Events) != 1 || out.Events[0].Data.Action != "pause" || out.Events[0].Source != "listener" || !out.Events[0].Time.Equal(t0.Add(3*time.Second)) {
		t.Errorf("events JSON = %+v", out.Events)
	}
	body, _ = get(t, p, "/vms?format=json")
	var vms struct {
		VMs []struct {
			VM     string `json:"vm"`
			Up     bool   `json:"up"`
			Panics uint64 `json:"guest_panics"`
		} `json:"vms"`
	}
	if err := json.Unmarshal([]byte(body), &vms); err != nil || len(vms.VMs) != 3 || vms.VMs[0].Panics != 1 {
		t.Errorf("vms JSON %+v (%v)", vms, err)
	}
}

func TestBadLimitIsRefused(t *testing.T) {
	rec := httptest.NewRecorder()
	New(newFleet(t)).ServeEvents(rec, httptest.NewRequest("GET", "/events?limit=x", nil))
	if rec.Code != 400 {
		t.Errorf("limit=x: status %d; want 400", rec.Code)
	}
}
