package promlab

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestScan(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want Scanned
	}{
		{
			expr: `qmp_up`,
			want: Scanned{Selectors: []Selector{{Metric: "qmp_up"}}},
		},
		{
			expr: `sum by (vm, action) (increase(qmp_guest_panics_total{job=~"$job", instance=~"$instance",vm=~"$vm"}[$__rate_interval]))`,
			want: Scanned{
				Selectors: []Selector{{Metric: "qmp_guest_panics_total", Matchers: []Matcher{
					{"job", "=~", "$job"}, {"instance", "=~", "$instance"}, {"vm", "=~", "$vm"},
				}}},
				Functions: []string{"sum", "increase"},
				Ranges:    []string{"$__rate_interval"},
			},
		},
		{
			// Keywords, label lists, offsets, numbers and both sides of
			// binary operators.
			expr: "increase(a_total[5m]) > 0\nor\n(a_total unless on(job) a_total offset 5m) > bool 1e3\nand ignoring(vm) a_total * on(job) group_left(vm) a_total + 0x1F\n# comment with not_a_metric\n",
			want: Scanned{
				Selectors: []Selector{{Metric: "a_total"}, {Metric: "a_total"}, {Metric: "a_total"}, {Metric: "a_total"}, {Metric: "a_total"}},
				Functions: []string{"increase"},
				Ranges:    []string{"5m"},
				Offsets:   []string{"5m"},
			},
		},
		{
			expr: `(x{vm=~"$vm"} unless x{vm=~"$vm"} offset $__rate_interval) or increase(x[$__rate_interval] offset ${__interval}) or x offset -1h`,
			want: Scanned{
				Selectors: []Selector{
					{Metric: "x", Matchers: []Matcher{{"vm", "=~", "$vm"}}},
					{Metric: "x", Matchers: []Matcher{{"vm", "=~", "$vm"}}},
					{Metric: "x"},
					{Metric: "x"},
				},
				Functions: []string{"increase"},
				Ranges:    []string{"$__rate_interval"},
				Offsets:   []string{"$__rate_interval", "${__interval}", "-1h"},
			},
		},
		{
			// Strings hide what they hold; single quotes and escapes.
			expr: `label_replace(up{job!="a,b}", instance='x\'y'}, "dst", "$1 up", "src", "(.*)")`,
			want: Scanned{
				Selectors: []Selector{{Metric: "up", Matchers: []Matcher{{"job", "!=", "a,b}"}, {"instance", "=", "x'y"}}}},
				Functions: []string{"label_replace"},
			},
		},
		{
			// @ start() is a modifier, not a function call.
			expr: `{__name__=~"qmp_.*"} + sum without(vm)(x:recorded) + max_over_time(y[1h:5m] @ start())`,
			want: Scanned{
				Selectors: []Selector{
					{Matchers: []Matcher{{"__name__", "=~", "qmp_.*"}}},
					{Metric: "x:recorded"},
					{Metric: "y"},
				},
				Functions: []string{"sum", "max_over_time"},
				Ranges:    []string{"1h:5m"},
			},
		},
		{
			expr: `topk(10, sum by(vm)(rate(qmp_events_total{vm=~"$vm"}[$__rate_interval]))) * Inf - NaN`,
			want: Scanned{
				Selectors: []Selector{{Metric: "qmp_events_total", Matchers: []Matcher{{"vm", "=~", "$vm"}}}},
				Functions: []string{"topk", "sum", "rate"},
				Ranges:    []string{"$__rate_interval"},
			},
		},
		{
			// A variable in a comment, a quote in a comment, and a
			// subquery without a step.
			expr: "max_over_time(up{job=~\"$job\"}[${__range}:]) # it's [$__interval]\n",
			want: Scanned{
				Selectors: []Selector{{Metric: "up", Matchers: []Matcher{{"job", "=~", "$job"}}}},
				Functions: []string{"max_over_time"},
				Ranges:    []string{"${__range}:"},
			},
		},
	} {
		got, err := Scan(tc.expr)
		if err != nil {
			t.Errorf("Scan(%q): %v", tc.expr, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("Scan(%q) (-want +got):\n%s", tc.expr, diff)
		}
	}
}

func TestScanErrors(t *testing.T) {
	for _, expr := range []string{
		`up{job="a"`,
		`up{job="a}`,
		`up{job}`,
		`up{job=a}`,
		`rate(up[5m)`,
		`sum by (job`,
		`x offset`,
		// Scan parses: what is not PromQL is an error, even where
		// every word is in its place.
		`a_total unless on(job) group_left(vm) a_total`,
		`max_over_time(y[1h:5m]) @ start()`,
		`rate(x[$])`,
		`up{job=~$job}`,
	} {
		if got, err := Scan(expr); err == nil {
			t.Errorf("Scan(%q) = %+v, want an error", expr, got)
		} else if !strings.HasPrefix(err.Error(), "promlab: scan ") {
			t.Errorf("Scan(%q) error %q lacks the package prefix", expr, err)
		}
	}
}
