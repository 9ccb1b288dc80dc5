// Package dashboards holds the Grafana dashboards of qmp_exporter (plain
// JSON, one file per dashboard) and their tests: the static checks here,
// and an end-to-end test against a real Prometheus scraping the exporter
// that watches a real QEMU (e2e_test.go).
package dashboards

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/qmp-exporter/qmp_exporter/internal/promlab"
)

// wantUIDs pins each dashboard's uid: links and bookmarks use it, so it
// must never change.
var wantUIDs = map[string]string{
	"fleet-overview.json":  "qmp-exporter-fleet",
	"virtual-machine.json": "qmp-exporter-vm",
}

// wantMetrics are the metrics each dashboard must show (issue 5's list of
// panels, by the metric each one reads).
var wantMetrics = map[string][]string{
	"fleet-overview.json": {
		"qmp_vm_status", "qmp_up", "up", "qmp_guest_panics_total", "qmp_watchdog_actions_total",
		"qmp_block_io_errors_total", "qmp_migration_status", "qmp_migrations_total",
		"qmp_vnc_clients", "qmp_spice_clients", "qmp_balloon_actual_bytes", "qmp_events_total",
	},
	"virtual-machine.json": {
		"qmp_vm_status", "qmp_events_total", "qmp_block_io_errors_total", "qmp_block_io_status",
		"qmp_tray_open", "qmp_migration_status", "qmp_migration_transferred_bytes",
		"qmp_balloon_actual_bytes", "qmp_vnc_clients", "qmp_spice_clients", "qmp_block_jobs",
		"qmp_block_job_progress_bytes",
	},
}

// minSchemaVersion is the schemaVersion of the classic dashboard JSON
// written by Grafana 12. Later versions' migrations (42: hidden fields
// also hidden from tooltips; 43: formatTime transformations) do not
// concern these dashboards.
const minSchemaVersion = 41

// dsRef is the only datasource reference the dashboards may use: the
// datasource variable, never a hard-coded uid.
var dsRef = map[string]any{"type": "prometheus", "uid": "${datasource}"}

type dashboard struct {
	File          string          `json:"-"`
	UID           string          `json:"uid"`
	Title         string          `json:"title"`
	Description   string          `json:"description"`
	SchemaVersion int             `json:"schemaVersion"`
	ID            json.RawMessage `json:"id"`
	Panels        []panel         `json:"panels"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []annotation `json:"list"`
	} `json:"annotations"`

	raw any
}

type panel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Description string         `json:"description"`
	Datasource  map[string]any `json:"datasource"`
	GridPos     struct {
		H, W, X, Y int
	} `json:"gridPos"`
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Targets []target `json:"targets"`
	Panels  []panel  `json:"panels"` // a collapsed row's panels
}

type target struct {
	RefID      string         `json:"refId"`
	Expr       string         `json:"expr"`
	Instant    bool           `json:"instant"`
	Datasource map[string]any `json:"datasource"`
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Datasource map[string]any  `json:"datasource"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
}

// queryString returns the variable's query, which Grafana stores as a
// string or as an object with a query member.
func (v variable) queryString() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var o struct {
		Query string `json:"query"`
	}
	_ = json.Unmarshal(v.Query, &o)
	return o.Query
}

type annotation struct {
	Name       string         `json:"name"`
	Datasource map[string]any `json:"datasource"`
	Expr       string         `json:"expr"`
}

// loadDashboards reads every *.json of the package directory.
func loadDashboards(t *testing.T) []*dashboard {
	t.Helper()
	files, err := filepath.Glob("*.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no dashboards (*.json)")
	}
	var out []*dashboard
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		d := &dashboard{File: f}
		if err := json.Unmarshal(b, d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := json.Unmarshal(b, &d.raw); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out = append(out, d)
	}
	return out
}

// allPanels returns the dashboard's panels, with the panels of collapsed
// rows, rows excluded.
func (d *dashboard) allPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type != "row" {
				out = append(out, p)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// query is one PromQL expression of a dashboard.
type query struct {
	Where string // for messages
	// File, Panel and RefID name the query: Panel is the panel's title,
	// or "annotation NAME" for an annotation, whose RefID is "".
	File, Panel, RefID string
	Expr               string
	Instant            bool
}

// queries returns every PromQL expression of the dashboard: panel targets
// and annotation queries.
func (d *dashboard) queries() []query {
	var out []query
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			out = append(out, query{
				Where: fmt.Sprintf("%s panel %d %q target %s", d.File, p.ID, p.Title, tg.RefID),
				File:  d.File, Panel: p.Title, RefID: tg.RefID,
				Expr:    tg.Expr,
				Instant: tg.Instant,
			})
		}
	}
	for _, a := range d.Annotations.List {
		out = append(out, query{Where: fmt.Sprintf("%s annotation %q", d.File, a.Name),
			File: d.File, Panel: "annotation " + a.Name, Expr: a.Expr})
	}
	return out
}

