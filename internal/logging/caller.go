// Package logging is the exporter's logging plumbing over go-kit log:
// the caller of a line (Caller), and a limiter that lets one line of a
// kind through per interval (Limiter). A logger that wraps another
// belongs here, because Caller skips this package's frames as it skips
// go-kit's: whatever wrappers a line goes through, its caller is the code
// that wrote it.
package logging

import (
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// Caller is a log.Valuer for the caller key: "file.go:line" of the first
// frame on the stack outside go-kit's log packages and this one.
// log.DefaultCaller counts a fixed number of frames instead, which is
// right only when nothing stands between the line and the logger holding
// the valuer; a wrapper (Limiter.Keyed, say) made it name the wrapper.
func Caller() any {
	var pcs [32]uintptr
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs[:])])
	for {
		f, more := frames.Next()
		if !plumbing(f.Function) {
			return filepath.Base(f.File) + ":" + strconv.Itoa(f.Line)
		}
		if !more {
			return "unknown"
		}
	}
}

// thisPackage is this package's import path, as it starts the names of
// its functions.
const thisPackage = "github.com/qmp-exporter/qmp_exporter/internal/logging"

// plumbing reports whether fn, a function's full name, belongs to the
// logging machinery: go-kit's log and log/level, or this package.
func plumbing(fn string) bool {
	for _, p := range []string{"github.com/go-kit/log.", "github.com/go-kit/log/", thisPackage + "."} {
		if strings.HasPrefix(fn, p) {
			return true
		}
	}
	return false
}
