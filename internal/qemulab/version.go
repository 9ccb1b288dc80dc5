package qemulab

import (
	"encoding/json"
	"fmt"
)

// Version is a QEMU release, as its QMP greeting gives it. The end-to-end
// tests run on QEMU 7.2 and 10.0 (see CONTRIBUTING.md); a test whose
// expectation changed between releases asks its VM's Version which one
// applies, rather than accepting either answer from both.
type Version struct {
	Major, Minor, Micro int
}

// AtLeast reports whether v is major.minor or a later release.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// Version returns the QEMU release the control monitor's greeting
// announced.
func (v *VM) Version() Version { return v.version }

// greetingVersion reads {"QMP": {"version": {"qemu": {...}}}}.
func greetingVersion(greeting json.RawMessage) (Version, error) {
	var g struct {
		QMP struct {
			Version struct {
				QEMU *Version `json:"qemu"`
			} `json:"version"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(greeting, &g); err != nil || g.QMP.Version.QEMU == nil {
		return Version{}, fmt.Errorf("qemulab: no QEMU version in the greeting %s (%v)", greeting, err)
	}
	return *g.QMP.Version.QEMU, nil
}
