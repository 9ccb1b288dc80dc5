// Package pages serves what labels cannot carry, for the operator an
// alert woke: /vms, one row per VM with its state and trouble counts,
// VMs that need attention first; and /events, the VMs' recent events with
// their data, newest first. Both answer JSON with ?format=json.
//
// Everything shown comes from guests and peers (VM names, event data), so
// it is rendered by html/template, which escapes it, and it is bounded by
// the journal before it gets here. The pages use no script and no asset
// from elsewhere: they work on an offline host and on a phone.
package pages

import (
	"cmp"
	"encoding/json"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/journal"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
)

// Limits of /events.
const (
	DefaultEventLimit = 500
	MaxEventLimit     = 5000
)

// Pages serves /vms and /events from a fleet whose journal keeps events.
type Pages struct {
	fleet *fleet.Fleet
	now   func() time.Time
}

// New returns the pages of vms.
func New(vms *fleet.Fleet) *Pages { return &Pages{fleet: vms, now: time.Now} }

// VM is one row of /vms; its JSON names are documented in the README.
type VM struct {
	VM     string `json:"vm"`
	UUID   string `json:"uuid,omitempty"`
	Up     bool   `json:"up"`
	Status string `json:"status,omitempty"` // QEMU RunState; empty while unknown
	Source string `json:"source"`
	// UpSince is when the current session began; DownSince when the VM
	// was last seen up (or first looked for). One of them is set.
	UpSince   *time.Time `json:"up_since,omitempty"`
	DownSince *time.Time `json:"down_since,omitempty"`
	LastEvent *Event     `json:"last_event,omitempty"`
	Panics    uint64     `json:"guest_panics"`
	Watchdog  uint64     `json:"watchdog_actions"`
	IOErrors  uint64     `json:"block_io_errors"`
	// Attention ranks the row: 3 a run state that needs a person, 2 down,
	// 1 panics, watchdog actions or I/O errors seen, 0 fine.
	Attention int `json:"attention"`
}

// Event is one row of /events; its JSON names are documented in the
// README and match the event log's.
type Event struct {
	Seq       uint64          `json:"seq"`
	Time      *time.Time      `json:"time,omitempty"` // QEMU's timestamp
	Received  time.Time       `json:"received"`
	VM        string          `json:"vm"`
	Event     string          `json:"event"`
	Source    string          `json:"source"`
	Data      json.RawMessage `json:"data,omitempty"`
	Truncated bool            `json:"data_truncated,omitempty"`
}

// troubleStates are the run states in which a VM waits for a person.
var troubleStates = map[string]bool{
	"guest-panicked": true, "internal-error": true, "io-error": true, "watchdog": true, "shutdown": true,
}

// VMs returns the rows of /vms, those needing attention first.
func (p *Pages) VMs() []VM {
	var rows []VM
	p.fleet.Visible(p.now(), func(v *fleet.VM, label string, st *vmstate.State) {
		row := VM{VM: label, UUID: st.Info.UUID, Up: st.Up, Status: st.Status, Source: v.Meta().Kind.String(),
			UpSince: unixMilliOrNil(st.UpSince), DownSince: timeOrNil(st.DownSince),
			Panics: sum(st.Panics), Watchdog: sum(st.Watchdog), IOErrors: ioErrors(st)}
		if r := v.Events(); r != nil {
			if e, ok := r.Last(); ok {
				ev := event(e, label, r.Source())
				ev.Data = nil // the row names the event; /events shows it
				row.LastEvent = &ev
			}
		}
		row.Attention = attention(row)
		rows = append(rows, row)
	})
	slices.SortStableFunc(rows, func(a, b VM) int { return cmp.Compare(b.Attention, a.Attention) })
	return rows
}

func attention(r VM) int {
	switch {
	case troubleStates[r.Status]:
		return 3
	case !r.Up:
		return 2
	case r.Panics+r.Watchdog+r.IOErrors > 0:
		return 1
	}
	return 0
}

// EventQuery selects events: by vm label and event name when not empty,
// at most Limit of them, newest first.
type EventQuery struct {
	VM, Event string
	Limit     int
}

// Events returns the events q selects, newest first, and the number of
// older events of the selected VMs that the journal no longer holds.
func (p *Pages) Events(q EventQuery) (events []Event, dropped uint64) {
	p.fleet.Visible(p.now(), func(v *fleet.VM, label string, _ *vmstate.State) {
		r := v.Events()
		if r == nil || (q.VM != "" && q.VM != label) {
			return
		}
		entries, d := r.Entries()
		dropped += d
		for _, e := range entries {
			if q.Event == "" || q.Event == e.Event {
				events = append(events, event(e, label, r.Source()))
			}
		}
	})
	slices.SortFunc(events, func(a, b Event) int { return cmp.Compare(b.Seq, a.Seq) })
	if len(events) > q.Limit {
		events = events[:q.Limit]
	}
	return events, dropped
}

func event(e journal.Entry, vm, source string) Event {
	return Event{Seq: e.Seq, Time: timeOrNil(e.Time), Received: e.Received, VM: vm, Event: e.Event, Source: source,
		Data: e.Data, Truncated: e.Truncated}
}

func unixMilliOrNil(ms int64) *time.Time {
	if ms == 0 {
		return nil
	}
	t := time.UnixMilli(ms)
	return &t
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func sum[K comparable](m map[K]uint64) (n uint64) {
	for _, c := range m {
		n += c
	}
	return n
}

func ioErrors(st *vmstate.State) (n uint64) {
	for _, d := range st.Devices {
		for _, byOp := range d.IOErrors {
			for _, c := range byOp {
				n += c
			}
		}
	}
	return n
}

// ServeVMs serves /vms.
func (p *Pages) ServeVMs(w http.ResponseWriter, r *http.Request) {
	rows := p.VMs()
	if r.URL.Query().Get("format") == "json" {
		writeJSON(w, struct {
			VMs []VM `json:"vms"`
		}{rows})
		return
	}
	render(w, vmsPage, vmsView{Now: p.now(), VMs: rows})
}

// ServeEvents serves /events; ?vm=, ?event= and ?limit= select.
func (p *Pages) ServeEvents(w http.ResponseWriter, r *http.Request) {
	q := EventQuery{VM: r.URL.Query().Get("vm"), Event: r.URL.Query().Get("event"), Limit: DefaultEventLimit}
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			http.Error(w, "limit must be a positive integer", http.StatusBadRequest)
			return
		}
		q.Limit = min(n, MaxEventLimit)
	}
	events, dropped := p.Events(q)
	if r.URL.Query().Get("format") == "json" {
		writeJSON(w, struct {
			Events  []Event `json:"events"`
			Dropped uint64  `json:"dropped"`
		}{events, dropped})
		return
	}
	render(w, eventsPage, eventsView{Now: p.now(), Query: q, Events: events, Dropped: dropped})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // a failed write is the client gone
}

func render(w http.ResponseWriter, t *template.Template, v any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	// No script runs on these pages, whatever a guest put in a name.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
	if err := t.Execute(w, v); err != nil {
		// The header is out; the client sees a cut page.
		return
	}
}
