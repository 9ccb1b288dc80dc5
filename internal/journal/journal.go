// Package journal keeps what labels cannot: each VM's recent events with
// their data (the panic information, an I/O error's reason, a shutdown's
// cause), for the /vms and /events pages, and hands every event to the
// JSON event log.
//
// Everything is bounded: the events kept per VM (Options.Keep), the data
// kept per event (Options.MaxData), and the data kept over the whole
// fleet (Options.MaxBytes). What a bound drops is marked: an event whose
// data was cut says so (Entry.Truncated), and a VM's ring counts the
// events it no longer holds (Ring.Dropped).
//
// A Ring belongs to one VM and is written under that VM's lock; the
// journal's own lock, taken inside, guards the fleet-wide bound, so the
// lock order is always VM, then journal.
package journal

import (
	"bytes"
	"cmp"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Defaults of Options.
const (
	DefaultKeep     = 100
	DefaultMaxData  = 4 << 10
	DefaultMaxBytes = 64 << 20
)

// entryOverhead is what an Entry costs beside its data, counted against
// MaxBytes so that a flood of data-less events is bounded too.
const entryOverhead = 96

// Options bound a Journal. A zero field takes its default.
type Options struct {
	Keep     int // events kept per VM
	MaxData  int // bytes of an event's data kept
	MaxBytes int // bytes kept over all VMs (data plus entryOverhead each)
	// Log, when set, receives every event added, in each VM's order. It
	// is called with the VM's lock held and must not block.
	Log func(Record)
}

// Event is an event as a source delivered it.
type Event struct {
	Name string
	Data []byte // the raw JSON "data" member, or nil
	Time time.Time
}

// Entry is one kept event.
type Entry struct {
	Seq      uint64    // order of arrival over the whole fleet
	Time     time.Time // QEMU's timestamp; zero when it gave none
	Received time.Time // when the exporter read it
	Event    string
	// Data is JSON text: the event's data, made valid UTF-8; when it was
	// longer than MaxData, a JSON string holding its beginning, and
	// Truncated is set. Nil when the event had no data.
	Data      json.RawMessage
	Truncated bool
}

// Record is an event on its way to the event log: the entry, and which
// VM sent it through which source.
type Record struct {
	Entry
	VM, UUID, Source string
}

// Journal holds the rings of all VMs and their common bound.
type Journal struct {
	opts Options

	mu    sync.Mutex
	rings map[*Ring]struct{}
	bytes int // held by all rings
	seq   uint64
}

// New returns an empty journal.
func New(opts Options) *Journal {
	if opts.Keep <= 0 {
		opts.Keep = DefaultKeep
	}
	if opts.MaxData <= 0 {
		opts.MaxData = DefaultMaxData
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	return &Journal{opts: opts, rings: make(map[*Ring]struct{})}
}

// Keep returns the number of events kept per VM.
func (j *Journal) Keep() int { return j.opts.Keep }

// Ring is one VM's recent events, oldest first.
type Ring struct {
	j      *Journal
	source string
	buf    []Entry // circular; grows up to Keep
	start  int     // index of the oldest entry
	n      int
	bytes  int
	// dropped counts the events added but no longer kept.
	dropped uint64
	closed  bool
}

// NewRing returns an empty ring for a VM reached through source (for
// example "socket", "listener", "libvirt").
func (j *Journal) NewRing(source string) *Ring {
	r := &Ring{j: j, source: source}
	j.mu.Lock()
	j.rings[r] = struct{}{}
	j.mu.Unlock()
	return r
}

// Close gives the ring's memory back; the ring must not be used after.
func (r *Ring) Close() {
	j := r.j
	j.mu.Lock()
	defer j.mu.Unlock()
	j.bytes -= r.bytes
	delete(j.rings, r)
	r.buf, r.start, r.n, r.bytes = nil, 0, 0, 0
	r.closed = true
}

// Source returns the source the ring was made for.
func (r *Ring) Source() string { return r.source }

// Add keeps ev, received at now from the VM labelled vm with UUID uuid
// (for the log), dropping the ring's oldest event when it holds Keep.
func (r *Ring) Add(ev Event, now time.Time, vm, uuid string) {
	j := r.j
	e := Entry{Time: ev.Time, Received: now, Event: ev.Name}
	e.Data, e.Truncated = cleanData(ev.Data, j.opts.MaxData)

	j.mu.Lock()
	defer j.mu.Unlock()
	if r.closed {
		return
	}
	j.seq++
	e.Seq = j.seq
	if r.n == j.opts.Keep {
		r.dropOldest()
	}
	r.push(e)
	if j.bytes > j.opts.MaxBytes {
		j.shrink()
	}
	if j.opts.Log != nil {
		j.opts.Log(Record{Entry: e, VM: vm, UUID: uuid, Source: r.source})
	}
}

func cost(e *Entry) int { return len(e.Data) + entryOverhead }

func (r *Ring) push(e Entry) {
	if r.n == len(r.buf) {
		// Grow in steps, so that a VM that sends a few events a day does
		// not hold room for Keep of them.
		nb := make([]Entry, min(max(2*len(r.buf), 8), r.j.opts.Keep))
		for i := range r.n {
			nb[i] = r.buf[(r.start+i)%len(r.buf)]
		}
		r.buf, r.start = nb, 0
	}
	r.buf[(r.start+r.n)%len(r.buf)] = e
	r.n++
	c := cost(&e)
	r.bytes += c
	r.j.bytes += c
}

func (r *Ring) dropOldest() {
	e := &r.buf[r.start]
	c := cost(e)
	*e = Entry{}
	r.start = (r.start + 1) % len(r.buf)
	r.n--
	r.bytes -= c
	r.j.bytes -= c
	r.dropped++
}

// shrink brings the fleet back to nine tenths of MaxBytes by dropping the
// oldest events of the VMs that hold the most: a VM that floods loses its
// own history before a quiet VM loses its last panic. It walks every
// ring, so it stops well below the bound to run rarely.
func (j *Journal) shrink() {
	target := j.opts.MaxBytes / 10 * 9
	rings := make([]*Ring, 0, len(j.rings))
	for r := range j.rings {
		rings = append(rings, r)
	}
	// The largest first; the level is the most any ring may keep so that
	// the sum fits the target.
	slices.SortFunc(rings, func(a, b *Ring) int { return cmp.Compare(b.bytes, a.bytes) })
	level := waterLevel(rings, target)
	for _, r := range rings {
		for r.bytes > level && r.n > 0 {
			r.dropOldest()
		}
	}
}

// waterLevel returns the largest per-ring size L such that the rings,
// each cut to at most L bytes, hold no more than target. rings are sorted
// largest first.
func waterLevel(rings []*Ring, target int) int {
	rest := 0 // bytes of the rings below the level
	for _, r := range rings {
		rest += r.bytes
	}
	for i, r := range rings {
		rest -= r.bytes
		// rings[:i+1] are cut to the level; the others keep what they have.
		level := (target - rest) / (i + 1)
		if i+1 == len(rings) || level >= rings[i+1].bytes {
			return max(level, 0)
		}
	}
	return 0
}

// Entries returns a copy of the ring's events, oldest first, and the
// number of older events it no longer holds.
func (r *Ring) Entries() (entries []Entry, dropped uint64) {
	j := r.j
	j.mu.Lock()
	defer j.mu.Unlock()
	entries = make([]Entry, r.n)
	for i := range r.n {
		entries[i] = r.buf[(r.start+i)%len(r.buf)]
	}
	return entries, r.dropped
}

// Last returns the newest event, if any.
func (r *Ring) Last() (Entry, bool) {
	j := r.j
	j.mu.Lock()
	defer j.mu.Unlock()
	if r.n == 0 {
		return Entry{}, false
	}
	return r.buf[(r.start+r.n-1)%len(r.buf)], true
}

// cleanData copies raw (which may alias a read buffer) as valid UTF-8
// JSON of at most max bytes; longer data becomes a JSON string of its
// beginning, cut at a character boundary, and truncated is true.
func cleanData(raw []byte, limit int) (data json.RawMessage, truncated bool) {
	if len(raw) == 0 {
		return nil, false
	}
	if len(raw) <= limit {
		if utf8.Valid(raw) {
			return bytes.Clone(raw), false
		}
		// Only a byte inside a JSON string can be invalid UTF-8 (the
		// decoder checked the rest), so the replacement keeps it JSON.
		return []byte(strings.ToValidUTF8(string(raw), "\uFFFD")), false
	}
	// Quoting may make the text longer (a control character takes six
	// bytes), so cut until the quoted beginning fits.
	cut := limit
	for {
		for cut > 0 && !utf8.RuneStart(raw[cut]) {
			cut--
		}
		s, _ := json.Marshal(strings.ToValidUTF8(string(raw[:cut]), "\uFFFD")) // a string always marshals
		if len(s) <= limit || cut == 0 {
			return s, true
		}
		cut = max(cut-max((len(s)-limit)/6, 1), 0)
	}
}
