//go:build linux

package qmpsock

import (
	"errors"
	"net"
	"syscall"
)

// peerCredentials are the process credentials of a unix socket's peer.
type peerCredentials struct {
	uid uint32
	pid int32
}

// peerCred reads the peer's credentials with SO_PEERCRED.
func peerCred(c net.Conn) (peerCredentials, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return peerCredentials{}, errors.New("not a unix socket: no peer credentials")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peerCredentials{}, err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return peerCredentials{}, err
	}
	if credErr != nil {
		return peerCredentials{}, credErr
	}
	return peerCredentials{uid: cred.Uid, pid: cred.Pid}, nil
}
