package config

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
)

// maxUnixPathLen is the longest unix socket path the kernel accepts:
// sun_path in struct sockaddr_un holds 108 bytes, including the
// terminating NUL.
const maxUnixPathLen = 107

// ParseSocket parses a QMP socket as written in the configuration file or
// given to the --qmp.socket flag, and returns the network and address to
// dial.
//
// A socket of the form tcp:HOST:PORT yields ("tcp", "HOST:PORT"); the port
// must be a number from 1 to 65535 (leading zeros are dropped), and an IPv6
// host is written in brackets (tcp:[::1]:4444). Anything else is a unix socket path, absolute or
// relative, with an optional unix: prefix that is stripped; it yields
// ("unix", path). A path must not contain a NUL byte and must fit in
// sun_path (at most 107 bytes).
//
// The error names the socket, so it can be shown to the user as it is.
func ParseSocket(s string) (network, address string, err error) {
	if s == "" {
		return "", "", errors.New("socket is empty")
	}
	if hostport, ok := strings.CutPrefix(s, "tcp:"); ok {
		address, err := parseTCP(hostport)
		if err != nil {
			return "", "", fmt.Errorf("invalid socket %q: %w", s, err)
		}
		return "tcp", address, nil
	}
	path := strings.TrimPrefix(s, "unix:")
	if err := checkUnixPath(path); err != nil {
		return "", "", fmt.Errorf("invalid socket %q: %w", s, err)
	}
	return "unix", path, nil
}

// parseTCP checks HOST:PORT and returns it with the port in canonical form
// (no leading zeros).
func parseTCP(hostport string) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", fmt.Errorf("want tcp:HOST:PORT: %w", err)
	}
	if host == "" {
		return "", errors.New("missing host, want tcp:HOST:PORT")
	}
	n, err := parsePort(port)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(n)), nil
}

// parsePort accepts only decimal digits, so that service names ("qmp")
// and signs ("+80") are rejected rather than resolved at dial time.
func parsePort(port string) (int, error) {
	bad := fmt.Errorf("port %q is not a number from 1 to 65535", port)
	if port == "" || len(port) > 5 {
		return 0, bad
	}
	n := 0
	for _, c := range []byte(port) {
		if c < '0' || c > '9' {
			return 0, bad
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > 65535 {
		return 0, bad
	}
	return n, nil
}

func checkUnixPath(path string) error {
	switch {
	case path == "":
		return errors.New("unix socket path is empty")
	case strings.IndexByte(path, 0) >= 0:
		return errors.New("unix socket path contains a NUL byte")
	case len(path) > maxUnixPathLen:
		return fmt.Errorf("unix socket path is %d bytes long, but sun_path holds at most %d", len(path), maxUnixPathLen)
	}
	return nil
}

// deriveName returns the name of a VM whose configuration gives none: the
// socket file's base name without its extension for unix sockets, and
// HOST:PORT for tcp. It returns "" when the path yields no usable name
// (for example "/run/qemu/.qmp").
func deriveName(network, address string) string {
	if network == "tcp" {
		return address
	}
	base := filepath.Base(address)
	name := strings.TrimSuffix(base, filepath.Ext(base))
	if name == "/" || name == "." {
		return ""
	}
	return name
}

// socketKey identifies the endpoint behind a socket, so that "unix:/a",
// "/a" and "/b/../a" count as the same socket.
func socketKey(network, address string) string {
	if network == "unix" && !strings.HasPrefix(address, "@") {
		// A leading @ is Linux's abstract namespace, which is not a path.
		address = filepath.Clean(address)
	}
	return network + ":" + address
}
