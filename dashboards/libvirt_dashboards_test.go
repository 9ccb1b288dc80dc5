package dashboards

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/collector"
	"github.com/qmp-exporter/qmp_exporter/internal/promlab"
)

// What the dashboards show for a libvirt domain seen through the
// read-only socket: TestDashboardLibvirtSpec checks these lists against
// the dashboards and collector.Metrics, and TestLibvirtAlertsAndDashboards
// against a real libvirtd, exporter and Prometheus.

const (
	fleetJSON = "fleet-overview.json"
	vmJSON    = "virtual-machine.json"
)

// queryKey names one query of a dashboard: file, panel title (or
// "annotation NAME") and refId ("" for an annotation).
type queryKey struct{ File, Panel, RefID string }

func (q query) key() queryKey { return queryKey{q.File, q.Panel, q.RefID} }

func (k queryKey) String() string {
	if k.RefID == "" {
		return fmt.Sprintf("%s %q", k.File, k.Panel)
	}
	return fmt.Sprintf("%s panel %q target %s", k.File, k.Panel, k.RefID)
}

// emptyForLibvirt says why a query returns no series for a libvirt
// domain. QMPOnly names a metric of the query that libvirt domains do not
// have (collector.Metrics: Libvirt false, the README's "—"); Why is any
// other reason.
type emptyForLibvirt struct{ QMPOnly, Why string }

func (e emptyForLibvirt) String() string {
	if e.QMPOnly != "" {
		return e.QMPOnly + " is QMP-only"
	}
	return e.Why
}

// libvirtEmpty are the queries that return no series for any libvirt
// domain, and why. Every other query must return series for some domain
// of the test; one listed here must return none.
var libvirtEmpty = map[queryKey]emptyForLibvirt{
	{vmJSON, "QMP connection attempts", "A"}:       {QMPOnly: "qmp_connection_attempts_total"},
	{vmJSON, "QMP connection attempts", "B"}:       {QMPOnly: "qmp_connection_failures_total"},
	{fleetJSON, "Images marked corrupt", "A"}:      {QMPOnly: "qmp_block_image_corruptions_total"},
	{vmJSON, "Images marked corrupt", "A"}:         {QMPOnly: "qmp_block_image_corruptions_total"},
	{fleetJSON, "Migrations ended by result", "A"}: {QMPOnly: "qmp_migrations_total"},
	{fleetJSON, "Console sessions opened", "B"}:    {QMPOnly: "qmp_spice_sessions_total"},
	{vmJSON, "Job I/O errors", "A"}:                {QMPOnly: "qmp_block_job_errors_total"},

	{vmJSON, "Jobs by type and status", "A"}: {QMPOnly: "qmp_block_jobs"},
	{vmJSON, "Job progress", "A"}:            {QMPOnly: "qmp_block_job_progress_bytes"},
	{vmJSON, "Job progress", "B"}:            {QMPOnly: "qmp_block_job_length_bytes"},
}

// libvirtShow is a query that must show what happened to a domain: with
// vm set to VM, a value above 0 at some instant, on a series with Labels.
type libvirtShow struct {
	queryKey
	VM     string
	Labels map[string]string
}

