package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-logfmt/logfmt"

	"github.com/qmp-exporter/qmp_exporter/internal/exporterproc"
)

// TestLogLinesCarryEachFieldOnce starts the real exporter in both log
// formats and reads every line it wrote, ours and exporter-toolkit's
// (through the slog bridge): each has ts, caller, level and msg, and no
// key twice.
func TestLogLinesCarryEachFieldOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the exporter")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	bin := buildExporter(t, ctx)
	for _, format := range []string{"logfmt", "json"} {
		t.Run(format, func(t *testing.T) {
			exp, err := exporterproc.Start(ctx, bin, "--log.format="+format, "--qmp.socket=/nonexistent/vm.qmp")
			if err != nil {
				t.Fatal(err)
			}
			sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			if err := exp.Stop(sctx); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(exp.Logs()), "\n")
			toolkit := false
			for _, line := range lines {
				keys, err := logKeys(format, line)
				if err != nil {
					t.Errorf("%v: %s", err, line)
					continue
				}
				seen := map[string]int{}
				for _, k := range keys {
					seen[k]++
				}
				for k, n := range seen {
					if n > 1 {
						t.Errorf("key %s %d times in %s", k, n, line)
					}
				}
				for _, k := range []string{"ts", "caller", "level", "msg"} {
					if seen[k] != 1 {
						t.Errorf("no %s in %s", k, line)
					}
				}
				toolkit = toolkit || strings.Contains(line, "Listening on")
			}
			if !toolkit || len(lines) < 3 {
				t.Errorf("exporter-toolkit's line is missing from:\n%s", exp.Logs())
			}
		})
	}
}

// logKeys returns the keys of one log line, repeated ones included.
func logKeys(format, line string) ([]string, error) {
	var keys []string
	if format == "logfmt" {
		d := logfmt.NewDecoder(strings.NewReader(line))
		for d.ScanRecord() {
			for d.ScanKeyval() {
				keys = append(keys, string(d.Key()))
			}
		}
		return keys, d.Err()
	}
	d := json.NewDecoder(bytes.NewReader([]byte(line)))
	if _, err := d.Token(); err != nil { // {
		return nil, err
	}
	for d.More() {
		k, err := d.Token()
		if err != nil {
			return nil, err
		}
		keys = append(keys, k.(string))
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			return nil, err
		}
	}
	return keys, nil
}
