package promlab

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
)

// Scrape is one kind of exchange a ScrapeRecorder saw.
type Scrape struct {
	// Accept is the Accept header of the scrape: the formats Prometheus
	// asked for, in its order of preference.
	Accept string
	// ContentType is the Content-Type of the target's answer, the format
	// Prometheus was served; empty when the target could not be reached.
	ContentType string
	// Status is the HTTP status of the answer, 502 when the target could
	// not be reached.
	Status int
}

// maxScrapeKinds bounds the distinct kinds a ScrapeRecorder keeps; a
// scrape of a further kind is only counted in Overflow.
const maxScrapeKinds = 32

// ScrapeRecorder is a reverse proxy in front of one scrape target that
// records what every scrape through it asked for and was served. Which
// exposition format a Prometheus received is negotiated per scrape and
// shows nowhere in its API, so a test that must know points Prometheus at
// the recorder instead of the target. It is safe for concurrent use.
type ScrapeRecorder struct {
	// Addr is the host:port to scrape instead of the target's.
	Addr string

	srv       *httptest.Server
	transport *http.Transport

	mu       sync.Mutex
	kinds    map[Scrape]int
	overflow int
}

// NewScrapeRecorder starts a recorder on a free loopback port that
// forwards every request to target (host:port, plain HTTP). Close stops it.
func NewScrapeRecorder(target string) *ScrapeRecorder {
	r := &ScrapeRecorder{
		kinds: map[Scrape]int{},
		// Its own transport, so that Close can drop its idle connections.
		transport: &http.Transport{ResponseHeaderTimeout: 10 * time.Second},
	}
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	proxy.Transport = r.transport
	proxy.ModifyResponse = func(resp *http.Response) error {
		r.record(Scrape{Accept: resp.Request.Header.Get("Accept"), ContentType: resp.Header.Get("Content-Type"), Status: resp.StatusCode})
		return nil
	}
	proxy.ErrorHandler = func(w http.ResponseWriter, req *http.Request, err error) {
		r.record(Scrape{Accept: req.Header.Get("Accept"), Status: http.StatusBadGateway})
		http.Error(w, err.Error(), http.StatusBadGateway)
	}
	r.srv = httptest.NewServer(proxy)
	r.Addr = strings.TrimPrefix(r.srv.URL, "http://")
	return r
}

func (r *ScrapeRecorder) record(s Scrape) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.kinds[s]; !ok && len(r.kinds) >= maxScrapeKinds {
		r.overflow++
		return
	}
	r.kinds[s]++
}

// Scrapes returns how many scrapes of each kind passed so far.
func (r *ScrapeRecorder) Scrapes() map[Scrape]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[Scrape]int, len(r.kinds))
	for k, n := range r.kinds {
		out[k] = n
	}
	return out
}

// Overflow returns how many scrapes were of a kind beyond the first 32.
func (r *ScrapeRecorder) Overflow() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.overflow
}

// String lists the kinds of scrape seen, one a line, for a test's log.
func (r *ScrapeRecorder) String() string {
	scrapes := r.Scrapes()
	kinds := make([]Scrape, 0, len(scrapes))
	for s := range scrapes {
		kinds = append(kinds, s)
	}
	sort.Slice(kinds, func(i, j int) bool {
		a, b := kinds[i], kinds[j]
		if a.Status != b.Status {
			return a.Status < b.Status
		}
		if a.ContentType != b.ContentType {
			return a.ContentType < b.ContentType
		}
		return a.Accept < b.Accept
	})
	var b strings.Builder
	for _, s := range kinds {
		fmt.Fprintf(&b, "%d scrapes: status %d, Content-Type %q, Accept %q\n", scrapes[s], s.Status, s.ContentType, s.Accept)
	}
	if n := r.Overflow(); n > 0 {
		fmt.Fprintf(&b, "%d scrapes of further kinds\n", n)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// Close stops the recorder and waits for the requests in flight.
func (r *ScrapeRecorder) Close() {
	r.srv.Close()
	r.transport.CloseIdleConnections()
}