// libvirtShows are the queries that must show the test's events, not only
// return series (which a counter at 0 does).
var libvirtShows = []libvirtShow{
	{queryKey{fleetJSON, "VMs stopped by a guest panic", "A"}, libvirtPanicVM, nil},
	{queryKey{fleetJSON, "VMs paused on I/O error", "A"}, libvirtDiskVM, nil},
	{queryKey{fleetJSON, "VMs by run state", "A"}, libvirtWatchdogVM, map[string]string{"status": "watchdog"}},
	{queryKey{fleetJSON, "Guest panics", "A"}, libvirtPanicVM, map[string]string{"action": "pause"}},
	{queryKey{fleetJSON, "Watchdog firings by action", "A"}, libvirtWatchdogVM, map[string]string{"action": "pause"}},
	{queryKey{fleetJSON, "Resets", "A"}, libvirtDevicesVM, nil},
	{queryKey{fleetJSON, "Block I/O errors by action", "A"}, libvirtDiskVM, map[string]string{"action": "stop"}},
	{queryKey{fleetJSON, "Console clients", "A"}, libvirtDevicesVM, nil},
	{queryKey{fleetJSON, "Console clients", "B"}, libvirtDevicesVM, nil},
	{queryKey{fleetJSON, "Guest memory after ballooning", "A"}, libvirtDevicesVM, nil},

	{queryKey{vmJSON, "I/O status", "A"}, libvirtDiskVM, map[string]string{"device": "ide0-0-0"}},
	{queryKey{vmJSON, "Migration status", "A"}, libvirtDevicesVM, map[string]string{"status": "completed"}},
	{queryKey{vmJSON, "Migration progress", "A"}, libvirtDevicesVM, nil},
	{queryKey{vmJSON, "Migration time", "B"}, libvirtDevicesVM, nil},
	{queryKey{vmJSON, "Run state", "A"}, libvirtPanicVM, map[string]string{"status": "guest-panicked"}},
	{queryKey{vmJSON, "Run state", "A"}, libvirtWatchdogVM, map[string]string{"status": "watchdog"}},
	{queryKey{vmJSON, "Run state", "A"}, libvirtDiskVM, map[string]string{"status": "io-error"}},
	{queryKey{vmJSON, "QMP session", "A"}, libvirtDevicesVM, nil},
	{queryKey{vmJSON, "QEMU version", "A"}, libvirtDevicesVM, nil},
	{queryKey{vmJSON, "Events by type", "A"}, libvirtDevicesVM, map[string]string{"event": "DEVICE_TRAY_MOVED"}},
	{queryKey{vmJSON, "Panics, watchdog firings and resets", "A"}, libvirtPanicVM, map[string]string{"action": "pause"}},
	{queryKey{vmJSON, "Panics, watchdog firings and resets", "B"}, libvirtWatchdogVM, map[string]string{"action": "pause"}},
	{queryKey{vmJSON, "Panics, watchdog firings and resets", "C"}, libvirtDevicesVM, nil},
	{queryKey{vmJSON, "Block I/O errors", "A"}, libvirtDiskVM, map[string]string{"device": "ide0-0-0", "action": "stop"}},
	{queryKey{vmJSON, "Balloon", "A"}, libvirtDevicesVM, nil},
	{queryKey{vmJSON, "Console clients", "A"}, libvirtDevicesVM, nil},
	{queryKey{vmJSON, "Console clients", "B"}, libvirtDevicesVM, nil},
	{queryKey{vmJSON, "annotation Guest panics", ""}, libvirtPanicVM, nil},
	{queryKey{vmJSON, "annotation Watchdog firings", ""}, libvirtWatchdogVM, nil},
	{queryKey{vmJSON, "annotation Block I/O errors", ""}, libvirtDiskVM, nil},
}

// libvirtAbsent returns the metrics that libvirt domains do not have,
// from their one definition (collector.Metrics): per-VM metrics (with a
// vm label) whose Libvirt is false.
func libvirtAbsent() map[string]bool {
	out := map[string]bool{}
	for _, m := range collector.Metrics() {
		if !m.Libvirt && slices.Contains(m.Labels, "vm") {
			out[m.Name] = true
		}
	}
	return out
}

