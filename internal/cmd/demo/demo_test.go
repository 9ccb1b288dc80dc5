package main

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
)

// TestRun runs the demo against a real QEMU for a few seconds with a fast
// interval, on a free port, and checks that it printed the session coming up
// and the STOP of its first action as a change.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds the exporter and runs QEMU")
	}
	qemulab.RequireQEMU(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	opts := options{Listen: addr, Interval: 200 * time.Millisecond, Duration: 4 * time.Second}
	if err := run(ctx, opts, &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	if ctx.Err() != nil {
		t.Fatalf("run returned only when the test's deadline passed\noutput:\n%s", out.String())
	}

	got := out.String()
	if !strings.Contains(got, `qmp_up{vm="demo"} 1`) {
		t.Errorf("output lacks qmp_up{vm=\"demo\"} 1\noutput:\n%s", got)
	}
	stop := regexp.MustCompile(`(?m)^\S+ +qmp_events_total\{event="STOP",vm="demo"\} [1-9][0-9]* +\((new|was [0-9]+)\)$`)
	if !stop.MatchString(got) {
		t.Errorf("output lacks a changed qmp_events_total{event=\"STOP\",vm=\"demo\"} line\noutput:\n%s", got)
	}
}
