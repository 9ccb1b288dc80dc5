package qmp

import (
	"testing"
)

func TestParseFields(t *testing.T) {
	var f Fields
	data := []byte(`{"device": "", "node-name": "#block123", "operation": "write", "action": "stop", "nospace": true, "reason": "No space left on device", "offset": -3600, "qom-path": "/machine/peripheral/disk0/virtio-backend", "esc": "a\u0041\n", "obj": {"x": [1, 2]}}`)
	if err := ParseFields(data, &f); err != nil {
		t.Fatal(err)
	}
	if s, ok := f.String("device"); !ok || s != "" {
		t.Errorf("device = %q, %v", s, ok)
	}
	if s, ok := f.String("operation"); !ok || s != "write" {
		t.Errorf("operation = %q, %v", s, ok)
	}
	if b, ok := f.Bool("nospace"); !ok || !b {
		t.Errorf("nospace = %v, %v", b, ok)
	}
	if n, ok := f.Int("offset"); !ok || n != -3600 {
		t.Errorf("offset = %v, %v", n, ok)
	}
	if s, ok := f.String("esc"); !ok || s != "aA\n" {
		t.Errorf("esc = %q, %v", s, ok)
	}
	if string(f.Raw("obj")) != `{"x": [1, 2]}` {
		t.Errorf("obj = %s", f.Raw("obj"))
	}
	if _, ok := f.String("obj"); ok {
		t.Error("an object read as a string")
	}
	if f.Has("missing") || f.Raw("missing") != nil {
		t.Error("missing member found")
	}
	if _, ok := f.Int("device"); ok {
		t.Error("a string read as an int")
	}
	for _, bad := range []string{``, `[]`, `"x"`, `{"a": }`, `{"a": 1} x`, `{"a" 1}`} {
		if err := ParseFields([]byte(bad), &f); err == nil {
			t.Errorf("ParseFields(%q) succeeded", bad)
		}
	}
}

func BenchmarkParseFields(b *testing.B) {
	data := []byte(`{"device": "", "node-name": "disk0-format", "operation": "write", "action": "stop", "nospace": false, "reason": "Input/output error", "qom-path": "/machine/peripheral/disk0/virtio-backend"}`)
	var f Fields
	b.ReportAllocs()
	for b.Loop() {
		if err := ParseFields(data, &f); err != nil {
			b.Fatal(err)
		}
		if _, ok := f.StringBytes("qom-path"); !ok {
			b.Fatal("no qom-path")
		}
	}
}
