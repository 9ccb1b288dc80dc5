package collector

import (
	"bufio"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/qmp-exporter/qmp_exporter/internal/fleet"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
)

// TextWriter writes the VMs' series in the Prometheus text format (0.0.4)
// or in OpenMetrics 1.0 straight from their state, without going through
// client_golang's registry. It exists for speed at fleet scale: a
// registry builds, sorts and checks a metric object per series on every
// scrape (about 5 µs each, seconds at 10,000 VMs of ~115 series), while
// this keeps each VM's rendered lines and renders a VM again only when
// its state changed since the last scrape (fleet.VM.Gen). Each format
// keeps its own rendering of a VM, made by the first scrape in that
// format that finds the VM changed, so that a scrape costs the same in
// either. Its output holds the same series as Collector's (tests compare
// the two, through the text parser and Prometheus's OpenMetrics parser,
// on real transcripts and fuzzed states); Collector stays for callers
// that want a prometheus.Collector.
//
// The listeners' counters are not written here: ListenerCollector exposes
// them through a registry.
type TextWriter struct {
	fleet *fleet.Fleet

	mu sync.Mutex // guards cache, its entries, and scrapes
	// cache holds each VM's rendered series from the last scrape that
	// showed it, in each variant scraped; a scrape forgets the VMs it did
	// not show.
	cache   map[*fleet.VM]*cached
	scrapes uint64
}

type cached struct {
	r    [variants]*renderedVM
	seen uint64 // the latest scrape that showed the VM
}

// variant is a way of rendering a VM's series.
type variant uint8

const (
	textVariant        variant = iota // the Prometheus text format 0.0.4
	omVariant                         // OpenMetrics, with _created where known
	omNoCreatedVariant                // OpenMetrics without _created
	variants
)

// NewTextWriter returns a TextWriter for f's VMs.
func NewTextWriter(f *fleet.Fleet) *TextWriter {
	return &TextWriter{fleet: f, cache: make(map[*fleet.VM]*cached)}
}

// renderedVM is one VM's series in one variant, family by family: the
// lines of family i (in textFamilies order) are data[off[i]:off[i+1]].
// It is immutable once built, so a scrape may keep using it after the
// VM's lock is released.
type renderedVM struct {
	gen  uint64 // the VM's Gen it was rendered at
	vm   string // the vm label it was rendered with
	data []byte
	off  []uint32
}

func (r *renderedVM) family(i int) []byte { return r.data[r.off[i]:r.off[i+1]] }

// textFamilies are the per-VM metrics in the order they are written
// (sorted by name, as client_golang writes them).
var textFamilies = slices.SortedFunc(slices.Values(vmMetrics), func(a, b *Metric) int {
	return strings.Compare(a.Name, b.Name)
})

// textHeaders and omHeaders are the HELP and TYPE lines of each of
// textFamilies, in the text format and in OpenMetrics.
var textHeaders, omHeaders = headers(false), headers(true)

// headers returns the HELP and TYPE lines of each of textFamilies. In
// OpenMetrics a counter's family is named without _total, which only
// its samples carry, and HELP escapes double quotes too.
func headers(om bool) [][]byte {
	h := make([][]byte, len(textFamilies))
	for i, d := range textFamilies {
		name := d.Name
		if om && d.Type == counter {
			name = strings.TrimSuffix(name, "_total")
		}
		var b []byte
		b = append(b, "# HELP "...)
		b = append(b, name...)
		b = append(b, ' ')
		b = appendEscaped(b, d.Help, om)
		b = append(b, "\n# TYPE "...)
		b = append(b, name...)
		b = append(b, ' ')
		b = append(b, d.Type...)
		b = append(b, '\n')
		h[i] = b
	}
	return h
}

// omCreated are, for each of textFamilies, the name of its OpenMetrics
// _created samples (qmp_events_total: qmp_events_created), or nil for the
// families that have none (see Metric.countsFromStart).
var omCreated = func() [][]byte {
	c := make([][]byte, len(textFamilies))
	for i, d := range textFamilies {
		if d.countsFromStart() {
			c[i] = []byte(strings.TrimSuffix(d.Name, "_total") + "_created")
		}
	}
	return c
}()

// scratchPool holds the buffer a render fills before it copies it into
// one renderedVM.
var scratchPool = sync.Pool{New: func() any {
	return &textScratch{off: make([]uint32, len(textFamilies)+1), tmpl: make([][]segment, len(textFamilies))}
}}

