package citool

import (
	"errors"
	"testing"
)

type fakeTB struct{ skipped, failed bool }

func (f *fakeTB) Helper()      {}
func (f *fakeTB) Skip(...any)  { f.skipped = true }
func (f *fakeTB) Fatal(...any) { f.failed = true }

func TestRequire(t *testing.T) {
	missing := func() (string, error) { return "", errors.New("not installed") }
	for _, tc := range []struct {
		ci         string
		skip, fail bool
	}{{"", true, false}, {"true", false, true}} {
		t.Setenv("CI", tc.ci)
		f := &fakeTB{}
		Require(f, missing)
		if f.skipped != tc.skip || f.failed != tc.fail {
			t.Errorf("CI=%q: skipped %v failed %v, want %v %v", tc.ci, f.skipped, f.failed, tc.skip, tc.fail)
		}
	}
	f := &fakeTB{}
	if p := Require(f, func() (string, error) { return "/usr/bin/x", nil }); p != "/usr/bin/x" || f.skipped || f.failed {
		t.Errorf("found tool: %q %+v", p, f)
	}
}
