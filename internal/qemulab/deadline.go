package qemulab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// bound makes I/O governed by set (a SetDeadline, SetReadDeadline or
// SetWriteDeadline method) fail once ctx is done: it applies ctx's deadline
// and, if ctx is cancelled earlier, moves the deadline into the past. The
// returned release must be called when the I/O is over; it waits for the
// cancellation callback if that already started, then clears the deadline.
func bound(ctx context.Context, set func(time.Time) error) (release func()) {
	if d, ok := ctx.Deadline(); ok {
		set(d)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		set(time.Unix(1, 0))
	})
	return func() {
		if !stop() {
			<-fired
		}
		set(time.Time{})
	}
}

// ctxErr turns a deadline error caused by bound into one that wraps ctx.Err().
func ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	return err
}