type textScratch struct {
	buf  []byte      // the lines of the families rendered so far
	off  []uint32    // where each family starts in buf
	fam  int         // the family being rendered
	vm   []byte      // the vm label, escaped
	tmpl [][]segment // by family, for a VM with configured labels; built on first use
	keys keyCache
	// created is the VM's CountersSince as an OpenMetrics _created value
	// (in createdBuf's storage), nil when none is written: the text
	// format, OpenMetrics without _created, or not known.
	created, createdBuf []byte
	omCreated           [][]byte // omCreated while created is set (a field, as base is)
	// base is textTemplates. (A field rather than a reference from add,
	// which the metric definitions call: textTemplates is built from them.)
	base [][]segment
}

// start begins family i.
func (s *textScratch) start(i int) {
	s.fam = i
	s.off[i] = uint32(len(s.buf))
}

// WriteTo writes every visible VM's series to w in the text format.
// Families with no series are left out, as client_golang does.
func (t *TextWriter) WriteTo(w io.Writer) (int64, error) {
	return t.write(w, textVariant)
}

// WriteOpenMetricsTo writes every visible VM's series to w in OpenMetrics
// 1.0, with the _created of each counter that has counted something,
// where it is known (see Metric.countsFromStart), unless created is
// false. It does not
// write the closing "# EOF", so that other families can follow (the
// handler adds the registry's).
func (t *TextWriter) WriteOpenMetricsTo(w io.Writer, created bool) (int64, error) {
	if !created {
		return t.write(w, omNoCreatedVariant)
	}
	return t.write(w, omVariant)
}

func (t *TextWriter) write(w io.Writer, vr variant) (int64, error) {
	vms := t.renderAll(time.Now(), vr)
	bw, pooled := w.(*bufio.Writer)
	if !pooled {
		bw = bufio.NewWriterSize(w, 64<<10)
	}
	headers := textHeaders
	if vr != textVariant {
		headers = omHeaders
	}
	var n int64
	for i := range textFamilies {
		wrote := false
		for _, r := range vms {
			lines := r.family(i)
			if len(lines) == 0 {
				continue
			}
			if !wrote {
				k, _ := bw.Write(headers[i])
				n += int64(k)
				wrote = true
			}
			k, _ := bw.Write(lines)
			n += int64(k)
		}
	}
	return n, bw.Flush()
}

// renderAll returns the rendered series of every visible VM in variant
// vr, in the fleet's order, rendering again only the VMs that changed
// since their last rendering in vr, and forgets the VMs no longer shown.
// The cache's lock is held only to look up and store: renders (under each
// VM's lock) of concurrent scrapes overlap.
func (t *TextWriter) renderAll(now time.Time, vr variant) []*renderedVM {
	t.mu.Lock()
	t.scrapes++
	scrape := t.scrapes
	t.mu.Unlock()
	var vms []*renderedVM
	t.fleet.Visible(now, func(v *fleet.VM, vm string, st *vmstate.State) {
		t.mu.Lock()
		c := t.cache[v]
		if c == nil {
			c = &cached{seen: scrape}
			t.cache[v] = c
		}
		r := c.r[vr]
		t.mu.Unlock()
		if r == nil || r.gen != v.Gen() || r.vm != vm {
			r = render(v, vm, st, vr)
		}
		t.mu.Lock()
		c.r[vr], c.seen = r, max(c.seen, scrape)
		t.mu.Unlock()
		vms = append(vms, r)
	})
	// Forget the VMs that neither this scrape nor a later one showed.
	t.mu.Lock()
	for v, c := range t.cache {
		if c.seen < scrape {
			delete(t.cache, v)
		}
	}
	t.mu.Unlock()
	return vms
}

// render renders v's series in variant vr. Called with v's lock held.
func render(v *fleet.VM, vm string, st *vmstate.State, vr variant) *renderedVM {
	s := scratchPool.Get().(*textScratch)
	s.buf = s.buf[:0]
	s.base = textTemplates
	clear(s.tmpl)
	s.vm = appendEscaped(s.vm[:0], vm, true)
	s.created = nil
	if vr == omVariant && st.CountersSince > 0 {
		s.created = appendMilli(s.createdBuf[:0], st.CountersSince)
		s.createdBuf = s.created
		s.omCreated = omCreated
	}
	meta := v.Meta()
	e := sink{vm: vm, extra: meta.Labels, libvirt: meta.Kind == fleet.Libvirt, text: s, k: &s.keys}
	e.emit(textFamilies, st)
	s.off[len(textFamilies)] = uint32(len(s.buf))
	r := &renderedVM{gen: v.Gen(), vm: vm, data: slices.Clone(s.buf), off: slices.Clone(s.off)}
	scratchPool.Put(s)
	return r
}

