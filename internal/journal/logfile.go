package journal

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"sync/atomic"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
)

// DefaultLogQueue is how many events may wait for the event log's writer.
// At the fold's pace of about a million events a second over a whole
// host, it absorbs a few milliseconds of a stalled disk; beyond that,
// events are dropped from the log (never from the fold) and counted.
const DefaultLogQueue = 8192

// LogTimeFormat is RFC 3339 with microseconds, QEMU's own precision.
const LogTimeFormat = "2006-01-02T15:04:05.000000Z07:00"

// LogFile writes every event as one JSON object per line, to a file or to
// standard output, from a goroutine of its own: Send never waits on the
// disk. It is reopened on Reopen (after logrotate moved the file).
type LogFile struct {
	path   string // "-" for standard output
	logger log.Logger

	queue   chan Record
	reopen  chan struct{}
	dropped atomic.Uint64

	f *os.File // owned by Run
	w *bufio.Writer
}

// OpenLog opens path for appending ("-": standard output) and returns a
// LogFile whose queue holds queueLen events (0: DefaultLogQueue). Errors
// while writing later are logged to logger, once per kind of failure.
func OpenLog(path string, queueLen int, logger log.Logger) (*LogFile, error) {
	if queueLen <= 0 {
		queueLen = DefaultLogQueue
	}
	l := &LogFile{path: path, logger: logger, queue: make(chan Record, queueLen), reopen: make(chan struct{}, 1)}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *LogFile) open() error {
	if l.path == "-" {
		l.f = os.Stdout
	} else {
		f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return err
		}
		l.f = f
	}
	l.w = bufio.NewWriterSize(l.f, 64<<10)
	return nil
}

// Send queues r for writing, or drops and counts it when the queue is
// full. It never blocks: it runs on a VM's reader, under its lock.
func (l *LogFile) Send(r Record) {
	select {
	case l.queue <- r:
	default:
		l.dropped.Add(1)
	}
}

// Dropped returns the number of events dropped because the queue was full
// or the file could not be written.
func (l *LogFile) Dropped() uint64 { return l.dropped.Load() }

// Reopen asks the writer to close and reopen the file (for logrotate); it
// does not wait.
func (l *LogFile) Reopen() {
	select {
	case l.reopen <- struct{}{}:
	default:
	}
}

// Run writes queued events until ctx ends, then writes what is queued
// and closes the file.
func (l *LogFile) Run(ctx context.Context) {
	defer l.close()
	var failing error // the last write error, logged once until a write works
	for {
		select {
		case r := <-l.queue:
			failing = l.write(r, failing)
			// Flush once the burst is written, not after every line.
			if len(l.queue) == 0 {
				failing = l.flush(failing)
			}
		case <-l.reopen:
			failing = l.flush(failing)
			l.close()
			if err := l.open(); err != nil {
				level.Error(l.logger).Log("msg", "cannot reopen the event log; events are dropped until the next reopen", "path", l.path, "err", err)
				l.w = bufio.NewWriter(io.Discard)
				l.f = nil
			}
		case <-ctx.Done():
			for {
				select {
				case r := <-l.queue:
					failing = l.write(r, failing)
				default:
					l.flush(failing)
					return
				}
			}
		}
	}
}

func (l *LogFile) write(r Record, failing error) error {
	if l.f == nil {
		l.dropped.Add(1)
		return failing
	}
	line, _ := json.Marshal(logLine(r)) // every field marshals
	line = append(line, '\n')
	if _, err := l.w.Write(line); err != nil {
		l.dropped.Add(1)
		return l.failed(err, failing)
	}
	return nil
}

func (l *LogFile) flush(failing error) error {
	if err := l.w.Flush(); err != nil {
		return l.failed(err, failing)
	}
	return failing
}

// failed logs err unless the same failure was logged last time, so that a
// full disk gives one line, not one per event.
func (l *LogFile) failed(err, last error) error {
	if last == nil || last.Error() != err.Error() {
		level.Error(l.logger).Log("msg", "cannot write the event log; events are dropped and counted in qmp_event_log_dropped_total", "path", l.path, "err", err)
	}
	// A failed bufio.Writer keeps failing: start a fresh one on the file.
	l.w = bufio.NewWriterSize(l.f, 64<<10)
	return err
}

func (l *LogFile) close() {
	if l.f == nil {
		return
	}
	if err := l.w.Flush(); err != nil && !errors.Is(err, os.ErrClosed) {
		level.Error(l.logger).Log("msg", "cannot write the event log", "path", l.path, "err", err)
	}
	if l.f != os.Stdout {
		l.f.Close()
	}
	l.f = nil
}

// LogLine is one line of the event log; its JSON names are part of the
// exporter's interface (README, "Event log").
type LogLine struct {
	// Time is QEMU's timestamp of the event, or when the exporter read
	// it if QEMU gave none.
	Time     string          `json:"time"`
	VM       string          `json:"vm"`
	UUID     string          `json:"uuid,omitempty"`
	Event    string          `json:"event"`
	Data     json.RawMessage `json:"data,omitempty"`
	Cut      bool            `json:"data_truncated,omitempty"`
	Source   string          `json:"source"`
	Received string          `json:"received"`
}

func logLine(r Record) LogLine {
	t := r.Time
	if t.IsZero() {
		t = r.Received
	}
	return LogLine{Time: t.UTC().Format(LogTimeFormat), VM: r.VM, UUID: r.UUID, Event: r.Event, Data: r.Data,
		Cut: r.Truncated, Source: r.Source, Received: r.Received.UTC().Format(LogTimeFormat)}
}