// variableQueries returns the metric selectors and labels of the
// dashboard's label_values() variables.
func (d *dashboard) variableQueries() ([]varQuery, error) {
	var out []varQuery
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValuesRE.FindStringSubmatch(v.queryString())
		if m == nil {
			return nil, fmt.Errorf("%s variable %s: query %q is not label_values(<selector>, <label>)", d.File, v.Name, v.queryString())
		}
		out = append(out, varQuery{Where: fmt.Sprintf("%s variable %s", d.File, v.Name), Selector: m[1], Label: m[2]})
	}
	return out, nil
}

type varQuery struct {
	Where    string
	Selector string
	Label    string
}

var labelValuesRE = regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// substitute replaces Grafana's variables ($name and ${name}) in expr with
// values: vars maps a name (job, __rate_interval, ...) to its value. An
// unknown variable is an error.
func substitute(expr string, vars map[string]string) (string, error) {
	var unknown []string
	out := varRE.ReplaceAllStringFunc(expr, func(m string) string {
		name := strings.Trim(m, "${}")
		v, ok := vars[name]
		if !ok {
			unknown = append(unknown, m)
			return m
		}
		return v
	})
	if len(unknown) > 0 {
		return "", fmt.Errorf("unknown variable(s) %s", strings.Join(unknown, ", "))
	}
	if i := strings.IndexByte(out, '$'); i >= 0 {
		return "", fmt.Errorf("stray $ at %q", out[i:])
	}
	return out, nil
}

var varRE = regexp.MustCompile(`\$(\{[a-zA-Z_][a-zA-Z0-9_]*\}|[a-zA-Z_][a-zA-Z0-9_]*)`)

// checkVars are the values the static PromQL check substitutes: "All" for
// the label variables, and a plausible interval.
var checkVars = map[string]string{
	"job": ".*", "instance": ".*", "vm": ".*",
	"__rate_interval": "1m", "__interval": "1m", "__range": "1h",
}

func TestDashboardStructure(t *testing.T) {
	ds := loadDashboards(t)
	seen := map[string]bool{}
	for _, d := range ds {
		if want, ok := wantUIDs[d.File]; !ok {
			t.Errorf("%s: unknown dashboard; pin its uid in wantUIDs", d.File)
		} else if d.UID != want {
			t.Errorf("%s: uid %q, want %q (uids must stay stable)", d.File, d.UID, want)
		}
		seen[d.File] = true
		if d.Title == "" || d.Description == "" {
			t.Errorf("%s: title %q, description %q: both are required", d.File, d.Title, d.Description)
		}
		if d.SchemaVersion < minSchemaVersion {
			t.Errorf("%s: schemaVersion %d, want >= %d", d.File, d.SchemaVersion, minSchemaVersion)
		}
		if id := string(d.ID); id != "" && id != "null" {
			t.Errorf("%s: id %s: a dashboard to import must have a null id", d.File, id)
		}
		checkDatasources(t, d.File, "", d.raw)
		checkVariables(t, d)
		checkPanels(t, d)
	}
	for f := range wantUIDs {
		if !seen[f] {
			t.Errorf("dashboard %s is missing", f)
		}
	}
}

// checkDatasources walks the whole JSON: every "datasource" member must be
// the datasource variable, and no ${DS_...} import placeholder may appear.
func checkDatasources(t *testing.T, file, path string, v any) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		for k, c := range v {
			p := path + "." + k
			if k == "datasource" {
				ref, ok := c.(map[string]any)
				if !ok || len(ref) != 2 || ref["type"] != dsRef["type"] || ref["uid"] != dsRef["uid"] {
					t.Errorf("%s: %s = %v, want %v (no hard-coded datasource)", file, p, c, dsRef)
				}
				continue
			}
			checkDatasources(t, file, p, c)
		}
	case []any:
		for i, c := range v {
			checkDatasources(t, file, fmt.Sprintf("%s[%d]", path, i), c)
		}
	case string:
		if strings.Contains(v, "${DS_") {
			t.Errorf("%s: %s = %q: import placeholders are not allowed", file, path, v)
		}
	}
}