// A segment writes one label of a series line: lead (`,name="`, or
// `name="` for the first), then the value: the VM's vm label (src
// srcVM), a configured label's value (srcConst, already escaped in val)
// or the series' own label value labels[src] (labels after vm).
type segment struct {
	lead string
	src  int
	val  string
}

const (
	srcVM    = -1
	srcConst = -2
)

// textTemplates are the label segments of each family for a VM without
// configured labels, in label-name order (as client_golang writes them).
var textTemplates = func() [][]segment {
	t := make([][]segment, len(textFamilies))
	for i, d := range textFamilies {
		t[i] = templateFor(d, nil)
	}
	return t
}()

// templateFor builds m's label segments: vm, its own labels and a VM's
// configured labels (those whose names m does not use itself, as in
// Collector.descFor), sorted by name.
func templateFor(m *Metric, extra map[string]string) []segment {
	segs := []segment{{lead: "vm", src: srcVM}}
	for j, name := range m.Labels {
		segs = append(segs, segment{lead: name, src: j})
	}
	for k, v := range extra {
		if k == "vm" || slices.Contains(m.Labels, k) {
			continue
		}
		segs = append(segs, segment{lead: k, src: srcConst, val: string(appendEscaped(nil, v, true))})
	}
	slices.SortFunc(segs, func(a, b segment) int { return strings.Compare(a.lead, b.lead) })
	for j := range segs {
		lead := segs[j].lead + `="`
		if j > 0 {
			lead = "," + lead
		}
		segs[j].lead = lead
	}
	return segs
}

// add appends one series line of the current family.
func (s *textScratch) add(e *sink, v float64, labels []string) {
	i := s.fam
	segs := s.base[i]
	if len(e.extra) > 0 {
		if s.tmpl[i] == nil {
			s.tmpl[i] = templateFor(e.m, e.extra)
		}
		segs = s.tmpl[i]
	}
	b := s.buf
	b = append(b, e.m.Name...)
	labels0 := len(b)
	b = append(b, '{')
	for _, seg := range segs {
		b = append(b, seg.lead...)
		switch seg.src {
		case srcVM:
			b = append(b, s.vm...)
		case srcConst:
			b = append(b, seg.val...)
		default:
			b = appendEscaped(b, labels[seg.src], true)
		}
		b = append(b, '"')
	}
	b = append(b, '}', ' ')
	labels1 := len(b)
	b = appendValue(b, v)
	b = append(b, '\n')
	if s.created != nil && s.omCreated[i] != nil && v != 0 {
		// The _created sample follows its counter's, under the same
		// labels: Prometheus looks for it there. A counter at 0 is its
		// own start, which a _created would only repeat (see
		// Metric.countsFromStart).
		b = append(b, s.omCreated[i]...)
		b = append(b, b[labels0:labels1]...)
		b = append(b, s.created...)
		b = append(b, '\n')
	}
	s.buf = b
}

// appendEscaped appends s escaped for the text format: backslash and
// newline always, double quotes in label values. Invalid UTF-8 becomes
// U+FFFD.
func appendEscaped(b []byte, s string, quote bool) []byte {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	start := 0
	for i := 0; i < len(s); i++ {
		var esc string
		switch c := s[i]; {
		case c == '\\':
			esc = `\\`
		case c == '\n':
			esc = `\n`
		case c == '"' && quote:
			esc = `\"`
		default:
			continue
		}
		b = append(b, s[start:i]...)
		b = append(b, esc...)
		start = i + 1
	}
	return append(b, s[start:]...)
}

// appendMilli appends Unix milliseconds as OpenMetrics writes a
// timestamp: seconds, with the milliseconds as a decimal fraction when
// there are any. (Exact, unlike a float64 of the seconds.)
func appendMilli(b []byte, ms int64) []byte {
	b = strconv.AppendInt(b, ms/1000, 10)
	if frac := ms % 1000; frac != 0 {
		b = append(b, '.', byte('0'+frac/100), byte('0'+frac/10%10), byte('0'+frac%10))
		for b[len(b)-1] == '0' {
			b = b[:len(b)-1]
		}
	}
	return b
}

// appendValue appends v as the text format writes a sample value.
// Integers (most of these series are counts) take the short path.
func appendValue(b []byte, v float64) []byte {
	switch {
	case v == math.Trunc(v) && math.Abs(v) < 1<<53:
		return strconv.AppendInt(b, int64(v), 10)
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}
