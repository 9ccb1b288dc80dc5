package pages

import (
	"html/template"
	"strconv"
	"time"
)

type vmsView struct {
	Now time.Time
	VMs []VM
}

type eventsView struct {
	Now     time.Time
	Query   EventQuery
	Events  []Event
	Dropped uint64
}

var funcs = template.FuncMap{
	// age is how long ago t was, to the second, short ("3m12s").
	"age": func(now time.Time, t *time.Time) string {
		if t == nil {
			return ""
		}
		return now.Sub(*t).Truncate(time.Second).String()
	},
	"stamp": func(t *time.Time) string {
		if t == nil {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05.000000Z")
	},
	"count": func(n uint64) string {
		if n == 0 {
			return ""
		}
		return strconv.FormatUint(n, 10)
	},
	"rowClass": func(attention int) string {
		return [...]string{"", "seen", "down", "trouble"}[attention]
	},
}

// style is shared by both pages: readable on a phone (the tables scroll
// sideways in their own box), and nothing fetched from elsewhere.
const style = `<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, sans-serif; margin: 1rem; color: #1a1a1a; }
nav a { margin-right: 1rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { text-align: left; padding: 0.3rem 0.6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
td.n { text-align: right; }
tr.trouble { background: #fde2e2; }
tr.down { background: #eee; }
tr.seen { background: #fff4d6; }
pre { margin: 0; white-space: pre-wrap; word-break: break-all; max-width: 60rem; font-size: 0.8rem; }
.note { color: #555; }
form input { margin-right: 0.5rem; }
</style>`

var vmsPage = template.Must(template.New("vms").Funcs(funcs).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>QMP Exporter: VMs</title>` + style + `</head>
<body>
<nav><a href=".">Home</a><a href="vms">VMs</a><a href="events">Events</a></nav>
<h1>VMs</h1>
<p class="note">{{len .VMs}} VMs, those needing attention first: a run state that waits for a person, then VMs that are down, then VMs that had panics, watchdog actions or I/O errors. <a href="vms?format=json">JSON</a></p>
<div class="scroll"><table>
<thead><tr><th>vm</th><th>up</th><th>run state</th><th>source</th><th>session up for</th><th>last event</th><th>age</th><th>panics</th><th>watchdog</th><th>I/O errors</th></tr></thead>
<tbody>
{{- range .VMs}}
<tr class="{{rowClass .Attention}}">
<td><a href="events?vm={{.VM}}">{{.VM}}</a></td>
<td>{{if .Up}}up{{else}}down{{end}}</td>
<td>{{.Status}}</td>
<td>{{.Source}}</td>
<td>{{if .Up}}{{age $.Now .UpSince}}{{else}}down for {{age $.Now .DownSince}}{{end}}</td>
<td>{{with .LastEvent}}{{.Event}}{{end}}</td>
<td>{{with .LastEvent}}{{if .Time}}{{age $.Now .Time}}{{else}}{{age $.Now .ReceivedPtr}}{{end}}{{end}}</td>
<td class="n">{{count .Panics}}</td>
<td class="n">{{count .Watchdog}}</td>
<td class="n">{{count .IOErrors}}</td>
</tr>
{{- else}}
<tr><td colspan="10">No VM yet.</td></tr>
{{- end}}
</tbody></table></div>
</body></html>
`))

var eventsPage = template.Must(template.New("events").Funcs(funcs).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>QMP Exporter: events</title>` + style + `</head>
<body>
<nav><a href=".">Home</a><a href="vms">VMs</a><a href="events">Events</a></nav>
<h1>Events{{with .Query.VM}} of {{.}}{{end}}</h1>
<form method="get" action="events">
<label>vm <input name="vm" value="{{.Query.VM}}"></label>
<label>event <input name="event" value="{{.Query.Event}}"></label>
<button type="submit">Show</button>
</form>
<p class="note">{{len .Events}} events, newest first{{if eq (len .Events) .Query.Limit}} (the newest {{.Query.Limit}}; ask for more with limit=){{end}}.
{{- if .Dropped}} {{.Dropped}} older events of these VMs are no longer kept.{{end}}
Times are QEMU's. <a href="events?vm={{.Query.VM}}&amp;event={{.Query.Event}}&amp;format=json">JSON</a></p>
<div class="scroll"><table>
<thead><tr><th>time (UTC)</th><th>vm</th><th>event</th><th>data</th></tr></thead>
<tbody>
{{- range .Events}}
<tr>
<td>{{stamp .Time}}</td>
<td><a href="events?vm={{.VM}}">{{.VM}}</a></td>
<td>{{.Event}}</td>
<td><pre>{{printf "%s" .Data}}</pre>{{if .Truncated}}<span class="note">(cut: the data was longer)</span>{{end}}</td>
</tr>
{{- else}}
<tr><td colspan="4">No event.</td></tr>
{{- end}}
</tbody></table></div>
</body></html>
`))

// ReceivedPtr is Received as a pointer, for the templates' age.
func (e Event) ReceivedPtr() *time.Time { return &e.Received }
