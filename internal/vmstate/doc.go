// Package vmstate is the model of one virtual machine as the exporter
// knows it: a pure fold of the VM's QMP events and of the replies to its
// read-only queries into a State.
//
// Its inputs are an event (qmp.Event: name, QEMU's timestamp, data) for
// Apply, and a query reply for the Set methods (SetStatus, SetBlock,
// SetMigrate, SetJobs, SetBalloon, Display.Set, SetInfo). Apply returns a
// Need: the parts of the state the event made uncertain, which the source
// re-reads and feeds back. Its output is the State's exported fields,
// which the exposition (package collector) and, later, the event journal
// read.
//
// Nothing here does I/O, starts a goroutine, reads a clock or takes a
// lock: a source holds the VM's lock (internal/fleet) around every call,
// and passes the time where one is needed. Everything a guest controls
// is bounded here: label values (CleanLabel), event names, devices, jobs,
// serial ports and enum values per VM, so that one VM cannot blow up the
// series of the whole exporter.
//
// Adding an event: a field in State, an entry in handlers and a case in
// foldData (fold.go) with its fold function, and a table test; the
// metric that shows the field is defined in package collector.
package vmstate
