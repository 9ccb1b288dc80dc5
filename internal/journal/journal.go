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
// A Ring belongs to one VM and is written under that VM's lock; it has a
// small lock of its own for the readers (pages) and for the fleet-wide
// bound, which may take from any ring.
package journal

import (
	"bytes"
	"cmp"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
//
// Each ring has a lock of its own and the fleet-wide figures are atomic,
// so that VMs folding events at once do not queue on one lock (at a
// million events a second from 100 VMs, one journal-wide lock cost a
// third more CPU per event in make bench's flood-100). No lock is taken
// while another is held, except by a ring's caller, which holds its VM's.
type Journal struct {
	opts Options

	mu    sync.Mutex // guards rings
	rings map[*Ring]struct{}

	bytes     atomic.Int64 // held by all rings
	seq       atomic.Uint64
	shrinking sync.Mutex // one shrink at a time
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

	mu    sync.Mutex
	buf   []Entry // circular; grows up to Keep
	start int     // index of the oldest entry
	n     int
	bytes int
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

// Close gives the ring's memory back; the ring keeps nothing after.
func (r *Ring) Close() {
	j := r.j
	j.mu.Lock()
	delete(j.rings, r)
	j.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	j.bytes.Add(-int64(r.bytes))
	r.buf, r.start, r.n, r.bytes = nil, 0, 0, 0
	r.closed = true
}

// Source returns the source the ring was made for.
func (r *Ring) Source() string { return r.source }

// Add keeps ev, received at now from the VM labelled vm with UUID uuid
// (for the log), dropping the ring's oldest event when it holds Keep.
// Once the ring is full, the oldest event's data buffer takes the new
// event's data: a VM's steady stream of events allocates nothing here.
func (r *Ring) Add(ev Event, now time.Time, vm, uuid string) {
	j := r.j
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	var reuse []byte
	if r.n == j.opts.Keep {
		reuse = r.dropOldest()
	}
	e := Entry{Seq: j.seq.Add(1), Time: ev.Time, Received: now, Event: ev.Name}
	e.Data, e.Truncated = cleanData(reuse, ev.Data, j.opts.MaxData)
	r.push(e)
	if j.opts.Log != nil {
		// The log's copy outlives the slot, which the ring reuses.
		rec := Record{Entry: e, VM: vm, UUID: uuid, Source: r.source}
		rec.Data = bytes.Clone(e.Data)
		j.opts.Log(rec)
	}
	r.mu.Unlock()
	if j.bytes.Load() > int64(j.opts.MaxBytes) {
		j.shrink()
	}
}

// cost is what an entry counts against MaxBytes: the capacity of its data
// buffer, which a reused buffer may hold beyond the data's length.
func cost(e *Entry) int { return cap(e.Data) + entryOverhead }

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
	r.j.bytes.Add(int64(c))
}

// dropOldest forgets the oldest entry and returns its data buffer, empty,
// for reuse.
func (r *Ring) dropOldest() []byte {
	e := &r.buf[r.start]
	c := cost(e)
	data := e.Data[:0]
	*e = Entry{}
	r.start = (r.start + 1) % len(r.buf)
	r.n--
	r.bytes -= c
	r.j.bytes.Add(-int64(c))
	r.dropped++
	return data
}

// shrink brings the fleet back to nine tenths of MaxBytes by dropping the
// oldest events of the VMs that hold the most: a VM that floods loses its
// own history before a quiet VM loses its last panic. It walks every
// ring, so it stops well below the bound to run rarely; an Add that finds
// a shrink under way leaves it to that one.
func (j *Journal) shrink() {
	if !j.shrinking.TryLock() {
		return
	}
	defer j.shrinking.Unlock()
	if j.bytes.Load() <= int64(j.opts.MaxBytes) {
		return
	}
	j.mu.Lock()
	rings := make([]*Ring, 0, len(j.rings))
	for r := range j.rings {
		rings = append(rings, r)
	}
	j.mu.Unlock()
	sizes := make([]int, len(rings))
	for i, r := range rings {
		r.mu.Lock()
		sizes[i] = r.bytes
		r.mu.Unlock()
	}
	// The largest first; the level is the most any ring may keep so that
	// the sum fits the target.
	sorted := slices.Clone(sizes)
	slices.SortFunc(sorted, func(a, b int) int { return cmp.Compare(b, a) })
	level := waterLevel(sorted, j.opts.MaxBytes/10*9)
	for _, r := range rings {
		r.mu.Lock()
		for r.bytes > level && r.n > 0 {
			r.dropOldest() // its buffer goes: the memory is what is given back
		}
		r.mu.Unlock()
	}
}

// waterLevel returns the largest per-ring size L such that the rings,
// each cut to at most L bytes, hold no more than target. sizes are sorted
// largest first.
func waterLevel(sizes []int, target int) int {
	rest := 0 // bytes of the rings below the level
	for _, s := range sizes {
		rest += s
	}
	for i, s := range sizes {
		rest -= s
		// sizes[:i+1] are cut to the level; the others keep what they have.
		level := (target - rest) / (i + 1)
		if i+1 == len(sizes) || level >= sizes[i+1] {
			return max(level, 0)
		}
	}
	return 0
}

// Entries returns a copy of the ring's events, oldest first, and the
// number of older events it no longer holds.
func (r *Ring) Entries() (entries []Entry, dropped uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	entries = make([]Entry, r.n)
	for i := range r.n {
		entries[i] = r.buf[(r.start+i)%len(r.buf)]
		entries[i].Data = bytes.Clone(entries[i].Data)
	}
	return entries, r.dropped
}

// Last returns a copy of the newest event, if any.
func (r *Ring) Last() (Entry, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == 0 {
		return Entry{}, false
	}
	e := r.buf[(r.start+r.n-1)%len(r.buf)]
	e.Data = bytes.Clone(e.Data)
	return e, true
}

// cleanData appends raw (which may alias a read buffer) to dst[:0] as
// valid UTF-8 JSON of at most limit bytes; longer data becomes a JSON
// string of its beginning, cut at a character boundary, and truncated is
// true.
func cleanData(dst, raw []byte, limit int) (data json.RawMessage, truncated bool) {
	if len(raw) == 0 {
		return nil, false
	}
	if len(raw) <= limit {
		if utf8.Valid(raw) {
			return append(dst[:0], raw...), false
		}
		// Only a byte inside a JSON string can be invalid UTF-8 (the
		// decoder checked the rest), so the replacement keeps it JSON.
		return append(dst[:0], strings.ToValidUTF8(string(raw), "\uFFFD")...), false
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
			return append(dst[:0], s...), true
		}
		cut = max(cut-max((len(s)-limit)/6, 1), 0)
	}
}
