package collector

import (
	"bufio"
	"compress/gzip"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// HandlerOpts configure NewHandler.
type HandlerOpts struct {
	// MaxRequestsInFlight bounds concurrent scrapes; more are answered
	// 503. Zero means no bound.
	MaxRequestsInFlight int
	// ErrorLog receives errors from gathering the registry's metrics
	// (the scrape goes on with what was gathered); nil drops them.
	ErrorLog func(error)
	// NoCreated leaves the _created samples out of OpenMetrics. A
	// Prometheus without the created-timestamp-zero-ingestion feature
	// stores each as a series of its own (qmp_events_created, ...).
	NoCreated bool
}

// NewHandler serves /metrics: the VMs' series from vms, then whatever g
// gathers (the exporter's own metrics, the listeners' counters), gzipped
// when the client accepts it. The format is OpenMetrics 1.0 for a client
// that prefers it (Prometheus asks for it first), with _created where the
// exporter knows it (see Metric.countsFromStart); else the Prometheus text format
// 0.0.4, which every client that scrapes exporters reads (see negotiate).
func NewHandler(vms *TextWriter, g prometheus.Gatherer, opts HandlerOpts) http.Handler {
	h := &metricsHandler{vms: vms, g: g, errorLog: opts.ErrorLog, created: !opts.NoCreated}
	if opts.MaxRequestsInFlight > 0 {
		h.inFlight = make(chan struct{}, opts.MaxRequestsInFlight)
	}
	return h
}

type metricsHandler struct {
	vms      *TextWriter
	g        prometheus.Gatherer
	errorLog func(error)
	created  bool          // OpenMetrics with _created
	inFlight chan struct{} // nil: unbounded
}

// gzipPool keeps gzip writers (each ~800 KiB of compression state) between
// scrapes. BestSpeed: at 10,000 VMs the text is ~75 MB, which the default
// level takes ~0.6 s to compress and BestSpeed ~0.16 s, for a body ~30%
// larger; the scrape's wall time matters more than its size on the wire.
var gzipPool = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	return w
}}

var bufPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}

func (h *metricsHandler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if h.inFlight != nil {
		select {
		case h.inFlight <- struct{}{}:
			defer func() { <-h.inFlight }()
		default:
			http.Error(rw, "too many concurrent scrapes (limit "+strconv.Itoa(cap(h.inFlight))+"); try again later", http.StatusServiceUnavailable)
			return
		}
	}
	f := negotiate(r.Header.Get("Accept"))
	header := rw.Header()
	header.Set("Content-Type", f.contentType)
	header.Add("Vary", "Accept")
	bw := bufPool.Get().(*bufio.Writer)
	defer func() { bw.Reset(nil); bufPool.Put(bw) }()
	if acceptsGzip(r.Header.Get("Accept-Encoding")) {
		header.Set("Content-Encoding", "gzip")
		header.Add("Vary", "Accept-Encoding")
		gz := gzipPool.Get().(*gzip.Writer)
		defer gzipPool.Put(gz)
		gz.Reset(rw)
		defer gz.Close()
		bw.Reset(gz)
	} else {
		bw.Reset(rw)
	}
	if f.om {
		h.writeOpenMetrics(bw)
	} else {
		h.writeText(bw)
	}
}

// gather gathers the registries' metrics. It runs once the VMs' series
// are written, so that what the fleet counted while walking them
// (qmp_uuid_conflicts_total) includes this very scrape.
func (h *metricsHandler) gather() []*dto.MetricFamily {
	mfs, err := h.g.Gather()
	if err != nil && h.errorLog != nil {
		h.errorLog(err)
	}
	return mfs
}

// writeText writes the VMs' series and the registries' in the text format.
func (h *metricsHandler) writeText(bw *bufio.Writer) {
	// Write errors mean the client went away; there is no one to tell.
	if _, err := h.vms.WriteTo(bw); err != nil {
		return
	}
	if h.encode(expfmt.NewEncoder(bw, expfmt.FmtText), h.gather()) {
		_ = bw.Flush()
	}
}

// writeOpenMetrics writes the VMs' series and the registries' in
// OpenMetrics, then the "# EOF" that ends it.
func (h *metricsHandler) writeOpenMetrics(bw *bufio.Writer) {
	if _, err := h.vms.WriteOpenMetricsTo(bw, h.created); err != nil {
		return
	}
	mfs := h.gather()
	var opts []expfmt.EncoderOption
	if h.created {
		opts = append(opts, expfmt.WithCreatedLines())
	}
	enc := expfmt.NewEncoder(bw, expfmt.FmtOpenMetrics_1_0_0, opts...)
	if !h.encode(enc, mfs) {
		return
	}
	if c, ok := enc.(expfmt.Closer); ok {
		if err := c.Close(); err != nil {
			return
		}
	}
	_ = bw.Flush()
}

// encode encodes mfs, and reports whether all went well.
func (h *metricsHandler) encode(enc expfmt.Encoder, mfs []*dto.MetricFamily) bool {
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			if h.errorLog != nil {
				h.errorLog(err)
			}
			return false
		}
	}
	return true
}

// acceptsGzip reports whether an Accept-Encoding header value allows gzip
// (listed, or through "*", without q=0).
func acceptsGzip(v string) bool {
	for part := range strings.SplitSeq(v, ",") {
		coding, params, _ := strings.Cut(part, ";")
		coding = strings.TrimSpace(coding)
		if coding != "gzip" && coding != "*" {
			continue
		}
		if q, ok := strings.CutPrefix(strings.TrimSpace(params), "q="); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(q), 64); err == nil && f == 0 {
				if coding == "gzip" {
					return false
				}
				continue
			}
		}
		return true
	}
	return false
}
