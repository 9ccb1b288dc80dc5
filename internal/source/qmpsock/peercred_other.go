//go:build !linux

package qmpsock

import (
	"errors"
	"net"
)

type peerCredentials struct {
	uid uint32
	pid int32
}

func peerCred(net.Conn) (peerCredentials, error) {
	return peerCredentials{}, errors.New("peer credentials are only read on Linux")
}
