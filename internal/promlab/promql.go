package promlab

import (
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// Matcher is one label matcher of a vector selector, e.g. job=~"$job".
type Matcher struct {
	Name, Op, Value string
}

// Selector is one vector selector: a metric name and its matchers. Metric
// is "" for a selector without a name ({__name__="up"}).
type Selector struct {
	Metric   string
	Matchers []Matcher
}

// Matcher returns the selector's first matcher on label name, and whether
// there is one.
func (s Selector) Matcher(name string) (Matcher, bool) {
	for _, m := range s.Matchers {
		if m.Name == name {
			return m, true
		}
	}
	return Matcher{}, false
}

// Scanned is what Scan finds in an expression. Each list is in the order a
// depth-first walk of the syntax tree meets its items: the order they are
// written in, except that an aggregation's parameter (the k of topk) comes
// after the expression it aggregates. Ranges and Offsets hold a Grafana
// variable as written, and a duration as Prometheus prints it: [90s] is
// "1m30s".
type Scanned struct {
	// Selectors are the vector selectors, range selectors included.
	Selectors []Selector
	// Functions are the functions and aggregations called.
	Functions []string
	// Ranges are the contents of every [...]: range durations ("5m",
	// "$__rate_interval") and subquery ranges ("1h:5m").
	Ranges []string
	// Offsets are the durations after every offset ("5m",
	// "$__rate_interval", "-1h").
	Offsets []string
}

// Scan parses a PromQL expression with the Prometheus parser and returns
// its vector selectors, function calls, ranges and offsets. An expression
// that does not parse is an error.
//
// Grafana variables may appear where Grafana allows them. Inside strings
// ("$vm") they are ordinary label values and are reported as written.
// Elsewhere ([$__rate_interval], offset ${__interval}) Scan parses the
// expression with a placeholder duration in their place, and reports the
// variable as written in Ranges and Offsets.
func Scan(expr string) (Scanned, error) {
	src, vars := substituteVars(expr)
	// NewParser with no options: the stable language, as Prometheus
	// accepts it without feature flags.
	root, err := parser.NewParser(parser.Options{}).ParseExpr(src)
	if err != nil {
		if src != expr {
			// The parser's positions are in src.
			return Scanned{}, fmt.Errorf("promlab: scan %q (Grafana variables replaced: %q): %w", expr, src, err)
		}
		return Scanned{}, fmt.Errorf("promlab: scan %q: %w", expr, err)
	}
	var out Scanned
	parser.Inspect(root, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			out.Selectors = append(out.Selectors, selector(n))
			out.addOffset(vars, n.OriginalOffset, n.OriginalOffsetExpr)
		case *parser.MatrixSelector:
			out.Ranges = append(out.Ranges, vars.text(n.Range, n.RangeExpr))
		case *parser.SubqueryExpr:
			r := vars.text(n.Range, n.RangeExpr) + ":"
			if n.Step != 0 || n.StepExpr != nil {
				r += vars.text(n.Step, n.StepExpr)
			}
			out.Ranges = append(out.Ranges, r)
			out.addOffset(vars, n.OriginalOffset, n.OriginalOffsetExpr)
		case *parser.Call:
			out.Functions = append(out.Functions, n.Func.Name)
		case *parser.AggregateExpr:
			out.Functions = append(out.Functions, n.Op.String())
		}
		return nil
	})
	return out, nil
}

// selector converts the parser's vector selector. The parser adds a
// __name__ matcher for a metric name written outside the braces; that one
// is the Metric, not a matcher of ours.
func selector(vs *parser.VectorSelector) Selector {
	s := Selector{Metric: vs.Name}
	named := false
	for _, m := range vs.LabelMatchers {
		if !named && vs.Name != "" && m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual && m.Value == vs.Name {
			named = true
			continue
		}
		s.Matchers = append(s.Matchers, Matcher{Name: m.Name, Op: m.Type.String(), Value: m.Value})
	}
	return s
}

func (s *Scanned) addOffset(vars grafanaVars, d time.Duration, e *parser.DurationExpr) {
	if d != 0 || e != nil {
		s.Offsets = append(s.Offsets, vars.text(d, e))
	}
}

// grafanaVars maps each placeholder duration Scan put in the expression to
// the Grafana variable it stands for, as written.
type grafanaVars map[time.Duration]string

// placeholderBase is 9999 days; the placeholders are 9999 days and 1, 2, 3...
// seconds: no range or offset a dashboard means, and whole seconds, which
// the parser (it reads durations as float seconds) reads back exactly.
const placeholderBase = 9999 * 24 * time.Hour

// text returns a range, step or offset as the expression wrote it: the
// Grafana variable a placeholder stands for, or the duration.
func (v grafanaVars) text(d time.Duration, e *parser.DurationExpr) string {
	if e != nil {
		// A duration expression ([5m * 2]): print it with the
		// variables put back.
		s := e.String()
		for p, name := range v {
			s = strings.ReplaceAll(s, model.Duration(p).String(), name)
		}
		return s
	}
	sign := ""
	if d < 0 {
		sign, d = "-", -d
	}
	if name, ok := v[d]; ok {
		return sign + name
	}
	return sign + model.Duration(d).String()
}

// substituteVars replaces every Grafana variable outside strings and
// comments ($__rate_interval, ${__interval}) with a placeholder duration,
// one for each variable, and returns the result and the placeholders.
// Variables inside strings are label values PromQL already accepts.
func substituteVars(expr string) (string, grafanaVars) {
	if !strings.Contains(expr, "$") {
		return expr, nil
	}
	vars := grafanaVars{}
	placeholder := map[string]string{} // variable as written -> duration
	var b strings.Builder
	for i := 0; i < len(expr); {
		switch c := expr[i]; {
		case c == '"' || c == '\'' || c == '`':
			n := quotedLen(expr[i:])
			b.WriteString(expr[i : i+n])
			i += n
		case c == '#':
			n := strings.IndexByte(expr[i:], '\n')
			if n < 0 {
				n = len(expr) - i
			}
			b.WriteString(expr[i : i+n])
			i += n
		case c == '$':
			n := varLen(expr[i:])
			if n == 0 {
				// A lone $: leave it for the parser to reject.
				b.WriteByte(c)
				i++
				continue
			}
			name := expr[i : i+n]
			p, ok := placeholder[name]
			if !ok {
				d := placeholderBase + time.Duration(len(placeholder)+1)*time.Second
				vars[d] = name
				p = model.Duration(d).String()
				placeholder[name] = p
			}
			b.WriteString(p)
			i += n
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), vars
}

// quotedLen returns the length of the string literal s starts with, its
// quotes included, or len(s) if it is not terminated (the parser will say
// so). Backslash escapes apply in "..." and '...', not in `...`.
func quotedLen(s string) int {
	q := s[0]
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if q != '`' {
				i++
			}
		case q:
			return i + 1
		}
	}
	return len(s)
}

// varLen returns the length of the Grafana variable s starts with ($name
// or ${name}), or 0 if s does not start with one.
func varLen(s string) int {
	word := func(s string) int {
		n := 0
		for n < len(s) && (s[n] == '_' || 'a' <= s[n] && s[n] <= 'z' || 'A' <= s[n] && s[n] <= 'Z' || n > 0 && '0' <= s[n] && s[n] <= '9') {
			n++
		}
		return n
	}
	if strings.HasPrefix(s, "${") {
		n := word(s[2:])
		if n == 0 || len(s) < 3+n || s[2+n] != '}' {
			return 0
		}
		return n + 3
	}
	if n := word(s[1:]); n > 0 {
		return 1 + n
	}
	return 0
}
