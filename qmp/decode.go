package qmp

import (
	"encoding/json"
	"errors"
	"time"
)

// This file holds a small, allocation-free JSON scanner for the one thing
// the reader must do per message: find the top-level members of an object
// and check that the whole message is well-formed JSON. Full decoding with
// encoding/json is left to the rare messages that need it (greetings, error
// replies, the results of Execute) and to the caller, who decodes only the
// members of Event.Data it cares about.

// maxDepth bounds nesting so that a hostile peer cannot exhaust the stack
// with "[[[[...". QEMU's deepest replies (query-qmp-schema) nest far less.
const maxDepth = 128

var errIncomplete = errors.New("unexpected end of message")

type syntaxError struct {
	msg string
	off int
}

func (e *syntaxError) Error() string { return e.msg + " at offset " + itoa(e.off) }

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// scanValue checks the JSON value that starts at b[i] (no leading space) and
// returns the index just past it.
func scanValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return i, errIncomplete
	}
	switch c := b[i]; {
	case c == '"':
		end, _, err := scanString(b, i)
		return end, err
	case c == '{':
		return scanObject(b, i, depth+1)
	case c == '[':
		return scanArray(b, i, depth+1)
	case c == '-' || (c >= '0' && c <= '9'):
		return scanNumber(b, i)
	case c == 't':
		return scanLiteral(b, i, "true")
	case c == 'f':
		return scanLiteral(b, i, "false")
	case c == 'n':
		return scanLiteral(b, i, "null")
	default:
		return i, &syntaxError{"invalid character", i}
	}
}

// scanString checks the string whose opening quote is b[i] and returns the
// index past its closing quote and whether it contains escapes.
func scanString(b []byte, i int) (end int, escaped bool, err error) {
	i++
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			return i + 1, escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(b) {
				return i, escaped, errIncomplete
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) {
					return i, escaped, errIncomplete
				}
				for _, h := range b[i+2 : i+6] {
					if !isHex(h) {
						return i, escaped, &syntaxError{"invalid \\u escape", i}
					}
				}
				i += 6
			default:
				return i, escaped, &syntaxError{"invalid escape", i}
			}
		case c < 0x20:
			return i, escaped, &syntaxError{"control character in string", i}
		default:
			i++
		}
	}
	return i, escaped, errIncomplete
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func scanNumber(b []byte, i int) (int, error) {
	start := i
	if b[i] == '-' {
		i++
	}
	if i >= len(b) {
		return i, errIncomplete
	}
	switch {
	case b[i] == '0':
		i++
	case isDigit(b[i]):
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	default:
		return i, &syntaxError{"invalid number", start}
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return i, &syntaxError{"invalid number", start}
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return i, &syntaxError{"invalid number", start}
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	return i, nil
}

func scanLiteral(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) {
		if string(b[i:]) == lit[:len(b)-i] {
			return len(b), errIncomplete
		}
		return i, &syntaxError{"invalid literal", i}
	}
	if string(b[i:i+len(lit)]) != lit {
		return i, &syntaxError{"invalid literal", i}
	}
	return i + len(lit), nil
}

func scanArray(b []byte, i, depth int) (int, error) {
	if depth > maxDepth {
		return i, &syntaxError{"nesting too deep", i}
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, nil
	}
	for {
		var err error
		if i, err = scanValue(b, i, depth); err != nil {
			return i, err
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return i, errIncomplete
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case ']':
			return i + 1, nil
		default:
			return i, &syntaxError{"expected , or ] in array", i}
		}
	}
}

func scanObject(b []byte, i, depth int) (int, error) {
	it := objectIter{b: b, i: i, depth: depth}
	for {
		if _, _, ok := it.next(); !ok {
			return it.i, it.err
		}
	}
}

// objectIter walks the members of the JSON object that starts at b[i],
// checking each value as it goes. After next returns ok=false, err is nil
// if the object was well-formed and i is just past its closing brace.
type objectIter struct {
	b     []byte
	i     int
	depth int
	state int // 0: before '{', 1: before first member, 2: after a member
	err   error
}