// TestDashboardLibvirtSpec checks libvirtEmpty and libvirtShows against
// the dashboards and the metrics' definition: each names an existing
// query; a QMP-only reason names a metric the query reads that libvirt
// domains lack; and a query that reads only such metrics is listed as
// empty, for that reason. Whether the listed queries are in fact empty,
// and the others not, TestLibvirtAlertsAndDashboards checks.
func TestDashboardLibvirtSpec(t *testing.T) {
	absent := libvirtAbsent()
	if len(absent) == 0 {
		t.Fatal("collector.Metrics says libvirt domains have every metric; the QMP-only checks below would check nothing")
	}
	queries := map[queryKey]query{}
	for _, d := range loadDashboards(t) {
		for _, q := range d.queries() {
			if _, dup := queries[q.key()]; dup {
				t.Errorf("%s: two queries of that name; the lists below could not tell them apart", q.key())
			}
			queries[q.key()] = q
		}
	}
	for k, e := range libvirtEmpty {
		q, ok := queries[k]
		if !ok {
			t.Errorf("libvirtEmpty: %s: no such query", k)
			continue
		}
		if (e.QMPOnly == "") == (e.Why == "") {
			t.Errorf("libvirtEmpty: %s: give either QMPOnly or Why", k)
		}
		if e.QMPOnly != "" {
			if !absent[e.QMPOnly] {
				t.Errorf("libvirtEmpty: %s: %s is not a metric libvirt domains lack (collector.Metrics)", k, e.QMPOnly)
			}
			if !slices.Contains(selectedMetrics(t, q), e.QMPOnly) {
				t.Errorf("libvirtEmpty: %s does not read %s\n    expr: %s", k, e.QMPOnly, q.Expr)
			}
		}
	}
	for k, q := range queries {
		ms := selectedMetrics(t, q)
		onlyAbsent := len(ms) > 0
		for _, m := range ms {
			onlyAbsent = onlyAbsent && absent[m]
		}
		if e := libvirtEmpty[k]; onlyAbsent && e.QMPOnly == "" {
			t.Errorf("%s reads only QMP-only metrics %v: list it in libvirtEmpty with QMPOnly", k, ms)
		}
	}
	for _, s := range libvirtShows {
		if _, ok := queries[s.queryKey]; !ok {
			t.Errorf("libvirtShows: %s: no such query", s.queryKey)
		}
		if e, ok := libvirtEmpty[s.queryKey]; ok {
			t.Errorf("libvirtShows: %s is also in libvirtEmpty (%s)", s.queryKey, e)
		}
		if !slices.Contains(libvirtVMs, s.VM) {
			t.Errorf("libvirtShows: %s: %q is not a domain of the test", s.queryKey, s.VM)
		}
	}
}

// selectedMetrics returns the metric names q selects.
func selectedMetrics(t *testing.T, q query) []string {
	t.Helper()
	sc, err := promlab.Scan(q.Expr)
	if err != nil {
		t.Fatalf("%s: %v", q.Where, err)
	}
	var out []string
	for _, s := range sc.Selectors {
		if !slices.Contains(out, s.Metric) {
			out = append(out, s.Metric)
		}
	}
	return out
}