func checkVariables(t *testing.T, d *dashboard) {
	t.Helper()
	var names []string
	for _, v := range d.Templating.List {
		names = append(names, v.Name)
		switch v.Name {
		case "datasource":
			if v.Type != "datasource" || v.queryString() != "prometheus" {
				t.Errorf("%s: variable datasource: type %q query %q, want type datasource, query prometheus", d.File, v.Type, v.queryString())
			}
		case "job", "instance", "vm":
			if v.Type != "query" {
				t.Errorf("%s: variable %s: type %q, want query", d.File, v.Name, v.Type)
			}
			if v.Multi && (!v.IncludeAll || v.AllValue != ".*") {
				t.Errorf("%s: variable %s: a multi-value variable needs includeAll with allValue .*", d.File, v.Name)
			}
		}
	}
	if want := []string{"datasource", "job", "instance", "vm"}; !slices.Equal(names, want) {
		t.Errorf("%s: variables %v, want %v", d.File, names, want)
	}
}

func checkPanels(t *testing.T, d *dashboard) {
	t.Helper()
	ids := map[int]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			where := fmt.Sprintf("%s: panel %d %q", d.File, p.ID, p.Title)
			if p.ID <= 0 || ids[p.ID] {
				t.Errorf("%s: id must be positive and unique", where)
			}
			ids[p.ID] = true
			if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
				t.Errorf("%s: bad gridPos %+v", where, g)
			}
			if p.Title == "" {
				t.Errorf("%s: no title", where)
			}
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if strings.TrimSpace(p.Description) == "" {
				t.Errorf("%s: no description", where)
			}
			if p.FieldConfig.Defaults.Unit == "" {
				t.Errorf("%s: no unit (fieldConfig.defaults.unit)", where)
			}
			if p.Datasource == nil {
				t.Errorf("%s: no datasource", where)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no targets", where)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("%s: target refId %q empty or repeated", where, tg.RefID)
				}
				refs[tg.RefID] = true
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s target %s: no expr", where, tg.RefID)
				}
				if tg.Datasource == nil {
					t.Errorf("%s target %s: no datasource", where, tg.RefID)
				}
			}
		}
	}
	walk(d.Panels)
	for _, a := range d.Annotations.List {
		if a.Datasource == nil || a.Expr == "" {
			t.Errorf("%s: annotation %q: a Prometheus annotation with an expr is required", d.File, a.Name)
		}
	}
}

// TestDashboardQueries checks every query against the metrics the
// collector defines (collector.Metrics) and the dashboard conventions of
// CONTRIBUTING.md: every query filters on job and instance, and uses
// $__rate_interval in rate and increase.
func TestDashboardQueries(t *testing.T) {
	metrics, err := promlab.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range loadDashboards(t) {
		used := map[string]bool{}
		for _, q := range d.queries() {
			for _, m := range checkQuery(q, metrics) {
				t.Errorf("%s: %s\n    expr: %s", q.Where, m, q.Expr)
			}
			sc, _ := promlab.Scan(q.Expr)
			for _, s := range sc.Selectors {
				used[s.Metric] = true
			}
		}
		for _, m := range wantMetrics[d.File] {
			if !used[m] {
				t.Errorf("%s: no panel shows %s", d.File, m)
			}
		}
		vqs, err := d.variableQueries()
		if err != nil {
			t.Error(err)
			continue
		}
		for _, vq := range vqs {
			sc, err := promlab.Scan(vq.Selector)
			if err != nil || len(sc.Selectors) != 1 || len(sc.Functions) != 0 {
				t.Errorf("%s: %q is not a single selector (%v)", vq.Where, vq.Selector, err)
				continue
			}
			labels, ok := metrics[sc.Selectors[0].Metric]
			if !ok {
				t.Errorf("%s: metric %q is not one the exporter describes", vq.Where, sc.Selectors[0].Metric)
			} else if !slices.Contains(labels, vq.Label) {
				t.Errorf("%s: %s has no label %s", vq.Where, sc.Selectors[0].Metric, vq.Label)
			}
		}
	}
}