// next returns the raw key (between the quotes, escapes not decoded) and the
// raw value of the next member.
func (it *objectIter) next() (key, value []byte, ok bool) {
	b, i := it.b, it.i
	switch it.state {
	case 0:
		if it.depth > maxDepth {
			return it.fail(&syntaxError{"nesting too deep", i})
		}
		if i >= len(b) {
			return it.fail(errIncomplete)
		}
		if b[i] != '{' {
			return it.fail(&syntaxError{"expected object", i})
		}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == '}' {
			it.i = i + 1
			it.state = 3
			return nil, nil, false
		}
		it.state = 2
	case 2:
		i = skipSpace(b, i)
		if i >= len(b) {
			return it.fail(errIncomplete)
		}
		switch b[i] {
		case '}':
			it.i = i + 1
			it.state = 3
			return nil, nil, false
		case ',':
			i = skipSpace(b, i+1)
		default:
			return it.fail(&syntaxError{"expected , or } in object", i})
		}
	default:
		return nil, nil, false
	}
	if i >= len(b) {
		it.i = i
		return it.fail(errIncomplete)
	}
	if b[i] != '"' {
		it.i = i
		return it.fail(&syntaxError{"expected string key", i})
	}
	kend, _, err := scanString(b, i)
	if err != nil {
		it.i = kend
		return it.fail(err)
	}
	key = b[i+1 : kend-1]
	i = skipSpace(b, kend)
	if i >= len(b) {
		it.i = i
		return it.fail(errIncomplete)
	}
	if b[i] != ':' {
		it.i = i
		return it.fail(&syntaxError{"expected : after key", i})
	}
	i = skipSpace(b, i+1)
	vend, err := scanValue(b, i, it.depth)
	if err != nil {
		it.i = vend
		return it.fail(err)
	}
	it.i = vend
	return key, b[i:vend], true
}

func (it *objectIter) fail(err error) ([]byte, []byte, bool) {
	it.err = err
	it.state = 3
	return nil, nil, false
}

// message is one QMP message, split into the members the reader needs. All
// slices alias the input.
type message struct {
	event, data, timestamp []byte
	ret, err, id, greeting []byte
	eventEscaped           bool
	hasEvent, hasRet       bool
	hasErr, hasGreeting    bool
}

// parseMessage checks that b is exactly one JSON object (surrounded by
// optional white space) and fills m with its top-level members.
func parseMessage(b []byte, m *message) error {
	*m = message{}
	i := skipSpace(b, 0)
	it := objectIter{b: b, i: i, depth: 1}
	for {
		key, val, ok := it.next()
		if !ok {
			break
		}
		switch string(key) {
		case "event":
			if len(val) < 2 || val[0] != '"' {
				return &syntaxError{"event name is not a string", it.i}
			}
			m.hasEvent = true
			m.event = val[1 : len(val)-1]
			for _, c := range m.event {
				if c == '\\' {
					m.eventEscaped = true
					break
				}
			}
		case "data":
			m.data = val
		case "timestamp":
			m.timestamp = val
		case "return":
			m.hasRet = true
			m.ret = val
		case "error":
			m.hasErr = true
			m.err = val
		case "id":
			m.id = val
		case "QMP":
			m.hasGreeting = true
			m.greeting = val
		}
	}
	if it.err != nil {
		return it.err
	}
	if i = skipSpace(b, it.i); i != len(b) {
		return &syntaxError{"data after the object", i}
	}
	return nil
}

// eventName returns the event's name, taken from the table of known names
// when possible so that the common case does not allocate.
func (m *message) eventName() (string, error) {
	if !m.eventEscaped {
		if n, ok := knownEvents[string(m.event)]; ok {
			return n, nil
		}
		return string(m.event), nil
	}
	var s string
	quoted := make([]byte, 0, len(m.event)+2)
	quoted = append(append(append(quoted, '"'), m.event...), '"')
	if err := json.Unmarshal(quoted, &s); err != nil {
		return "", err
	}
	if n, ok := knownEvents[s]; ok {
		return n, nil
	}
	return s, nil
}

// parseTimestamp reads {"seconds": S, "microseconds": U}. It returns the
// zero Time for QEMU's -1/-1 (clock failure), or when the member is absent
// or malformed: a bad timestamp is not worth dropping an event for.
func parseTimestamp(b []byte) time.Time {
	if len(b) == 0 {
		return time.Time{}
	}
	it := objectIter{b: b, depth: 1}
	var sec, usec int64
	var haveSec bool
	for {
		key, val, ok := it.next()
		if !ok {
			break
		}
		switch string(key) {
		case "seconds":
			sec, ok = parseInt(val)
			haveSec = ok
		case "microseconds":
			usec, _ = parseInt(val)
		}
	}
	if it.err != nil || !haveSec || sec < 0 || usec < 0 || usec >= 1e6 {
		return time.Time{}
	}
	return time.Unix(sec, usec*1000)
}

// parseInt parses a JSON integer of at most 18 digits.
func parseInt(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && b[0] == '-' {
		neg = true
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// parseID reads an id this package sent: a non-negative JSON integer.
func parseID(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}
