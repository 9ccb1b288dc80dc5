package qemulab

import (
	"context"
	"fmt"
)

// DumpToFull is a dump-guest-memory protocol whose every write fails with
// ENOSPC: the dump starts, then fails.
const DumpToFull = "file:/dev/full"

// Dump runs dump-guest-memory {"paging": false, "protocol": protocol,
// "detach": true} (plus "format" unless format is empty; QEMU's default is
// "elf", which for the lab VM writes a 128 MiB file, "kdump-zlib" about
// 1 MiB) and waits for DUMP_COMPLETED, which it returns, and for the RESUME
// after it if the dump stopped the VM. protocol is "file:<path>" or
// "fd:<name>".
//
// QEMU stops the VM for the dump and resumes it afterwards: STOP, then
// DUMP_COMPLETED, then RESUME. A successful dump:
//
//	DUMP_COMPLETED {"result": {"total": 134283264, "status": "completed", "completed": 134283264}}
//
// A dump that fails while writing (DumpToFull) has "status": "failed" and an
// "error" member next to "result":
//
//	DUMP_COMPLETED {"result": {"total": 134283264, "status": "failed", "completed": 0},
//	                "error": "dump: failed to write elf header: No space left on device"}
//
// and query-dump reports the same result. A protocol QEMU cannot open (a
// missing directory, an unknown fd name) fails synchronously: Dump returns
// the *CommandError (GenericError "Could not open '/x/dump': No such file or
// directory", "File descriptor named 'x' has not been found") and no event
// or STOP is emitted. Without detach (not offered here) QEMU emits
// DUMP_COMPLETED too, and a failure is also the command's error.
func (v *VM) Dump(ctx context.Context, protocol, format string) (Event, error) {
	args := map[string]any{"paging": false, "protocol": protocol, "detach": true}
	if format != "" {
		args["format"] = format
	}
	mark := v.Ctl.Mark()
	if _, err := v.Ctl.Execute(ctx, "dump-guest-memory", args); err != nil {
		return Event{}, err
	}
	ev, err := v.Ctl.WaitEvent(ctx, "DUMP_COMPLETED", mark)
	if err != nil {
		return Event{}, fmt.Errorf("qemulab: dump: %w", err)
	}
	// If the dump stopped the VM, wait until it runs again.
	for _, e := range v.Ctl.Events()[mark:ev.Index] {
		if e.Name == "STOP" {
			if _, err := v.Ctl.WaitEvent(ctx, "RESUME", ev.Index); err != nil {
				return ev, fmt.Errorf("qemulab: dump: %w", err)
			}
			break
		}
	}
	return ev, nil
}
