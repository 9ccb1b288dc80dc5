package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// scrapeAccept is what Prometheus asks for: the exporter answers
// OpenMetrics, with a _created sample after most counters'.
const scrapeAccept = "application/openmetrics-text;version=1.0.0;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"

// scrape is one GET /metrics, done as Prometheus does it (gzip), timed to
// the last byte of the compressed body.
type scrape struct {
	latency time.Duration
	wire    int    // compressed bytes
	body    []byte // compressed body
}

func (e *exporter) scrape(ctx context.Context) (scrape, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+e.addr+"/metrics", nil)
	if err != nil {
		return scrape{}, err
	}
	req.Header.Set("Accept", scrapeAccept)
	req.Header.Set("Accept-Encoding", "gzip")
	start := time.Now()
	resp, err := e.client.Do(req)
	if err != nil {
		return scrape{}, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	lat := time.Since(start)
	if err != nil {
		return scrape{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return scrape{}, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	if resp.Header.Get("Content-Encoding") != "gzip" {
		// Keep one representation: compress what came plain.
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		_, _ = zw.Write(body)
		_ = zw.Close()
		body = b.Bytes()
	}
	return scrape{latency: lat, wire: len(body), body: body}, nil
}

// sums are the figures the bench reads from a scrape.
type sums struct {
	events float64            // sum of qmp_events_total over every VM and event
	perVM  map[string]float64 // qmp_events_total summed by vm label
	up     float64            // sum of qmp_up
	vms    int                // qmp_up series
	series int                // samples in the exposition, _created left out
	bytes  int                // uncompressed size
}

// parse reads the sums from a scrape's body.
func (s scrape) parse() (sums, error) {
	zr, err := gzip.NewReader(bytes.NewReader(s.body))
	if err != nil {
		return sums{}, err
	}
	defer zr.Close()
	return parseExposition(zr)
}

func parseExposition(r io.Reader) (sums, error) {
	out := sums{perVM: map[string]float64{}}
	cr := &countingReader{r: r}
	sc := bufio.NewScanner(cr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] == '#' || createdSample(line) {
			continue
		}
		out.series++
		isEvents := bytes.HasPrefix(line, []byte("qmp_events_total{"))
		isUp := bytes.HasPrefix(line, []byte("qmp_up{"))
		if !isEvents && !isUp {
			continue
		}
		i := bytes.LastIndexByte(line, ' ')
		if i < 0 {
			return out, fmt.Errorf("malformed sample %q", line)
		}
		v, err := strconv.ParseFloat(string(line[i+1:]), 64)
		if err != nil {
			return out, fmt.Errorf("malformed sample %q: %w", line, err)
		}
		if isEvents {
			out.events += v
			out.perVM[vmLabel(line[:i])] += v
		} else {
			out.up += v
			out.vms++
		}
	}
	out.bytes = cr.n
	return out, sc.Err()
}

// createdSample reports whether line is an OpenMetrics _created sample:
// a counter's start, not a series of the exporter's (though a Prometheus
// without created-timestamp-zero-ingestion stores it as one).
func createdSample(line []byte) bool {
	name, _, _ := bytes.Cut(line, []byte("{"))
	name, _, _ = bytes.Cut(name, []byte(" "))
	return bytes.HasSuffix(name, []byte("_created"))
}

// vmLabel returns the value of the vm label of a series, or "".
func vmLabel(series []byte) string {
	for off := 0; ; {
		i := bytes.Index(series[off:], []byte(`vm="`))
		if i < 0 {
			return ""
		}
		i += off
		if i > 0 && (series[i-1] == '{' || series[i-1] == ',') {
			v := series[i+4:]
			if j := bytes.IndexByte(v, '"'); j >= 0 {
				return string(v[:j])
			}
			return ""
		}
		off = i + 4
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// sums scrapes once and parses.
func (e *exporter) sums(ctx context.Context) (sums, scrape, error) {
	s, err := e.scrape(ctx)
	if err != nil {
		return sums{}, s, err
	}
	m, err := s.parse()
	return m, s, err
}

// waitUp scrapes until qmp_up adds up to want.
func (e *exporter) waitUp(ctx context.Context, want int, limit time.Duration) (sums, error) {
	deadline := time.Now().Add(limit)
	for {
		m, _, err := e.sums(ctx)
		if err == nil && int(m.up) >= want {
			return m, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil || e.exited() {
			return m, fmt.Errorf("%d of %d VMs up after %s (last error: %v)\n%s", int(m.up), want, limit, err, e.stderr)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// settledEvents scrapes until the event count stops changing (two equal
// sums 300 ms apart), at most limit, and returns the last scrape's sums.
func (e *exporter) settledEvents(ctx context.Context, limit time.Duration) (sums, error) {
	deadline := time.Now().Add(limit)
	prev := -1.0
	for {
		m, _, err := e.sums(ctx)
		if err != nil {
			return m, err
		}
		if m.events == prev {
			return m, nil
		}
		prev = m.events
		if time.Now().After(deadline) {
			return m, fmt.Errorf("event count still changing after %s", limit)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// latencies runs n scrapes one after the other, or as many (at least 5)
// as fit in budget when scrapes are slow.
func (e *exporter) latencies(ctx context.Context, n int, budget time.Duration) (latencyStats, error) {
	var ls []time.Duration
	var wire int
	start := time.Now()
	for i := range n {
		if i >= 5 && time.Since(start) > budget {
			break
		}
		s, err := e.scrape(ctx)
		if err != nil {
			return latencyStats{}, err
		}
		ls = append(ls, s.latency)
		wire = s.wire
	}
	st := newLatencyStats(ls)
	st.Wire = wire
	return st, nil
}

// latencyStats summarises scrape latencies.
type latencyStats struct {
	N                int
	Median, P99, Max time.Duration
	Wire             int // compressed size of the last scrape
}

func newLatencyStats(ls []time.Duration) latencyStats {
	if len(ls) == 0 {
		return latencyStats{}
	}
	s := append([]time.Duration(nil), ls...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return latencyStats{
		N:      len(s),
		Median: percentile(s, 50),
		P99:    percentile(s, 99),
		Max:    s[len(s)-1],
	}
}

// percentile is the nearest-rank percentile of sorted values: of 20
// scrapes, the median is the mean of the 10th and 11th and p99 the 20th.
func percentile(sorted []time.Duration, p int) time.Duration {
	n := len(sorted)
	if p == 50 && n%2 == 0 {
		return (sorted[n/2-1] + sorted[n/2]) / 2
	}
	rank := (p*n + 99) / 100 // ceil(p/100 * n)
	return sorted[max(rank, 1)-1]
}

func (l latencyStats) String() string {
	return fmt.Sprintf("median %s, p99 %s", ms(l.Median), ms(l.P99))
}

func ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

// humanBytes formats a size in KiB, MiB or GiB.
func humanBytes(n float64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", n/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", n/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", n/(1<<10))
	}
	return fmt.Sprintf("%.0f B", n)
}

// thousands formats n with thousands separators.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
