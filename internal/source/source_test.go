package source

import (
	"testing"
	"time"
)

// TestBackoff: the wait doubles from lo, stops at hi, and is drawn from
// the upper half of each step.
func TestBackoff(t *testing.T) {
	lo, hi := 100*time.Millisecond, 30*time.Second
	for _, tc := range []struct {
		n        int
		min, max time.Duration
	}{
		{1, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, 100 * time.Millisecond, 200 * time.Millisecond},
		{4, 400 * time.Millisecond, 800 * time.Millisecond},
		{30, 15 * time.Second, 30 * time.Second},
	} {
		for range 100 {
			if d := Backoff(lo, hi, tc.n); d < tc.min || d > tc.max {
				t.Fatalf("Backoff(%v, %v, %d) = %v, want within [%v, %v]", lo, hi, tc.n, d, tc.min, tc.max)
			}
		}
	}
}
