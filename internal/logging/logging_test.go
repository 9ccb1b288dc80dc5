// The tests are outside the package: Caller skips the package's own
// frames, and would skip the tests' too.
package logging_test

import (
	"bytes"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/go-logfmt/logfmt"

	. "github.com/qmp-exporter/qmp_exporter/internal/logging"
)

// here returns "logging_test.go:N" for the line delta lines from the one
// that calls it.
func here(delta int) string {
	_, file, line, _ := runtime.Caller(1)
	return file[strings.LastIndexByte(file, '/')+1:] + ":" + strconv.Itoa(line+delta)
}

// fields decodes the one logfmt line of b.
func fields(t *testing.T, b *bytes.Buffer) map[string]string {
	t.Helper()
	out := map[string]string{}
	d := logfmt.NewDecoder(b)
	n := 0
	for d.ScanRecord() {
		n++
		for d.ScanKeyval() {
			out[string(d.Key())] = string(d.Value())
		}
	}
	if d.Err() != nil || n != 1 {
		t.Fatalf("want one logfmt line, got %d (%v)", n, d.Err())
	}
	return out
}

// TestCallerIsTheLineThatLogged: whatever wraps the logger that binds the
// caller (go-kit's With and level, a Limiter, both), the caller is the
// line that called Log, as the exporter's logger binds it.
func TestCallerIsTheLineThatLogged(t *testing.T) {
	var b bytes.Buffer
	base := log.With(log.NewLogfmtLogger(&b), "caller", log.Valuer(Caller))
	lim := NewLimiter(time.Minute)
	tests := []struct {
		name string
		log  func() (wantCaller string)
	}{
		{"the logger itself", func() string { base.Log("msg", "a"); return here(0) }},
		{"With and level", func() string {
			lg := level.Info(log.With(base, "vm", "web"))
			lg.Log("msg", "b")
			return here(-1)
		}},
		{"a Limiter's keyed logger", func() string {
			level.Warn(lim.Keyed(base, "peer\x00")).Log("msg", "c")
			return here(-1)
		}},
		{"With on a Limiter's keyed logger", func() string {
			lg := log.With(lim.Keyed(log.With(base, "vm", "web"), "peer\x00"), "k", "v")
			lg.Log("msg", "d")
			return here(-1)
		}},
		{"Limiter.Log", func() string { lim.Log(level.Info(base), "key", "msg", "e"); return here(0) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b.Reset()
			want := tc.log()
			if got := fields(t, &b)["caller"]; got != want {
				t.Errorf("caller %s, want %s", got, want)
			}
		})
	}
}

// TestLimiter: one line per key and interval, and the next one says how
// many were left out; keys are independent.
func TestLimiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var b syncBuffer
		lg := NewLimiter(10*time.Second).Keyed(log.NewLogfmtLogger(&b), "peer\x00")
		for range 5 {
			lg.Log("msg", "session lost", "vm", "web")
			lg.Log("msg", "session failed", "vm", "web")
			time.Sleep(time.Second)
		}
		time.Sleep(10 * time.Second)
		lg.Log("msg", "session lost", "vm", "web")
		want := "msg=\"session lost\" vm=web\n" +
			"msg=\"session failed\" vm=web\n" +
			"msg=\"session lost\" vm=web not_logged_since=4\n"
		if got := b.String(); got != want {
			t.Errorf("logged\n%s\nwant\n%s", got, want)
		}
	})
}

// TestLimiterBound: at MaxKeys keys, a new key is dropped while every key
// is recent, and let through once the old ones are older than the
// interval (they are forgotten, making room for as many new ones).
func TestLimiterBound(t *testing.T) {
	l := NewLimiter(time.Second)
	now := time.Unix(1700000000, 0)
	for i := range MaxKeys {
		if ok, _ := l.Allow(strconv.Itoa(i), now); !ok {
			t.Fatalf("key %d of %d refused", i, MaxKeys)
		}
	}
	if ok, _ := l.Allow("one more", now); ok {
		t.Error("a new key let through with every key recent")
	}
	later := now.Add(time.Second)
	for i := range MaxKeys {
		if ok, _ := l.Allow("new "+strconv.Itoa(i), later); !ok {
			t.Fatalf("after the interval, new key %d of %d refused: the old keys were not forgotten", i, MaxKeys)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
