package promlab

import (
	"fmt"
	"strconv"
	"strings"
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

// Scanned is what Scan finds in an expression.
type Scanned struct {
	// Selectors are the vector selectors, in order.
	Selectors []Selector
	// Functions are the functions and aggregations called, in order.
	Functions []string
	// Ranges are the contents of every [...]: range durations ("5m",
	// "$__rate_interval") and subquery ranges ("1h:5m").
	Ranges []string
	// Offsets are the durations after every offset ("5m",
	// "$__rate_interval").
	Offsets []string
}

// keywords are PromQL words that are neither metrics nor functions.
var keywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true, "inf": true, "nan": true,
}

// labelLists are the keywords followed by a parenthesized list of label
// names (optional after group_left and group_right).
var labelLists = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true,
}

// Scan finds the vector selectors, function calls and ranges of a PromQL
// expression. It is a lexer, not a parser: it does not check that the
// expression is valid (CheckExprs does, with promtool), but it finds every
// metric name and matcher a valid expression uses. Grafana variables may
// appear where Grafana allows them: inside strings ("$vm") and ranges
// ([$__rate_interval]).
func Scan(expr string) (Scanned, error) {
	var out Scanned
	s := &scanner{src: expr}
	for {
		s.skipSpace()
		if s.eof() {
			return out, nil
		}
		c := s.peek()
		switch {
		case c == '"' || c == '\'' || c == '`':
			if _, err := s.str(); err != nil {
				return out, err
			}
		case c == '{':
			ms, err := s.matchers()
			if err != nil {
				return out, err
			}
			out.Selectors = append(out.Selectors, Selector{Matchers: ms})
		case c == '[':
			end := strings.IndexByte(s.src[s.pos:], ']')
			if end < 0 {
				return out, s.errorf("unterminated [")
			}
			out.Ranges = append(out.Ranges, strings.TrimSpace(s.src[s.pos+1:s.pos+end]))
			s.pos += end + 1
		case isIdentStart(c):
			word := s.ident()
			s.skipSpace()
			next := byte(0)
			if !s.eof() {
				next = s.peek()
			}
			switch {
			case labelLists[word]:
				if next == '(' {
					end := strings.IndexByte(s.src[s.pos:], ')')
					if end < 0 {
						return out, s.errorf("unterminated label list after %s", word)
					}
					s.pos += end + 1
				}
			case word == "offset":
				off, err := s.offset()
				if err != nil {
					return out, err
				}
				out.Offsets = append(out.Offsets, off)
			case keywords[strings.ToLower(word)]:
			case next == '(' || s.aggregationModifier():
				// A call, or an aggregation with its by/without
				// clause first: sum by (vm) (x).
				out.Functions = append(out.Functions, word)
			default:
				sel := Selector{Metric: word}
				if next == '{' {
					ms, err := s.matchers()
					if err != nil {
						return out, err
					}
					sel.Matchers = ms
				}
				out.Selectors = append(out.Selectors, sel)
			}
		case isDigit(c) || (c == '.' && s.pos+1 < len(s.src) && isDigit(s.src[s.pos+1])):
			// A number or a duration (offset 5m, 1e3, 0x1f).
			for !s.eof() && (isIdentChar(s.peek()) || s.peek() == '.') {
				s.pos++
			}
		case c == '#':
			if nl := strings.IndexByte(s.src[s.pos:], '\n'); nl >= 0 {
				s.pos += nl + 1
			} else {
				s.pos = len(s.src)
			}
		default:
			s.pos++ // operators, parentheses, commas
		}
	}
}

// offset reads the duration after offset: a number with units (5m, -1h),
// or a Grafana variable ($__rate_interval, ${__interval}).
func (s *scanner) offset() (string, error) {
	start := s.pos
	if !s.eof() && s.peek() == '-' {
		s.pos++
	}
	switch {
	case strings.HasPrefix(s.src[s.pos:], "${"):
		end := strings.IndexByte(s.src[s.pos:], '}')
		if end < 0 {
			return "", s.errorf("unterminated ${")
		}
		s.pos += end + 1
	case !s.eof() && s.peek() == '$':
		s.pos++
		s.ident()
	default:
		for !s.eof() && isIdentChar(s.peek()) {
			s.pos++
		}
	}
	if s.pos == start {
		return "", s.errorf("duration expected after offset")
	}
	return s.src[start:s.pos], nil
}

// aggregationModifier reports whether the next word is by or without.
func (s *scanner) aggregationModifier() bool {
	save := s.pos
	defer func() { s.pos = save }()
	if s.eof() || !isIdentStart(s.peek()) {
		return false
	}
	w := s.ident()
	return w == "by" || w == "without"
}

type scanner struct {
	src string
	pos int
}

func (s *scanner) eof() bool  { return s.pos >= len(s.src) }
func (s *scanner) peek() byte { return s.src[s.pos] }

func (s *scanner) errorf(format string, args ...any) error {
	return fmt.Errorf("promlab: scan %q at offset %d: %s", s.src, s.pos, fmt.Sprintf(format, args...))
}

func (s *scanner) skipSpace() {
	for !s.eof() && strings.IndexByte(" \t\r\n", s.peek()) >= 0 {
		s.pos++
	}
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isIdentChar(c byte) bool { return isIdentStart(c) || isDigit(c) }

func (s *scanner) ident() string {
	start := s.pos
	for !s.eof() && isIdentChar(s.peek()) {
		s.pos++
	}
	return s.src[start:s.pos]
}

// str reads a string literal and returns its value.
func (s *scanner) str() (string, error) {
	q := s.peek()
	start := s.pos
	s.pos++
	for !s.eof() {
		c := s.peek()
		if c == '\\' && q != '`' {
			s.pos += 2
			continue
		}
		s.pos++
		if c == q {
			lit := s.src[start:s.pos]
			if q == '\'' {
				// Go has no single-quoted strings: requote.
				lit = `"` + strings.ReplaceAll(strings.ReplaceAll(lit[1:len(lit)-1], `\'`, `'`), `"`, `\"`) + `"`
			}
			v, err := strconv.Unquote(lit)
			if err != nil {
				return "", s.errorf("bad string %s: %v", s.src[start:s.pos], err)
			}
			return v, nil
		}
	}
	return "", s.errorf("unterminated string")
}

// matchers reads {name op "value", ...}.
func (s *scanner) matchers() ([]Matcher, error) {
	s.pos++ // {
	var out []Matcher
	for {
		s.skipSpace()
		if s.eof() {
			return nil, s.errorf("unterminated {")
		}
		if s.peek() == '}' {
			s.pos++
			return out, nil
		}
		if !isIdentStart(s.peek()) {
			return nil, s.errorf("label name expected")
		}
		m := Matcher{Name: s.ident()}
		s.skipSpace()
		for _, op := range []string{"=~", "!~", "!=", "="} {
			if strings.HasPrefix(s.src[s.pos:], op) {
				m.Op = op
				s.pos += len(op)
				break
			}
		}
		if m.Op == "" {
			return nil, s.errorf("matcher operator expected after %s", m.Name)
		}
		s.skipSpace()
		if s.eof() || strings.IndexByte("\"'`", s.peek()) < 0 {
			return nil, s.errorf("string expected after %s%s", m.Name, m.Op)
		}
		v, err := s.str()
		if err != nil {
			return nil, err
		}
		m.Value = v
		out = append(out, m)
		s.skipSpace()
		if !s.eof() && s.peek() == ',' {
			s.pos++
		}
	}
}
