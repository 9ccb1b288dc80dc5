package main

import (
	"fmt"
	"strings"
	"time"
)

// report renders the results.
type report struct {
	machine machineInfo
	runs    []*result
	cmdline string
	took    time.Duration
	gobench string
	opts    options
}

func (rep report) find(prefix string) *result {
	for _, r := range rep.runs {
		if strings.HasPrefix(r.Name, prefix) {
			return r
		}
	}
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func (rep report) markdown() string {
	var b strings.Builder
	m := rep.machine
	fmt.Fprintf(&b, "# qmp_exporter benchmark\n\n")
	fmt.Fprintf(&b, "Machine: %s, %d cores, %.1f GiB RAM, Linux %s, %s, open-file limit %d.  \n", m.CPU, m.Cores, m.MemGiB, m.Kernel, m.Go, m.FileLimit)
	fmt.Fprintf(&b, "Tree: %s. Command: `%s` (`make bench` runs it with `-out .build/bench`), %s, took %s.\n\n",
		m.Revision, rep.cmdline, time.Now().UTC().Format("2006-01-02 15:04 UTC"), rep.took.Round(time.Second))

	b.WriteString("## Targets\n\n| Measure | Target | Measured | |\n| --- | --- | --- | --- |\n")
	row := func(measure, target, measured string, ok bool) {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", measure, target, measured, verdict(ok))
	}
	for _, name := range []string{"flood-1", "flood-100"} {
		if r := rep.find(name); r != nil && r.Counted > 0 {
			row(fmt.Sprintf("CPU per event, flood, %d VM%s", r.VMs, plural(r.VMs)), "≤ 2.0 µs",
				fmt.Sprintf("%.2f µs (%s events/s)", r.cpuPerEvent(), thousands(int64(r.eventsPerSecond()))), r.cpuPerEvent() <= 2.0)
		}
	}
	mid := rep.find(fmt.Sprintf("rate-%dx10", rep.opts.mid))
	if mid != nil && mid.Counted > 0 {
		row(fmt.Sprintf("CPU per event, %s VMs × 10/s", thousands(int64(mid.VMs))), "≤ 25 µs",
			fmt.Sprintf("%.1f µs (%.1f%% of a core)", mid.cpuPerEvent(), 100*mid.CPU.Seconds()/mid.Busy.Seconds()), mid.cpuPerEvent() <= 25)
	}
	big := rep.find(fmt.Sprintf("idle-%d", rep.opts.big))
	if big != nil && big.RSSIdle > 0 {
		per := float64(big.RSSIdle-big.RSS0) / float64(big.VMs)
		row(fmt.Sprintf("RSS per idle VM, %s VMs", thousands(int64(big.VMs))), "≤ 12 KiB",
			fmt.Sprintf("%s ((%s − %s) / %s)", humanBytes(per), humanBytes(float64(big.RSSIdle)), humanBytes(float64(big.RSS0)), thousands(int64(big.VMs))), per <= 12<<10)
	}
	var lost []string
	lostOK, refused := true, int64(0)
	for _, r := range rep.runs {
		if r.Sent == 0 {
			continue
		}
		if r.Lost != 0 || r.Extra != 0 {
			lostOK = false
			lost = append(lost, fmt.Sprintf("%s: %s lost, %s counted but not sent", r.Name, thousands(r.Lost), thousands(r.Extra)))
		}
		refused += r.Refused
	}
	if lostOK {
		row("Events lost (sent − counted, VM by VM), every run", "0", "0 in every run, handshake bursts included", true)
	} else {
		row("Events lost (sent − counted, VM by VM), every run", "0", strings.Join(lost, "; "), false)
	}
	if big != nil && big.Scrapes != nil {
		row(fmt.Sprintf("/metrics at %s VMs", thousands(int64(big.VMs))), "≤ 300 ms median",
			fmt.Sprintf("%s (%s series, %s, %s gzip)", big.Scrapes, thousands(int64(big.Series)), humanBytes(float64(big.BodyBytes)), humanBytes(float64(big.Scrapes.Wire))),
			big.Scrapes.Median <= 300*time.Millisecond)
	}
	for _, r := range []*result{mid, big} {
		if r != nil && r.Scrapes != nil && r.ScrapesHung != nil {
			same := r.ScrapesHung.Median <= r.Scrapes.Median*5/4+20*time.Millisecond
			row(fmt.Sprintf("/metrics at %s VMs with one more VM hung", thousands(int64(r.VMs))), "unaffected",
				fmt.Sprintf("%s (without: median %s)", r.ScrapesHung, ms(r.Scrapes.Median)), same)
		}
	}
	if mid != nil && mid.Reconnect != nil {
		rc := mid.Reconnect
		ok := rc.AllUp <= 5*time.Second && (mid.Scrapes == nil || rc.Scrapes.Max <= 2*mid.Scrapes.P99+100*time.Millisecond)
		row(fmt.Sprintf("Reconnect after all %s VMs restart", thousands(int64(mid.VMs))), "≤ 5 s, scrapes not starved",
			fmt.Sprintf("%s (every VM negotiated after %s); exporter CPU %s, peak %.0f%% of a core; %d scrapes meanwhile, max %s",
				ms(rc.AllUp), ms(rc.Negotiated), rc.CPU, 100*rc.PeakShare, rc.Scrapes.N, ms(rc.Scrapes.Max)), ok)
	}
	row("Commands refused by the load generator (not read-only)", "0", fmt.Sprint(refused), refused == 0)

	b.WriteString("\n## Runs\n\n")
	b.WriteString("Events and CPU are those of the sending window; sent, counted and lost cover the whole run, the handshake bursts (16 events in the same write as each `qmp_capabilities` reply) included. Lost compares each VM's sent and counted events, so that a surplus on one VM cannot hide a loss on another.\n\n")
	b.WriteString("| Run | VMs | Rate per VM | Mix | Window | Events in window | Events/s | Exporter CPU | Share of a core | CPU-µs/event | Sent | Counted | Lost | Commands received | Refused |\n")
	b.WriteString("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rep.runs {
		if r.Window == 0 {
			continue
		}
		share := 0.0
		if r.Busy > 0 {
			share = r.CPU.Seconds() / r.Busy.Seconds()
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %.0f%% | %.2f | %s | %s | %s | %s | %d |\n",
			r.Name, thousands(int64(r.VMs)), rateString(r.Rate), r.Mix, r.Window, thousands(int64(r.Counted)), thousands(int64(r.eventsPerSecond())),
			r.CPU.Round(10*time.Millisecond), 100*share, r.cpuPerEvent(), thousands(r.Sent), thousands(r.Final), thousands(r.Lost), thousands(r.Commands), r.Refused)
	}

	b.WriteString("\n## /metrics\n\n")
	fmt.Fprintf(&b, "%d scrapes one after the other (or as many as fit in %s, at least 5: the count is in the table), gzip as Prometheus asks, timed to the last byte.\n\n", rep.opts.scrapes, scrapeBudget)
	b.WriteString("| VMs | Series | Size (plain) | Size (gzip) | Scrapes | Median | p99 | With a hung VM: scrapes | median | p99 |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range []*result{mid, big} {
		if r == nil || r.Scrapes == nil {
			continue
		}
		hn, hm, hp := "", "", ""
		if r.ScrapesHung != nil {
			hn, hm, hp = fmt.Sprint(r.ScrapesHung.N), ms(r.ScrapesHung.Median), ms(r.ScrapesHung.P99)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %s | %s | %s | %s | %s |\n", thousands(int64(r.VMs)), thousands(int64(r.Series)),
			humanBytes(float64(r.BodyBytes)), humanBytes(float64(r.Scrapes.Wire)), r.Scrapes.N, ms(r.Scrapes.Median), ms(r.Scrapes.P99), hn, hm, hp)
	}

	if big != nil && big.RSSIdle > 0 {
		b.WriteString("\n## Memory and idle cost\n\n")
		fmt.Fprintf(&b, "- RSS with no VM: %s; with %s idle VMs, connected and synced, before any scrape: %s, so %s per VM.\n",
			humanBytes(float64(big.RSS0)), thousands(int64(big.VMs)), humanBytes(float64(big.RSSIdle)), humanBytes(float64(big.RSSIdle-big.RSS0)/float64(big.VMs)))
		fmt.Fprintf(&b, "- RSS 5 s after %d scrapes of those VMs: %s.\n", 2*rep.opts.scrapes, humanBytes(float64(big.RSSAfterScrapes)))
		fmt.Fprintf(&b, "- CPU of the idle exporter with %s VMs (each re-read every 30 s): %.1f%% of a core.\n", thousands(int64(big.VMs)), 100*big.IdleCPUShare)
	}
	if mid != nil && mid.Reconnect != nil {
		rc := mid.Reconnect
		b.WriteString("\n## Restart of every VM at once\n\n")
		fmt.Fprintf(&b, "All %s load generator sockets closed and vanished at once (SIGTERM), came back %s later; "+
			"every VM had negotiated again %s after, and `qmp_up` summed to %s after %s. "+
			"The exporter used %s of CPU from the restart until then, at most %.0f%% of a core over any 500 ms; "+
			"%d scrapes taken meanwhile: %s, max %s.\n",
			thousands(int64(mid.VMs)), ms(rc.Gap), ms(rc.Negotiated), thousands(int64(mid.VMs)), ms(rc.AllUp), rc.CPU, 100*rc.PeakShare,
			rc.Scrapes.N, rc.Scrapes, ms(rc.Scrapes.Max))
	}
	for _, r := range rep.runs {
		if r.Perf != "" {
			fmt.Fprintf(&b, "\nperf profile of %s: `%s`\n", r.Name, r.Perf)
		}
	}
	if rep.gobench != "" {
		b.WriteString("\n## Go benchmarks\n\n`go test -run='^$' -bench=. -benchmem " + strings.Join(benchPackages, " ") + "`\n\n```\n")
		b.WriteString(strings.TrimSpace(rep.gobench))
		b.WriteString("\n```\n")
	}
	return b.String()
}

// jsonRun is a result with derived figures, for results.json.
type jsonRun struct {
	*result
	CPUMicrosPerEvent float64
	EventsPerSecond   float64
}

func (rep report) jsonRuns() any {
	var out []jsonRun
	for _, r := range rep.runs {
		out = append(out, jsonRun{r, r.cpuPerEvent(), r.eventsPerSecond()})
	}
	return struct {
		Machine machineInfo
		Command string
		Runs    []jsonRun
	}{rep.machine, rep.cmdline, out}
}