// checkLibvirtDashboards checks the dashboards on prom, which has scraped
// the libvirt lab since since: each variable lists the lab's job,
// instance and every domain; each query runs with vm set to each domain
// (a range query over [since, now] with a step of 1s, or an instant
// query); a query returns series for some domain exactly when it is not
// in libvirtEmpty; and each of libvirtShows shows its event.
func checkLibvirtDashboards(ctx context.Context, t *testing.T, prom *promlab.Server, lab *libvirtLab, since time.Time) {
	// Two scrapes of every domain first: rate and increase need two
	// samples.
	wctx, c := context.WithTimeout(ctx, 30*time.Second)
	_, err := prom.WaitQuery(wctx, `count_over_time(qmp_up{job="qmp"}[1m])`, func(res []promlab.Sample) bool {
		n := 0
		for _, s := range res {
			if slices.Contains(libvirtVMs, s.Labels["vm"]) && s.Value >= 2 {
				n++
			}
		}
		return n == len(libvirtVMs)
	})
	c()
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"job": "qmp", "instance": lab.exp.Addr, "__rate_interval": "1m"}
	wantValues := map[string][]string{"job": {"qmp"}, "instance": {lab.exp.Addr}, "vm": libvirtVMs}
	// The range ends a step after now, so that its last instant is not
	// older than the newest sample.
	until := time.Now().Add(time.Second)

	ds := loadDashboards(t)
	for _, d := range ds {
		vqs, err := d.variableQueries()
		if err != nil {
			t.Fatal(err)
		}
		for _, vq := range vqs {
			expr, err := substitute(vq.Selector, vars)
			if err != nil {
				t.Errorf("%s: %v", vq.Where, err)
				continue
			}
			res, err := prom.Query(ctx, expr)
			if err != nil {
				t.Errorf("%s: %v", vq.Where, err)
				continue
			}
			got := map[string]bool{}
			for _, s := range res {
				got[s.Labels[vq.Label]] = true
			}
			want, ok := wantValues[vq.Label]
			if !ok {
				t.Errorf("%s: a variable of label %s, which this test does not know", vq.Where, vq.Label)
			}
			for _, v := range want {
				if !got[v] {
					t.Errorf("%s: %s does not list %s %q:\n%s", vq.Where, expr, vq.Label, v, promlab.FormatSamples(res))
				}
			}
		}
	}

	// results[key][vm] is what the query returned with vm set to vm.
	results := map[queryKey]map[string][]promlab.Series{}
	n := 0
	for _, d := range ds {
		for _, q := range d.queries() {
			results[q.key()] = map[string][]promlab.Series{}
			for _, vm := range libvirtVMs {
				vars["vm"] = vm
				expr, err := substitute(q.Expr, vars)
				if err != nil {
					t.Errorf("%s: %v", q.Where, err)
					continue
				}
				n++
				res, err := runQuery(ctx, prom, q.Instant, expr, since, until)
				if err != nil {
					t.Errorf("%s, vm %s: %v\n    expr: %s", q.Where, vm, err, expr)
					continue
				}
				results[q.key()][vm] = res
			}
		}
	}
	t.Logf("%d queries run, %d for each of the domains %v", n, n/len(libvirtVMs), libvirtVMs)

	for k, byVM := range results {
		var with []string
		for _, vm := range libvirtVMs {
			if len(byVM[vm]) > 0 {
				with = append(with, vm)
			}
		}
		e, listed := libvirtEmpty[k]
		switch {
		case listed && len(with) > 0:
			t.Errorf("%s returned series for %v, but libvirtEmpty says it cannot (%s): correct the list", k, with, e)
		case !listed && len(with) == 0:
			t.Errorf("%s returned no series for any libvirt domain: make the test produce its data, fix the query, or list it in libvirtEmpty with the reason", k)
		}
	}
	for _, s := range libvirtShows {
		if !shows(results[s.queryKey][s.VM], s.Labels) {
			t.Errorf("%s, vm %s: no value above 0 on a series with %v; got:\n%s", s.queryKey, s.VM, s.Labels, formatSeries(results[s.queryKey][s.VM]))
		}
	}
}

// runQuery runs expr as Grafana would for a panel: an instant query at
// until, whose samples it returns as series of one point, or a range
// query from since to until.
func runQuery(ctx context.Context, prom *promlab.Server, instant bool, expr string, since, until time.Time) ([]promlab.Series, error) {
	if !instant {
		return prom.QueryRange(ctx, expr, since, until, time.Second)
	}
	res, err := prom.Query(ctx, expr)
	if err != nil {
		return nil, err
	}
	out := make([]promlab.Series, 0, len(res))
	for _, s := range res {
		out = append(out, promlab.Series{Labels: s.Labels, Points: []promlab.Point{{Time: until, Value: s.Value}}})
	}
	return out, nil
}

// shows reports whether a series of res with labels has a value above 0.
func shows(res []promlab.Series, labels map[string]string) bool {
	for _, s := range res {
		match := true
		for k, v := range labels {
			match = match && s.Labels[k] == v
		}
		for _, p := range s.Points {
			if match && p.Value > 0 {
				return true
			}
		}
	}
	return false
}

// formatSeries describes res for a message: each series' labels and the
// range of its values.
func formatSeries(res []promlab.Series) string {
	if len(res) == 0 {
		return "    (no series)"
	}
	out := ""
	for _, s := range res {
		if len(s.Points) == 0 {
			out += fmt.Sprintf("    %v: no points\n", s.Labels)
			continue
		}
		lo, hi := s.Points[0].Value, s.Points[0].Value
		for _, p := range s.Points {
			lo, hi = min(lo, p.Value), max(hi, p.Value)
		}
		out += fmt.Sprintf("    %v: %d points, %g to %g\n", s.Labels, len(s.Points), lo, hi)
	}
	return out
}
