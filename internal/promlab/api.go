package promlab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Sample is one series of an instant query's result.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Series is one series of a range query's result.
type Series struct {
	Labels map[string]string
	Points []Point
}

// Point is one value of a Series.
type Point struct {
	Time  time.Time
	Value float64
}

// Alert is one alert as /api/v1/alerts lists it.
type Alert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	// State is "pending" or "firing".
	State    string    `json:"state"`
	ActiveAt time.Time `json:"activeAt"`
	Value    string    `json:"value"`
}

// Name returns the alert's alertname label.
func (a Alert) Name() string { return a.Labels["alertname"] }

// String describes the alert on one line, for messages.
func (a Alert) String() string {
	return fmt.Sprintf("%s %s %s", a.State, a.Name(), labelString(a.Labels, "alertname"))
}

// Rule is one rule as /api/v1/rules lists it.
type Rule struct {
	Name      string `json:"name"`
	Type      string `json:"type"` // "alerting" or "recording"
	Query     string `json:"query"`
	Health    string `json:"health"` // "ok", "err" or "unknown"
	LastError string `json:"lastError"`
	State     string `json:"state"` // alerting rules: "inactive", "pending" or "firing"
}

type apiResponse struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Data      json.RawMessage `json:"data"`
}

// get calls a GET endpoint of the API and returns its data member.
func (s *Server) get(ctx context.Context, path string, params url.Values) (json.RawMessage, error) {
	u := s.URL + path
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("promlab: %w", err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("promlab: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("promlab: GET %s: %w", path, err)
	}
	var r apiResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("promlab: GET %s: %s: %.200q", path, resp.Status, body)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("promlab: GET %s: %s: %s: %s", path, resp.Status, r.ErrorType, r.Error)
	}
	return r.Data, nil
}

type queryData struct {
	ResultType string          `json:"resultType"`
	Result     json.RawMessage `json:"result"`
}

// Query runs an instant query at the current time. A scalar result is
// returned as one sample without labels; a string result is an error.
func (s *Server) Query(ctx context.Context, expr string) ([]Sample, error) {
	data, err := s.get(ctx, "/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return nil, fmt.Errorf("%w (query %s)", err, expr)
	}
	var qd queryData
	if err := json.Unmarshal(data, &qd); err != nil {
		return nil, fmt.Errorf("promlab: query %s: %w", expr, err)
	}
	switch qd.ResultType {
	case "vector":
		var raw []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(qd.Result, &raw); err != nil {
			return nil, fmt.Errorf("promlab: query %s: %w", expr, err)
		}
		out := make([]Sample, 0, len(raw))
		for _, r := range raw {
			_, v, err := point(r.Value)
			if err != nil {
				return nil, fmt.Errorf("promlab: query %s: %w", expr, err)
			}
			out = append(out, Sample{Labels: r.Metric, Value: v})
		}
		return out, nil
	case "scalar":
		var raw [2]any
		if err := json.Unmarshal(qd.Result, &raw); err != nil {
			return nil, fmt.Errorf("promlab: query %s: %w", expr, err)
		}
		_, v, err := point(raw)
		if err != nil {
			return nil, fmt.Errorf("promlab: query %s: %w", expr, err)
		}
		return []Sample{{Labels: map[string]string{}, Value: v}}, nil
	default:
		return nil, fmt.Errorf("promlab: query %s: unexpected result type %q", expr, qd.ResultType)
	}
}

// QueryRange runs a range query from start to end with the given step, as
// Grafana does for a time series panel.
func (s *Server) QueryRange(ctx context.Context, expr string, start, end time.Time, step time.Duration) ([]Series, error) {
	data, err := s.get(ctx, "/api/v1/query_range", url.Values{
		"query": {expr},
		"start": {formatTime(start)},
		"end":   {formatTime(end)},
		"step":  {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)},
	})
	if err != nil {
		return nil, fmt.Errorf("%w (query %s)", err, expr)
	}
	var qd queryData
	if err := json.Unmarshal(data, &qd); err != nil {
		return nil, fmt.Errorf("promlab: query %s: %w", expr, err)
	}
	if qd.ResultType != "matrix" {
		return nil, fmt.Errorf("promlab: range query %s: unexpected result type %q", expr, qd.ResultType)
	}
	var raw []struct {
		Metric map[string]string `json:"metric"`
		Values [][2]any          `json:"values"`
	}
	if err := json.Unmarshal(qd.Result, &raw); err != nil {
		return nil, fmt.Errorf("promlab: query %s: %w", expr, err)
	}
	out := make([]Series, 0, len(raw))
	for _, r := range raw {
		se := Series{Labels: r.Metric}
		for _, p := range r.Values {
			t, v, err := point(p)
			if err != nil {
				return nil, fmt.Errorf("promlab: query %s: %w", expr, err)
			}
			se.Points = append(se.Points, Point{Time: t, Value: v})
		}
		out = append(out, se)
	}
	return out, nil
}

