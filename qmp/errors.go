package qmp

import (
	"errors"
	"fmt"
)

var (
	// ErrClosed is wrapped by every error that reports a dead connection:
	// a closed Conn, a peer that hung up, a failed read.
	ErrClosed = errors.New("qmp: connection closed")

	// ErrNotAllowed is wrapped by the error Execute returns for a command
	// outside the read-only allow-list. Nothing was sent.
	ErrNotAllowed = errors.New("qmp: command not allowed")

	// ErrMessageTooLarge is wrapped by the error that kills a connection
	// whose peer sent a message longer than Options.MaxMessageBytes.
	ErrMessageTooLarge = errors.New("qmp: message too large")

	// ErrProtocol is wrapped by the errors reported to
	// Options.OnProtocolError (malformed JSON, unknown reply ids, messages
	// of unknown shape), by handshake failures caused by the peer, and by
	// Execute's error for a reply that does not decode into its result
	// or a malformed error reply.
	ErrProtocol = errors.New("qmp: protocol error")
)

// Error is an error reply from QEMU: {"error": {"class": ..., "desc": ...}}.
// Class is QEMU's error class (GenericError, CommandNotFound,
// DeviceNotActive, DeviceNotFound, KVMMissingCap); callers switch on it, for
// example to skip a query that an older QEMU lacks.
type Error struct {
	Command string // the command that failed
	Class   string // QEMU's error class
	Desc    string // QEMU's human-readable description
}

// Error implements the error interface.
func (e *Error) Error() string {
	return fmt.Sprintf("qmp: %s: %s: %s", e.Command, e.Class, e.Desc)
}

// IsClass reports whether err is, or wraps, a QEMU error reply of the given
// class.
func IsClass(err error, class string) bool {
	var qe *Error
	return errors.As(err, &qe) && qe.Class == class
}

// closedError wraps ErrClosed together with the cause of death, so that
// errors.Is works for both.
type closedError struct{ cause error }

func (e *closedError) Error() string {
	if e.cause == nil || e.cause == ErrClosed {
		return ErrClosed.Error()
	}
	return ErrClosed.Error() + ": " + e.cause.Error()
}

func (e *closedError) Unwrap() []error {
	if e.cause == nil || e.cause == ErrClosed {
		return []error{ErrClosed}
	}
	return []error{ErrClosed, e.cause}
}

// protocolError builds an error wrapping ErrProtocol with a short excerpt of
// the offending message, so that a log line shows what the peer sent
// without copying a megabyte of it.
func protocolError(what string, msg []byte) error {
	return fmt.Errorf("%w: %s: %q", ErrProtocol, what, excerpt(msg))
}

// excerpt returns at most 120 bytes of b for error messages.
func excerpt(b []byte) string {
	const max = 120
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
