package promlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ShortenFor returns a copy of a Prometheus rules file in which the `for`
// of every alerting rule is at most d (e.g. 0s, so that a test sees the
// alert fire at once). Everything else is kept as it is.
func ShortenFor(rules []byte, d time.Duration) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(rules, &doc); err != nil {
		return nil, fmt.Errorf("promlab: rules: %w", err)
	}
	if len(doc.Content) != 1 {
		return nil, errors.New("promlab: rules: not a YAML document")
	}
	groups := mapValue(doc.Content[0], "groups")
	if groups == nil || groups.Kind != yaml.SequenceNode {
		return nil, errors.New("promlab: rules: no groups")
	}
	for _, g := range groups.Content {
		rs := mapValue(g, "rules")
		if rs == nil {
			continue
		}
		for _, r := range rs.Content {
			if mapValue(r, "alert") == nil {
				continue
			}
			f := mapValue(r, "for")
			if f == nil {
				continue
			}
			cur, err := parseDuration(f.Value)
			if err != nil {
				return nil, fmt.Errorf("promlab: rules: line %d: for: %w", f.Line, err)
			}
			if cur > d {
				f.Value = promDuration(d)
				f.Style = 0
			}
		}
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("promlab: rules: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("promlab: rules: %w", err)
	}
	return out.Bytes(), nil
}

// mapValue returns the value of key in a YAML mapping node, or nil.
func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

var durationPart = regexp.MustCompile(`(\d+)(ms|y|w|d|h|m|s)`)

// parseDuration parses a Prometheus duration such as 1h30m or 0s.
func parseDuration(s string) (time.Duration, error) {
	if s == "" || durationPart.ReplaceAllString(s, "") != "" {
		return 0, fmt.Errorf("bad duration %q", s)
	}
	units := map[string]time.Duration{
		"ms": time.Millisecond, "s": time.Second, "m": time.Minute, "h": time.Hour,
		"d": 24 * time.Hour, "w": 7 * 24 * time.Hour, "y": 365 * 24 * time.Hour,
	}
	var d time.Duration
	for _, m := range durationPart.FindAllStringSubmatch(s, -1) {
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bad duration %q: %w", s, err)
		}
		d += time.Duration(n) * units[m[2]]
	}
	return d, nil
}

// promDuration formats d for a rules file (whole milliseconds).
func promDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return strconv.FormatInt(int64(d/time.Millisecond), 10) + "ms"
}

// checkRecordPrefix names the recording rules CheckExprs writes; the index
// of the expression follows it.
const checkRecordPrefix = "promlab_check:expr_"

var checkRecordRE = regexp.MustCompile(regexp.QuoteMeta(checkRecordPrefix) + `(\d+)`)

// CheckExprs checks that every expression parses, by writing them as
// recording rules into a rules file in dir and running `promtool check
// rules` on it: the check of the Prometheus that will run them, where Scan
// is the parser version go.mod pins. The error names each expression
// promtool rejects and its reason.
func CheckExprs(ctx context.Context, promtool, dir string, exprs []string) error {
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	type group struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	}
	g := group{Name: "promlab_check"}
	for i, e := range exprs {
		g.Rules = append(g.Rules, rule{Record: checkRecordPrefix + strconv.Itoa(i), Expr: e})
	}
	b, err := yaml.Marshal(struct {
		Groups []group `yaml:"groups"`
	}{[]group{g}})
	if err != nil {
		return fmt.Errorf("promlab: %w", err)
	}
	f, err := os.CreateTemp(dir, "check-*.rules.yml")
	if err != nil {
		return fmt.Errorf("promlab: %w", err)
	}
	path := f.Name()
	defer os.Remove(path)
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("promlab: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("promlab: %w", err)
	}
	out, err := exec.CommandContext(ctx, promtool, "check", "rules", path).CombinedOutput()
	if err == nil {
		return nil
	}
	var msgs []string
	for _, line := range strings.Split(string(out), "\n") {
		m := checkRecordRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		i, _ := strconv.Atoi(m[1])
		if i < len(exprs) {
			msgs = append(msgs, fmt.Sprintf("%s\n    expr: %s", strings.TrimSpace(strings.ReplaceAll(line, path+":", "")), exprs[i]))
		}
	}
	if len(msgs) == 0 {
		return fmt.Errorf("promlab: %s check rules %s: %v\n%s", filepath.Base(promtool), path, err, out)
	}
	return fmt.Errorf("promlab: promtool rejects %d expression(s):\n  %s", len(msgs), strings.Join(msgs, "\n  "))
}
