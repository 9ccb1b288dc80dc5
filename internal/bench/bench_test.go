package main

import (
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	// The command name may hold spaces and parentheses.
	stat := "4242 (qmp (exp) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 12 0 100 0 0\n"
	got, err := parseStatCPU([]byte(stat), 100)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3250 * time.Millisecond; got != want {
		t.Errorf("cpu = %s, want %s", got, want)
	}
	if _, err := parseStatCPU([]byte("garbage"), 100); err == nil {
		t.Error("no error for a malformed line")
	}
}

func TestParseVMRSS(t *testing.T) {
	got, err := parseVMRSS([]byte("Name:\tqmp_exporter\nVmPeak:\t  99 kB\nVmRSS:\t   15872 kB\nRssAnon:\t 1 kB\n"))
	if err != nil || got != 15872<<10 {
		t.Errorf("got %d, %v", got, err)
	}
	if _, err := parseVMRSS([]byte("Name: x\n")); err == nil {
		t.Error("no error without VmRSS")
	}
}

func TestParseExposition(t *testing.T) {
	text := `# HELP qmp_up 1 while the session is established.
# TYPE qmp_up gauge
qmp_up{vm="a"} 1
qmp_up{vm="b"} 0
qmp_events_total{event="STOP",vm="a"} 3
qmp_events_created{event="STOP",vm="a"} 1700000000.25
qmp_events_total{event="RESET",vm="b"} 1e+06
qmp_events_totally{vm="a"} 100
qmp_vm_info{package="x y",vm="a",version="7.2.22"} 1
# EOF
`
	s, err := parseExposition(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if s.events != 1000003 || s.up != 1 || s.vms != 2 || s.series != 6 || s.bytes != len(text) {
		t.Errorf("got %+v", s)
	}
	if s.perVM["a"] != 3 || s.perVM["b"] != 1e6 || len(s.perVM) != 2 {
		t.Errorf("per VM: %v", s.perVM)
	}
	if _, err := parseExposition(strings.NewReader("qmp_up{vm=\"a\"} x\n")); err == nil {
		t.Error("no error for a malformed value")
	}
}

func TestPercentile(t *testing.T) {
	var ls []time.Duration
	for i := 20; i >= 1; i-- {
		ls = append(ls, time.Duration(i)*time.Millisecond)
	}
	st := newLatencyStats(ls)
	if st.Median != 10500*time.Microsecond || st.P99 != 20*time.Millisecond || st.Max != 20*time.Millisecond || st.N != 20 {
		t.Errorf("got %+v", st)
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", -1234567: "-1,234,567"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestCostPlotIsSVG(t *testing.T) {
	runs := []*result{
		{Name: "a", VMs: 1, Mix: "full", Window: time.Second, Counted: 1e6, CPU: 700 * time.Millisecond, SendWall: time.Second},
		{Name: "b", VMs: 1000, Rate: 10, Mix: "full", Window: time.Second, Counted: 1e4, CPU: 400 * time.Millisecond, SendWall: time.Second},
		{Name: "c", VMs: 1000, Rate: 100, Mix: "full", Window: time.Second, Counted: 1e5, CPU: 2 * time.Second, SendWall: time.Second},
		{Name: "d", VMs: 1000, Rate: 10, Mix: "quiet", Window: time.Second, Counted: 1e4, CPU: 200 * time.Millisecond, SendWall: time.Second},
	}
	svg := costPlot(runs)
	if !strings.HasPrefix(svg, "<svg") || !strings.Contains(svg, "1,000 VMs, quiet mix") {
		t.Fatalf("unexpected plot:\n%s", svg)
	}
	d := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
	}
	if costPlot(runs[:1]) != "" {
		t.Error("a plot from one point")
	}
}

func TestVMLabel(t *testing.T) {
	for in, want := range map[string]string{
		`qmp_up{vm="a"}`:                       "a",
		`qmp_events_total{event="X",vm="b-1"}`: "b-1",
		`qmp_x{devvm="no",vm="c"}`:             "c",
		`qmp_x{job="j"}`:                       "",
	} {
		if got := vmLabel([]byte(in)); got != want {
			t.Errorf("vmLabel(%s) = %q, want %q", in, got, want)
		}
	}
}

func TestCompareVMs(t *testing.T) {
	lost, extra := compareVMs(map[string]int64{"a": 10, "b": 5, "c": 0}, map[string]float64{"a": 10, "b": 3, "c": 1, "d": 2})
	if lost != 2 || extra != 3 {
		t.Errorf("lost %d, extra %d; want 2 and 3", lost, extra)
	}
}
