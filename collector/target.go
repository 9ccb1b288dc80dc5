// Package collector keeps one live QMP session per virtual machine, folds
// the events each VM emits into in-memory state, and exposes that state as
// Prometheus metrics. A scrape only reads the state: it never touches a
// socket.
package collector

import (
	"path/filepath"
	"strings"
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
}

// key identifies a target for Manager.Sync: a change of name or address is
// a different target.
func (t Target) key() string { return t.Name + "\x00" + t.Network + "\x00" + t.Address }

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
