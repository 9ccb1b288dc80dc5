package promlab

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestScrapeRecorder: what passes through the recorder arrives unchanged
// and is recorded by kind; a target that is gone is a 502, recorded too.
func TestScrapeRecorder(t *testing.T) {
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
		io.WriteString(w, "# EOF\n")
	}))
	rec := NewScrapeRecorder(strings.TrimPrefix(target.URL, "http://"))
	defer rec.Close()

	const accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4"
	get := func() (int, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+rec.Addr+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", accept)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(body)
	}
	for range 2 {
		if status, body := get(); status != http.StatusOK || body != "# EOF\n" {
			t.Errorf("through the recorder: %d %q, want 200 \"# EOF\\n\"", status, body)
		}
	}
	target.Close()
	if status, _ := get(); status != http.StatusBadGateway {
		t.Errorf("target gone: status %d, want 502", status)
	}
	http.DefaultClient.CloseIdleConnections()

	served := Scrape{Accept: accept, ContentType: "application/openmetrics-text; version=1.0.0; charset=utf-8", Status: http.StatusOK}
	gone := Scrape{Accept: accept, Status: http.StatusBadGateway}
	want := map[Scrape]int{served: 2, gone: 1}
	if diff := cmp.Diff(want, rec.Scrapes()); diff != "" {
		t.Errorf("Scrapes() (-want +got):\n%s", diff)
	}
	if s := rec.String(); !strings.HasPrefix(s, `2 scrapes: status 200, Content-Type "application/openmetrics-text;`) ||
		!strings.Contains(s, "\n1 scrapes: status 502, Content-Type \"\"") {
		t.Errorf("String() =\n%s", s)
	}
}

func TestScrapeRecorderBound(t *testing.T) {
	rec := &ScrapeRecorder{kinds: map[Scrape]int{}}
	for i := range maxScrapeKinds + 3 {
		rec.record(Scrape{Status: i})
	}
	rec.record(Scrape{Status: 0})
	if got := len(rec.Scrapes()); got != maxScrapeKinds {
		t.Errorf("%d kinds kept, want %d", got, maxScrapeKinds)
	}
	if got := rec.Overflow(); got != 3 {
		t.Errorf("Overflow() = %d, want 3", got)
	}
	if got := rec.Scrapes()[Scrape{Status: 0}]; got != 2 {
		t.Errorf("a known kind counted %d times, want 2", got)
	}
}
