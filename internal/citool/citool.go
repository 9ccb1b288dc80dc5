// Package citool finds the external programs end-to-end tests need. A
// missing program skips the test on a developer's machine and fails it
// when the environment variable CI is "true": CI must never pass by
// skipping the tests that matter.
package citool

import "os"

// TB is the part of testing.TB that Require uses.
type TB interface {
	Helper()
	Skip(args ...any)
	Fatal(args ...any)
}

// Require returns what find returns, or skips (fails under CI=true) the
// test with find's error.
func Require(t TB, find func() (string, error)) string {
	t.Helper()
	p, err := find()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
			return ""
		}
		t.Skip(err)
		return ""
	}
	return p
}
