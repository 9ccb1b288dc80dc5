package collector

import (
	"mime"
	"strconv"
	"strings"

	"github.com/prometheus/common/expfmt"
)

// format is an exposition format /metrics answers in.
type format struct {
	om          bool   // OpenMetrics text, else the Prometheus text format 0.0.4
	contentType string // as sent in Content-Type
}

// The formats, in the order the exporter prefers them when the client
// likes several equally (curl's "*/*", for one): the text format first,
// which every scraper reads. Protocol buffers are not offered: the
// exporter writes text straight from the VMs' state (see TextWriter), and
// the one thing protobuf would add, native histograms, it has none of.
// A Prometheus that asks for protobuf first (scrape_native_histograms,
// created-timestamp-zero-ingestion) asks for OpenMetrics next and gets it.
var (
	formatText = format{contentType: string(expfmt.FmtText)}
	formatOM1  = format{om: true, contentType: string(expfmt.FmtOpenMetrics_1_0_0)}
	// OpenMetrics 0.0.1, which older Prometheus versions asked for
	// first, is the same text as 1.0.0 for what the exporter writes.
	formatOM0 = format{om: true, contentType: string(expfmt.FmtOpenMetrics_0_0_1)}
	offered   = [...]struct {
		f                      format
		typ, subtype, version  string
		versionWhenUnspecified string
	}{
		{formatText, "text", "plain", expfmt.TextVersion, expfmt.TextVersion},
		{formatOM1, "application", "openmetrics-text", expfmt.OpenMetricsVersion_1_0_0, expfmt.OpenMetricsVersion_0_0_1},
		{formatOM0, "application", "openmetrics-text", expfmt.OpenMetricsVersion_0_0_1, expfmt.OpenMetricsVersion_0_0_1},
	}
)

// negotiate picks the format for a request's Accept header, honouring
// quality values as RFC 9110 (section 12.5.1) says: each offered format
// takes the q of the most specific media range that matches it (a
// version parameter must match exactly; without one, OpenMetrics means
// 0.0.1 and text/plain 0.0.4, as in prometheus/common/expfmt), and the
// highest q above 0 wins. Between equal q, the format named by the
// earlier media range wins, then the exporter's order (the text format
// first). When nothing offered is acceptable (no header, protobuf only,
// or q=0 everywhere), the answer is the text format anyway, as from any
// Prometheus exporter: a 406 would fail the scrape, the text format does
// not.
//
// expfmt.NegotiateAccept is not used because it takes media ranges in
// its parser's order, which puts a specific range before "*/*" whatever
// their q, and accepts q=0.
func negotiate(accept string) format {
	type score struct {
		q           float64
		specificity int // 0 none, 1 */*, 2 type/*, 3 type/subtype, 4 with a version
		clause      int // index of the media range that gave q
	}
	var scores [len(offered)]score
	for i, clause := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(clause))
		if err != nil {
			continue
		}
		q := 1.0
		if v, ok := params["q"]; ok {
			if q, err = strconv.ParseFloat(v, 64); err != nil || q < 0 || q > 1 {
				continue
			}
		}
		typ, subtype, _ := strings.Cut(mt, "/")
		version, hasVersion := params["version"]
		for j, o := range offered {
			var spec int
			switch {
			case typ == "*" && subtype == "*":
				spec = 1
			case typ != o.typ:
				continue
			case subtype == "*":
				spec = 2
			case subtype != o.subtype:
				continue
			case !hasVersion:
				if o.version != o.versionWhenUnspecified {
					continue
				}
				spec = 3
			case version != o.version:
				continue
			default:
				spec = 4
			}
			if s := &scores[j]; spec > s.specificity {
				*s = score{q: q, specificity: spec, clause: i}
			}
		}
	}
	best := -1
	for j, s := range scores {
		switch {
		case s.q <= 0:
		case best < 0, s.q > scores[best].q, s.q == scores[best].q && s.clause < scores[best].clause:
			best = j
		}
	}
	if best < 0 {
		return formatText
	}
	return offered[best].f
}
