package qemulab

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
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

// BinaryVersion returns the release of the QEMU FindQEMU finds, from its
// --version, for a test that must choose arguments before it starts one.
func BinaryVersion(ctx context.Context) (Version, error) {
	bin, err := FindQEMU()
	if err != nil {
		return Version{}, err
	}
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return Version{}, fmt.Errorf("qemulab: %s --version: %w", bin, err)
	}
	var v Version
	// "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)"
	if _, err := fmt.Sscanf(string(out), "QEMU emulator version %d.%d.%d", &v.Major, &v.Minor, &v.Micro); err != nil {
		return Version{}, fmt.Errorf("qemulab: no version in %q: %w", out, err)
	}
	return v, nil
}
