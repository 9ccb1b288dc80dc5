//go:build !unix

package qmp

import "net"

// newIdleReader returns nil: elsewhere the connection keeps its buffer.
func newIdleReader(net.Conn) idleReader { return nil }