// checkQuery returns what is wrong with one dashboard query.
func checkQuery(q query, metrics map[string][]string) []string {
	sc, err := promlab.Scan(q.Expr)
	if err != nil {
		return []string{err.Error()}
	}
	var msgs []string
	if len(sc.Selectors) == 0 {
		msgs = append(msgs, "no metric")
	}
	for _, s := range sc.Selectors {
		if s.Metric == "" {
			msgs = append(msgs, "a selector without a metric name")
			continue
		}
		labels, ok := metrics[s.Metric]
		if !ok {
			msgs = append(msgs, fmt.Sprintf("metric %s is not one the exporter describes", s.Metric))
			continue
		}
		required := []string{"job", "instance"}
		if slices.Contains(labels, "vm") {
			required = append(required, "vm")
		}
		for _, l := range required {
			if m, ok := s.Matcher(l); !ok || m.Op != "=~" || m.Value != "$"+l {
				msgs = append(msgs, fmt.Sprintf("%s lacks the matcher %s=~\"$%s\"", s.Metric, l, l))
			}
		}
		if labels != nil {
			for _, m := range s.Matchers {
				if !slices.Contains(labels, m.Name) {
					msgs = append(msgs, fmt.Sprintf("%s has no label %s", s.Metric, m.Name))
				}
			}
		}
	}
	for _, r := range sc.Ranges {
		if r != "$__rate_interval" {
			msgs = append(msgs, fmt.Sprintf("range [%s]: use [$__rate_interval]", r))
		}
	}
	for _, o := range sc.Offsets {
		if o != "$__rate_interval" {
			msgs = append(msgs, fmt.Sprintf("offset %s: use offset $__rate_interval", o))
		}
	}
	for _, f := range sc.Functions {
		if (f == "rate" || f == "increase" || f == "irate") && len(sc.Ranges) == 0 {
			msgs = append(msgs, fmt.Sprintf("%s without a range", f))
		}
	}
	if _, err := substitute(q.Expr, checkVars); err != nil {
		msgs = append(msgs, err.Error())
	}
	return msgs
}

// TestDashboardPromQL has promtool parse every query, Grafana variables
// substituted: the promtool of every Prometheus release.
func TestDashboardPromQL(t *testing.T) {
	var exprs []string
	for _, d := range loadDashboards(t) {
		for _, q := range d.queries() {
			e, err := substitute(q.Expr, checkVars)
			if err != nil {
				t.Errorf("%s: %v", q.Where, err)
				continue
			}
			exprs = append(exprs, e)
		}
		vqs, err := d.variableQueries()
		if err != nil {
			t.Fatal(err)
		}
		for _, vq := range vqs {
			e, err := substitute(vq.Selector, checkVars)
			if err != nil {
				t.Errorf("%s: %v", vq.Where, err)
				continue
			}
			exprs = append(exprs, e)
		}
	}
	for _, r := range promlab.Releases() {
		t.Run(r.Name, func(t *testing.T) {
			promtool := r.RequirePromtool(t)
			if err := promlab.CheckExprs(t.Context(), promtool, t.TempDir(), exprs); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestCheckQueryCatches makes sure the query checks reject what they are
// meant to reject.
func TestCheckQueryCatches(t *testing.T) {
	metrics, err := promlab.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	const f = `job=~"$job", instance=~"$instance", vm=~"$vm"`
	for expr, want := range map[string]string{
		`qmp_nonexistent{` + f + `}`:                            "not one the exporter describes",
		`qmp_up{job=~"$job", instance=~"$instance"}`:            `lacks the matcher vm=~"$vm"`,
		`rate(qmp_events_total{` + f + `}[5m])`:                 "use [$__rate_interval]",
		`qmp_vm_status{` + f + `, state="running"}`:             "has no label state",
		`qmp_up{` + f + `} and on(vm) qmp_vm_status{vm=~"$vm"}`: `qmp_vm_status lacks the matcher job=~"$job"`,
		`qmp_up{` + f + `, vm=~"$vmname"}`:                      "unknown variable",
	} {
		msgs := checkQuery(query{Expr: expr}, metrics)
		if !strings.Contains(strings.Join(msgs, "\n"), want) {
			t.Errorf("checkQuery(%s) = %q, want a message with %q", expr, msgs, want)
		}
	}
	if msgs := checkQuery(query{Expr: `sum(1 - up{job=~"$job", instance=~"$instance"})`}, metrics); len(msgs) > 0 {
		t.Errorf("up without vm: %q", msgs)
	}
}
