// Package source says what a source of VMs is: something that finds VMs,
// keeps their state current in the fleet, and lets go of them. The
// QMP-socket source (package qmpsock) is one; a libvirt source is
// another of the same shape.
//
// The contract, which every source keeps:
//
//   - It adds each VM it finds with fleet.Add, under a key that starts
//     with its own kind (so keys of two sources never collide) and with a
//     fleet.Meta that names the VM and says whether its series are hidden
//     once it is stale.
//   - It changes a VM's state only between VM.Lock and VM.Unlock, and
//     only through vmstate: Apply for each event, in the order the VM
//     sent them, the Set methods for what its reads return, MarkUp when
//     the VM is reachable and synced, MarkDown when it is not. A source
//     whose events do not come as QMP events builds the qmp.Event each
//     stands for (name, QEMU's timestamp, data in QMP's shape), so that
//     every metric reads the same whatever the source.
//   - It re-reads what Apply's Need asks for, with read-only calls only,
//     and never from a scrape: scrapes read the fleet, never a source.
//   - It bounds what it keeps (VMs, buffers, waits, log lines) and
//     removes a VM with fleet.Remove when it is gone for good.
//   - It imports neither Prometheus nor the configuration package: it is
//     given plain values, and the exposition reads what it left in the
//     fleet.
package source

import (
	"context"
	"math/rand/v2"
	"time"
)

// Source keeps a set of VMs in the fleet current until ctx ends. Run
// returns once every goroutine the source started has stopped; a source
// that could not do its work at all returns why.
type Source interface {
	Run(ctx context.Context) error
}

// Backoff is the wait before the next attempt after n consecutive
// failures (n ≥ 1): it doubles from lo up to hi, and is drawn at random
// from the upper half of that, so that many VMs restarted together (or
// every source after one daemon's restart) do not retry in lock step.
func Backoff(lo, hi time.Duration, n int) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + rand.N(d/2+1)
}
