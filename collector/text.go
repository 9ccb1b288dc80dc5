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
)

// TextWriter writes the VMs' series in the Prometheus text format (0.0.4)
// straight from their state, without going through client_golang's
// registry. It exists for speed at fleet scale: a registry builds, sorts
// and checks a metric object per series on every scrape (about 5 µs each,
// seconds at 10,000 VMs of ~115 series), while this keeps each VM's
// rendered lines and renders a VM again only when its state changed since
// the last scrape. Its output holds the same series as Collector's (a test
// compares the two on real transcripts and fuzzed states); Collector stays
// for callers that want a prometheus.Collector.
//
// The listeners' counters are not written here: ListenerCollector exposes
// them through a registry.
type TextWriter struct {
	m *Manager
}

// NewTextWriter returns a TextWriter for m's VMs.
func NewTextWriter(m *Manager) *TextWriter { return &TextWriter{m: m} }

// renderedVM is one VM's series in the text format, family by family:
// the lines of family i (in textFamilies order) are data[off[i]:off[i+1]].
// It is immutable once built, so a scrape may keep using it after the
// VM's lock is released.
type renderedVM struct {
	gen  uint64 // the watcher's gen it was rendered at
	vm   string // the vm label it was rendered with
	data []byte
	off  []uint32
}

func (r *renderedVM) family(i int) []byte { return r.data[r.off[i]:r.off[i+1]] }

// textFamilies are the per-VM metrics in the order they are written
// (sorted by name, as client_golang writes them).
var textFamilies = func() []*metricDef {
	var defs []*metricDef
	for _, d := range metricDefs {
		if d != mListener {
			defs = append(defs, d)
		}
	}
	slices.SortFunc(defs, func(a, b *metricDef) int { return strings.Compare(a.name, b.name) })
	for i, d := range defs {
		d.textIndex = i
	}
	return defs
}()

// textHeaders are the HELP and TYPE lines of each of textFamilies.
var textHeaders = func() [][]byte {
	h := make([][]byte, len(textFamilies))
	for i, d := range textFamilies {
		var b []byte
		b = append(b, "# HELP "...)
		b = append(b, d.name...)
		b = append(b, ' ')
		b = appendEscaped(b, d.help, false)
		b = append(b, "\n# TYPE "...)
		b = append(b, d.name...)
		b = append(b, ' ')
		b = append(b, d.typ...)
		b = append(b, '\n')
		h[i] = b
	}
	return h
}()

// scratchPool holds the per-family buffers a render fills before it packs
// them into one renderedVM.
var scratchPool = sync.Pool{New: func() any {
	return &textScratch{fam: make([][]byte, len(textFamilies)), tmpl: make([][]segment, len(textFamilies))}
}}

type textScratch struct {
	fam  [][]byte    // lines by family
	vm   []byte      // the vm label, escaped
	tmpl [][]segment // by family, for a VM with configured labels; built on first use
}

// WriteTo writes every visible VM's series to w. Families with no series
// are left out, as client_golang does.
func (t *TextWriter) WriteTo(w io.Writer) (int64, error) {
	var vms []*renderedVM
	t.m.visibleVMs(time.Now(), func(wt *watcher, vm string) {
		vms = append(vms, t.render(wt, vm))
	})
	bw, pooled := w.(*bufio.Writer)
	if !pooled {
		bw = bufio.NewWriterSize(w, 64<<10)
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
				k, _ := bw.Write(textHeaders[i])
				n += int64(k)
				wrote = true
			}
			k, _ := bw.Write(lines)
			n += int64(k)
		}
	}
	return n, bw.Flush()
}

// render returns wt's series, rendered again only if wt changed or its vm
// label did. Called with wt.mu held.
func (t *TextWriter) render(wt *watcher, vm string) *renderedVM {
	if r := wt.rendered; r != nil && r.gen == wt.gen && r.vm == vm {
		return r
	}
	s := scratchPool.Get().(*textScratch)
	for i := range s.fam {
		s.fam[i] = s.fam[i][:0]
		s.tmpl[i] = nil
	}
	s.vm = appendEscaped(s.vm[:0], vm, true)
	e := emitter{vm: vm, extra: wt.target.Labels, text: s}
	e.vmMetrics(&wt.st)
	size := 0
	for _, b := range s.fam {
		size += len(b)
	}
	r := &renderedVM{gen: wt.gen, vm: vm, data: make([]byte, 0, size), off: make([]uint32, len(s.fam)+1)}
	for i, b := range s.fam {
		r.data = append(r.data, b...)
		r.off[i+1] = uint32(len(r.data))
	}
	scratchPool.Put(s)
	wt.rendered = r
	return r
}

// A segment writes one label of a series line: lead (`,name="`, or
// `name="` for the first), then the value: the VM's vm label (src
// srcVM), a configured label's value (srcConst, already escaped in val)
// or the series' own label value labels[src].
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

// templateFor builds d's label segments, with a VM's configured labels
// (those whose names d does not use itself, as in Collector.descFor).
func templateFor(d *metricDef, extra map[string]string) []segment {
	var segs []segment
	for j, name := range d.labels {
		src := j - 1
		if name == "vm" {
			src = srcVM
		}
		segs = append(segs, segment{lead: name, src: src})
	}
	for k, v := range extra {
		if k == "vm" || slices.Contains(d.labels, k) {
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

// add appends one series line to its family.
func (s *textScratch) add(e *emitter, d *metricDef, v float64, labels []string) {
	i := d.textIndex
	segs := textTemplates[i]
	if len(e.extra) > 0 {
		if s.tmpl[i] == nil {
			s.tmpl[i] = templateFor(d, e.extra)
		}
		segs = s.tmpl[i]
	}
	b := s.fam[i]
	b = append(b, d.name...)
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
	b = appendValue(b, v)
	s.fam[i] = append(b, '\n')
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
