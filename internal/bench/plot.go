package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// costPlot draws CPU-µs per event against the total event rate, log-log,
// one line per number of VMs, as SVG. It returns "" with fewer than two
// points.
func costPlot(runs []*result) string {
	type point struct {
		x, y  float64
		flood bool
	}
	type key struct {
		vms int
		mix string
	}
	series := map[key][]point{}
	n := 0
	for _, r := range runs {
		if r.Window == 0 || r.Counted <= 0 || r.cpuPerEvent() <= 0 || r.eventsPerSecond() <= 0 {
			continue
		}
		k := key{r.VMs, r.Mix}
		series[k] = append(series[k], point{r.eventsPerSecond(), r.cpuPerEvent(), r.Rate <= 0})
		n++
	}
	if n < 2 {
		return ""
	}
	minX, maxX, minY, maxY := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, ps := range series {
		for _, p := range ps {
			minX, maxX = math.Min(minX, p.x), math.Max(maxX, p.x)
			minY, maxY = math.Min(minY, p.y), math.Max(maxY, p.y)
		}
	}
	// Decades that hold the points and the two targets.
	x0, x1 := math.Floor(math.Log10(minX)), math.Ceil(math.Log10(maxX))
	y0, y1 := math.Floor(math.Log10(math.Min(minY, 2))), math.Ceil(math.Log10(math.Max(maxY, 25)))
	if x1 == x0 {
		x1++
	}
	if y1 == y0 {
		y1++
	}
	const w, h, left, right, top, bottom = 800.0, 460.0, 70.0, 200.0, 40.0, 60.0
	px := func(x float64) float64 { return left + (math.Log10(x)-x0)/(x1-x0)*(w-left-right) }
	py := func(y float64) float64 { return h - bottom - (math.Log10(y)-y0)/(y1-y0)*(h-top-bottom) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="22" font-size="14" font-weight="bold">qmp_exporter: CPU time per event against the total event rate</text>`+"\n", left)
	// Grid and ticks.
	for d := x0; d <= x1; d++ {
		x := px(math.Pow(10, d))
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x, top, x, h-bottom)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, h-bottom+16, tickLabel(d))
	}
	for d := y0; d <= y1; d++ {
		y := py(math.Pow(10, d))
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, w-right, y)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, tickLabel(d))
	}
	fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#444"/>`+"\n", left, top, w-left-right, h-top-bottom)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">events per second, all VMs (log)</text>`+"\n", left+(w-left-right)/2, h-16)
	fmt.Fprintf(&b, `<text transform="translate(18 %.1f) rotate(-90)" text-anchor="middle">exporter CPU-µs per event (log)</text>`+"\n", top+(h-top-bottom)/2)
	// Targets.
	for _, t := range []struct {
		y     float64
		label string
	}{{2, "target under flood: 2 µs"}, {25, "target at 1,000 VMs × 10/s: 25 µs"}} {
		y := py(t.y)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#c00" stroke-dasharray="6 4"/>`+"\n", left, y, w-right, y)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#c00" text-anchor="end">%s</text>`+"\n", w-right-4, y-4, t.label)
	}
	colors := []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf"}
	var counts []key
	for k := range series {
		counts = append(counts, k)
	}
	sort.Slice(counts, func(i, j int) bool {
		if counts[i].vms != counts[j].vms {
			return counts[i].vms < counts[j].vms
		}
		return counts[i].mix < counts[j].mix
	})
	for i, k := range counts {
		ps := series[k]
		sort.Slice(ps, func(a, c int) bool { return ps[a].x < ps[c].x })
		col := colors[i%len(colors)]
		var path []string
		for _, p := range ps {
			path = append(path, fmt.Sprintf("%.1f,%.1f", px(p.x), py(p.y)))
		}
		dash := ""
		if k.mix != "full" {
			dash = ` stroke-dasharray="3 3"`
		}
		fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", strings.Join(path, " "), col, dash)
		for _, p := range ps {
			if p.flood {
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="9" height="9" fill="%s"><title>flood: %.0f events/s, %.2f µs</title></rect>`+"\n", px(p.x)-4.5, py(p.y)-4.5, col, p.x, p.y)
			} else {
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="4" fill="%s"><title>%.0f events/s, %.2f µs</title></circle>`+"\n", px(p.x), py(p.y), col, p.x, p.y)
			}
		}
		ly := top + 14 + float64(i)*20
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`+"\n", w-right+12, ly-4, w-right+32, ly-4, col, dash)
		label := fmt.Sprintf("%s VM%s", thousands(int64(k.vms)), plural(k.vms))
		if k.mix != "full" {
			label += ", " + k.mix + " mix"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", w-right+38, ly, label)
	}
	ly := top + 14 + float64(len(counts))*20 + 10
	fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="9" height="9" fill="#666"/><text x="%.1f" y="%.1f">flood (rate 0)</text>`+"\n", w-right+17, ly-9, w-right+38, ly)
	fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="4" fill="#666"/><text x="%.1f" y="%.1f">fixed rate per VM</text>`+"\n", w-right+21.5, ly+14, w-right+38, ly+18)
	b.WriteString("</svg>\n")
	return b.String()
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// tickLabel writes 10^d plainly: 0.1, 1, 10, 1k, 1M.
func tickLabel(d float64) string {
	v := math.Pow(10, d)
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gk", v/1e3)
	}
	return fmt.Sprintf("%g", v)
}