func formatTime(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixNano())/1e9, 'f', 3, 64)
}

// point decodes a [unix seconds, "value"] pair of the API.
func point(p [2]any) (time.Time, float64, error) {
	ts, ok := p[0].(float64)
	if !ok {
		return time.Time{}, 0, fmt.Errorf("bad timestamp %v", p[0])
	}
	vs, ok := p[1].(string)
	if !ok {
		return time.Time{}, 0, fmt.Errorf("bad value %v", p[1])
	}
	v, err := strconv.ParseFloat(vs, 64)
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("bad value %q: %w", vs, err)
	}
	sec := int64(ts)
	return time.Unix(sec, int64((ts-float64(sec))*1e9)), v, nil
}

// Alerts returns the pending and firing alerts.
func (s *Server) Alerts(ctx context.Context) ([]Alert, error) {
	data, err := s.get(ctx, "/api/v1/alerts", nil)
	if err != nil {
		return nil, err
	}
	var d struct {
		Alerts []Alert `json:"alerts"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("promlab: alerts: %w", err)
	}
	return d.Alerts, nil
}

// Rules returns every loaded rule, alerting and recording, in file order.
func (s *Server) Rules(ctx context.Context) ([]Rule, error) {
	data, err := s.get(ctx, "/api/v1/rules", nil)
	if err != nil {
		return nil, err
	}
	var d struct {
		Groups []struct {
			Rules []Rule `json:"rules"`
		} `json:"groups"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("promlab: rules: %w", err)
	}
	var out []Rule
	for _, g := range d.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// pollInterval is how often the Wait methods ask again.
const pollInterval = 200 * time.Millisecond

// WaitAlert polls /api/v1/alerts until an alert named name is firing with
// (at least) the given labels, and returns it. On timeout the error lists
// the alerts Prometheus had, and the state of the rules named name.
func (s *Server) WaitAlert(ctx context.Context, name string, labels map[string]string) (Alert, error) {
	return s.WaitAlertFunc(ctx, name, labels, nil)
}

// WaitAlertFunc is WaitAlert with a further condition on the alert (its
// annotations, say); a nil match accepts any.
func (s *Server) WaitAlertFunc(ctx context.Context, name string, labels map[string]string, match func(Alert) bool) (Alert, error) {
	var last []Alert
	var lastErr error
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		alerts, err := s.Alerts(ctx)
		lastErr = err
		if err == nil {
			last = alerts
			for _, a := range alerts {
				if a.State == "firing" && a.Name() == name && hasLabels(a.Labels, labels) && (match == nil || match(a)) {
					return a, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			var b strings.Builder
			fmt.Fprintf(&b, "promlab: alert %s%s not firing: %v", name, labelString(labels), ctx.Err())
			if lastErr != nil {
				fmt.Fprintf(&b, " (last error: %v)", lastErr)
			}
			b.WriteString("\nalerts:")
			for _, a := range last {
				b.WriteString("\n  " + a.String())
				if a.Name() == name {
					fmt.Fprintf(&b, " %q", a.Annotations)
				}
			}
			if rules, err := s.Rules(context.Background()); err == nil {
				for _, r := range rules {
					if r.Name == name {
						fmt.Fprintf(&b, "\nrule %s: health %s %s, state %s, query %s", r.Name, r.Health, r.LastError, r.State, r.Query)
					}
				}
			}
			return Alert{}, fmt.Errorf("%s", b.String())
		case <-tick.C:
		}
	}
}

// WaitQuery runs an instant query until cond holds for its result, and
// returns that result. On timeout the error shows the last result.
func (s *Server) WaitQuery(ctx context.Context, expr string, cond func([]Sample) bool) ([]Sample, error) {
	var last []Sample
	var lastErr error
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		res, err := s.Query(ctx, expr)
		lastErr = err
		if err == nil {
			last = res
			if cond(res) {
				return res, nil
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("promlab: waiting for %s: %v (last error %v); last result:\n%s", expr, ctx.Err(), lastErr, FormatSamples(last))
		case <-tick.C:
		}
	}
}

// FormatSamples renders samples one per line, sorted, for messages.
func FormatSamples(samples []Sample) string {
	lines := make([]string, 0, len(samples))
	for _, s := range samples {
		lines = append(lines, labelString(s.Labels)+" "+strconv.FormatFloat(s.Value, 'g', -1, 64))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// labelString renders labels as {a="1", b="2"}, sorted, leaving out skip.
func labelString(labels map[string]string, skip ...string) string {
	keys := make([]string, 0, len(labels))
outer:
	for k := range labels {
		for _, s := range skip {
			if k == s {
				continue outer
			}
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.Quote(labels[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
