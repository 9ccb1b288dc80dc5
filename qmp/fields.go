package qmp

import (
	"encoding/json"
	"errors"
)

// MaxFields is the number of members Fields keeps; QMP event data has far
// fewer. Members beyond it are checked but not kept.
const MaxFields = 24

// Fields holds the top-level members of a JSON object (typically
// Event.Data) as raw bytes, so that a handler can read the few members it
// needs without decoding the rest and without allocating. The slices alias
// the parsed input and are valid as long as it is.
type Fields struct {
	n    int
	keys [MaxFields][]byte
	vals [MaxFields][]byte
}

// ErrNotObject is returned by ParseFields for input that is not a JSON
// object.
var ErrNotObject = errors.New("qmp: event data is not a JSON object")

// ParseFields splits data, a JSON object, into f. It returns an error for
// anything that is not a well-formed object; f then holds what was read
// before the problem.
func ParseFields(data []byte, f *Fields) error {
	f.n = 0
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return ErrNotObject
	}
	it := objectIter{b: data, i: i, depth: 1}
	for {
		key, val, ok := it.next()
		if !ok {
			break
		}
		if f.n < MaxFields {
			f.keys[f.n], f.vals[f.n] = key, val
			f.n++
		}
	}
	if it.err != nil {
		return it.err
	}
	if skipSpace(data, it.i) != len(data) {
		return &syntaxError{"data after the object", it.i}
	}
	return nil
}

// Len returns the number of members kept.
func (f *Fields) Len() int { return f.n }

// Raw returns the raw JSON value of member key, or nil if there is none.
func (f *Fields) Raw(key string) []byte {
	for i := 0; i < f.n; i++ {
		if string(f.keys[i]) == key {
			return f.vals[i]
		}
	}
	return nil
}

// Has reports whether member key is present.
func (f *Fields) Has(key string) bool { return f.Raw(key) != nil }

// StringBytes returns the contents of string member key without its
// quotes, and whether it is a string. Escape sequences are decoded, which
// allocates; plain strings (all that QEMU sends in practice for ids, names
// and enums) come back as a slice of the input.
func (f *Fields) StringBytes(key string) ([]byte, bool) {
	return RawString(f.Raw(key))
}

// String is StringBytes converted to a string (this allocates).
func (f *Fields) String(key string) (string, bool) {
	b, ok := f.StringBytes(key)
	return string(b), ok
}

// Int returns integer member key.
func (f *Fields) Int(key string) (int64, bool) {
	return parseInt(f.Raw(key))
}

// Uint returns non-negative integer member key.
func (f *Fields) Uint(key string) (uint64, bool) {
	return parseID(f.Raw(key))
}

// Bool returns boolean member key.
func (f *Fields) Bool(key string) (value, ok bool) {
	switch string(f.Raw(key)) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

// RawString returns the contents of the raw JSON string v, decoding
// escapes only when there are any.
func RawString(v []byte) ([]byte, bool) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return nil, false
	}
	inner := v[1 : len(v)-1]
	for _, c := range inner {
		if c == '\\' {
			var s string
			if json.Unmarshal(v, &s) != nil {
				return nil, false
			}
			return []byte(s), true
		}
	}
	return inner, true
}
