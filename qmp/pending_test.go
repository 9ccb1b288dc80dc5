package qmp

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/qmp-exporter/qmp_exporter/qmp/qmptest"
)

// TestAbandonedCallsAreBounded: calls whose context ends before a reply
// that never comes are remembered up to maxAbandoned, then forgotten; the
// connection keeps working throughout.
func TestAbandonedCallsAreBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var silent atomic.Bool
		silent.Store(true)
		client, _ := qmptest.New(t, qmptest.Options{Handle: func(qmptest.Command) (qmptest.Reply, bool) {
			if silent.Load() {
				return qmptest.NoReply, true
			}
			return qmptest.Return(map[string]string{"status": "running"}), true
		}})
		c, err := NewConn(t.Context(), client, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { c.Close(); <-c.Done() }()
		most := 0
		for range 2*maxAbandoned + 10 {
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			err := c.Execute(ctx, "query-status", nil, nil)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Execute = %v, want a timeout", err)
			}
			c.mu.Lock()
			most = max(most, len(c.pending))
			c.mu.Unlock()
		}
		if most > maxAbandoned+1 {
			t.Errorf("%d abandoned calls remembered, want at most %d", most, maxAbandoned+1)
		}
		silent.Store(false)
		var st struct {
			Status string `json:"status"`
		}
		if err := c.Execute(t.Context(), "query-status", nil, &st); err != nil || st.Status != "running" {
			t.Errorf("after the abandoned calls: Execute = %v, status %q", err, st.Status)
		}
	})
}
