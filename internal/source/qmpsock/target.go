package qmpsock

import (
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
)

// Target is one QMP monitor to watch.
type Target struct {
	// Name is the VM name the operator configured; empty when none was
	// given, in which case the vm label is QEMU's own -name (from
	// query-name) or, failing that, DefaultName.
	Name string
	// Network and Address are passed to the dialer: "unix" and a socket
	// path, or "tcp" and host:port.
	Network, Address string
	// Labels are added to every series of the VM.
	Labels map[string]string
	// Discovered marks a target found by scanning globs: its series are
	// hidden once it has been unreachable for the fleet's StaleAfter (its
	// socket may linger after QEMU was killed).
	Discovered bool
}

// key identifies a target for Source.Sync and in the fleet: a change of name, address or
// labels is a different target.
func (t Target) key() string {
	var b strings.Builder
	b.WriteString(t.Name + "\x00" + t.Network + "\x00" + t.Address)
	for _, k := range slices.Sorted(maps.Keys(t.Labels)) {
		b.WriteString("\x00" + k + "=" + t.Labels[k])
	}
	return b.String()
}

// meta is how the target's VM is described to the fleet.
func (t Target) meta() fleet.Meta {
	kind := fleet.Socket
	if t.Network == "dialin" {
		kind = fleet.Listener
	}
	return fleet.Meta{Name: t.Name, DefaultName: t.DefaultName(), Labels: t.Labels, HideWhenStale: t.Discovered, Address: t.Address, Kind: kind}
}

// DefaultName is the name used when neither the configuration nor QEMU
// names the VM: the socket file's base name without its extension, or
// host:port for TCP.
func (t Target) DefaultName() string {
	if t.Network != "unix" {
		return t.Address
	}
	base := filepath.Base(t.Address)
	if ext := filepath.Ext(base); ext != "" && ext != base {
		base = strings.TrimSuffix(base, ext)
	}
	return base
}
