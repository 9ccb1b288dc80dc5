package config

import (
	"path/filepath"
	"unicode/utf8"
)

// checkGlob reports whether pattern is well formed in the syntax of
// filepath.Match (on Unix, where a backslash escapes the next character).
//
// filepath.Match(pattern, "") is not enough: Match stops at the first part
// of the pattern that fails to match and never looks at the rest, so
// "/run/*/x[" passes it. This scans the whole pattern instead and returns
// filepath.ErrBadPattern for anything Match could reject.
func checkGlob(pattern string) error {
	for i := 0; i < len(pattern); {
		switch pattern[i] {
		case '\\':
			if i+1 == len(pattern) {
				return filepath.ErrBadPattern
			}
			i += 2
		case '[':
			i++
			if i < len(pattern) && pattern[i] == '^' {
				i++
			}
			for n := 0; ; n++ {
				if n > 0 && i < len(pattern) && pattern[i] == ']' {
					i++
					break
				}
				var err error
				if i, err = classChar(pattern, i); err != nil {
					return err
				}
				// classChar leaves i inside the pattern.
				if pattern[i] == '-' {
					if i, err = classChar(pattern, i+1); err != nil {
						return err
					}
				}
			}
		default:
			i++
		}
	}
	return nil
}

// classChar checks one, possibly escaped, character of a [...] class at
// pattern[i:] and returns the index after it. Like filepath.Match it
// rejects a bare '-' or ']', invalid UTF-8, and a class that is not closed.
func classChar(pattern string, i int) (int, error) {
	if i >= len(pattern) || pattern[i] == '-' || pattern[i] == ']' {
		return 0, filepath.ErrBadPattern
	}
	if pattern[i] == '\\' {
		i++
		if i >= len(pattern) {
			return 0, filepath.ErrBadPattern
		}
	}
	r, size := utf8.DecodeRuneInString(pattern[i:])
	if r == utf8.RuneError && size == 1 {
		return 0, filepath.ErrBadPattern
	}
	i += size
	if i >= len(pattern) {
		return 0, filepath.ErrBadPattern
	}
	return i, nil
}
