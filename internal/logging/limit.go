package logging

import (
	"sync"
	"time"

	"github.com/go-kit/log"
)

// Limiter lets one log line per key through per interval and counts the
// others; the next line let through for the key says how many were left
// out (not_logged_since). It is safe for concurrent use.
type Limiter struct {
	every time.Duration

	mu   sync.Mutex
	last map[string]slot
}

type slot struct {
	at      time.Time
	dropped int
}

// MaxKeys bounds the keys a Limiter remembers: past it, the keys older
// than the interval are forgotten, and while all are recent, lines with
// new keys are dropped.
const MaxKeys = 16384

// NewLimiter returns a Limiter that lets one line per key through every
// interval.
func NewLimiter(every time.Duration) *Limiter {
	return &Limiter{every: every, last: make(map[string]slot)}
}

// Allow reports whether a line with key may be logged at now, and how many
// were held back since the last one that was.
func (l *Limiter) Allow(key string, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, seen := l.last[key]
	if seen && now.Sub(s.at) < l.every {
		s.dropped++
		l.last[key] = s
		return false, 0
	}
	if !seen && len(l.last) >= MaxKeys {
		for k, v := range l.last {
			if now.Sub(v.at) >= l.every {
				delete(l.last, k)
			}
		}
		if len(l.last) >= MaxKeys {
			return false, 0
		}
	}
	l.last[key] = slot{at: now}
	return true, s.dropped
}

// Log logs kv on next unless a line with key was let through less than
// the interval ago.
func (l *Limiter) Log(next log.Logger, key string, kv ...any) error {
	ok, left := l.Allow(key, time.Now())
	if !ok {
		return nil
	}
	if left > 0 {
		kv = append(kv[:len(kv):len(kv)], "not_logged_since", left)
	}
	return next.Log(kv...)
}

// Keyed returns a logger whose lines pass through l to next, keyed by
// prefix and the line's msg: one line of each message per interval.
func (l *Limiter) Keyed(next log.Logger, prefix string) log.Logger {
	return keyed{l, next, prefix}
}

// keyed is a method rather than a closure: a closure inlined into its
// caller's package is named after the caller, and Caller would take it
// for the code that wrote the line.
type keyed struct {
	l      *Limiter
	next   log.Logger
	prefix string
}

func (k keyed) Log(kv ...any) error {
	var msg string
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i] == "msg" {
			msg, _ = kv[i+1].(string)
		}
	}
	return k.l.Log(k.next, k.prefix+msg, kv...)
}
