// Package qmp is a client for the QEMU Machine Protocol (QMP), the JSON
// protocol that a QEMU monitor speaks on a unix or TCP socket.
//
// The package imports only the standard library and knows nothing about
// Prometheus, configuration or logging: it returns errors and hands events to
// a callback, and the caller decides what to log and count.
//
// # Protocol
//
// QEMU greets a new client with a {"QMP": {...}} object. The client must
// answer with the qmp_capabilities command before the monitor accepts other
// commands or sends any event. After that the peer sends three kinds of
// message, one JSON object each: replies ({"return": ...} or
// {"error": {"class": ..., "desc": ...}}), which echo the "id" the client put
// in its command, and asynchronous events ({"event": NAME, "data": ...,
// "timestamp": ...}). QEMU writes every message on a single line; monitors
// started with pretty=on (multi-line JSON) are not supported.
//
// # Read-only by construction
//
// A QMP socket can do anything to a virtual machine: stop it, quit it, add
// or remove devices, run human monitor commands. This package refuses, before
// a byte reaches the wire, every command except qmp_capabilities and a fixed
// allow-list of query-* commands (see [Allowed]). There is no option to
// widen the list. A program built on Conn therefore cannot change a VM, by
// mistake or through a bug, whatever it asks for.
//
// # Concurrency and ordering
//
// A Conn has exactly one reader goroutine: its own, or, with
// Options.ServeReader, the caller's goroutine running Conn.Serve (one
// goroutine per connection instead of two, for a caller that would wait
// for the connection's end anyway). It reads a message, and:
//
//   - an event is passed to Options.OnEvent synchronously, on the reader
//     goroutine, in the order QEMU sent it (wire order). Events are never
//     queued, so none is dropped and none is buffered without bound; the
//     price is that OnEvent must be quick and must never block. In
//     particular OnEvent must not call Execute: the reply it would wait for
//     can only be read by the goroutine that is busy running OnEvent. A
//     handler that needs a follow-up query should signal another goroutine
//     (a non-blocking send on a channel of size one is enough).
//   - a reply is matched to its command by id and handed to the Execute
//     call waiting for it through a buffered channel, so delivering a reply
//     never blocks the reader either. ExecuteFunc is the exception: the
//     reader waits while the caller's function takes the reply, so the
//     reply keeps its place in wire order among the events, and a caller
//     that keeps state from both never applies a reply after an event
//     that QEMU sent later.
//
// Event.Data aliases the connection's read buffer: it is valid only until
// OnEvent returns. Copy it to keep it. This keeps the common event path free
// of allocations.
//
// Execute may be called from many goroutines at once. Each call takes a
// fresh numeric id from a counter, registers itself as waiting for that id
// before writing, and writes its command under a mutex. QEMU may send an
// event caused by a command before the command's reply (RESUME arrives
// before the return of cont); with the single reader, that event reaches
// OnEvent before Execute returns.
//
// # Cancellation and death
//
// If the context of an Execute call ends before its reply arrives, Execute
// returns the context's error and forgets the id; the late reply is dropped
// quietly and the connection stays usable. A write that fails or times out
// poisons the connection, since part of a command may have gone out, and the
// session ends with a drain (below).
//
// When the peer hangs up, the read fails, Close or Drain is called or a
// write fails, every waiting Execute returns an error that wraps
// [ErrClosed] (and the cause), Err reports why, and Done is closed once
// the reader goroutine has returned. Close and Drain are idempotent, safe
// from any goroutine, and do not wait.
//
// Close closes the socket at once. A drain ([Conn.Drain], and any failed
// write) does not: a peer that hangs up may have sent events that are
// still unread (a QEMU that emits an event, then SHUTDOWN, then exits,
// while a query is being written), and closing would throw them away. The
// reader goes on delivering what the peer sent, replies to the ended
// calls aside, until the peer hangs up or a bound is reached (8 MiB,
// 250 ms without a byte, 2 s in all), then closes; [Conn.Drained] says
// what it read. Only a protocol violation that kills the connection (a
// message over the size bound) ends a drain early.
//
// # Bounds
//
// A message larger than Options.MaxMessageBytes (1 MiB by default, five times
// the ~200 KB query-qmp-schema reply of QEMU 7.2) kills the connection with
// [ErrMessageTooLarge], so a hostile or broken peer cannot make the reader
// allocate without bound. Malformed messages, replies with unknown ids and
// objects that are neither replies nor events are dropped and reported to
// Options.OnProtocolError; the connection keeps going.
//
// The protocol is specified in QEMU's docs/interop/qmp-spec.rst.
package qmp
