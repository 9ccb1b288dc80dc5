package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process whose CPU time and memory the bench reads from
// /proc.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stderr *tailBuffer
	done   chan struct{}
	err    error
}

func startProc(name, bin string, args, env []string, stdout io.Writer) (*proc, error) {
	p := &proc{name: name, stderr: &tailBuffer{max: 64 << 10}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout = stdout
	p.cmd.Stderr = p.stderr
	// Children die with the bench, even if it is killed.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to d, then kills.
func (p *proc) stop(d time.Duration) error {
	if p.exited() {
		return p.err
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", p.name, d)
	}
}

// clockTicks is the kernel's USER_HZ, the unit of utime and stime.
var clockTicks = func() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 100
}()

// cpuTime returns the process's user plus system CPU time, all threads,
// from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(b, clockTicks)
}

// parseStatCPU reads utime and stime (fields 14 and 15) of a
// /proc/PID/stat line. The command name, field 2, may hold spaces and
// parentheses, so fields are counted from its closing parenthesis.
func parseStatCPU(b []byte, ticksPerSecond int64) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc/PID/stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/PID/stat: %w", err)
	}
	return time.Duration((utime + stime) * int64(time.Second) / ticksPerSecond), nil
}

// rss returns VmRSS from /proc/PID/status, in bytes.
func rss(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseVMRSS(b)
}

func parseVMRSS(b []byte) (int64, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("unexpected VmRSS line %q", line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc/PID/status")
}

// openFDs counts the process's open file descriptors.
func openFDs(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0
	}
	return len(ents)
}

// exporter is a running qmp_exporter.
type exporter struct {
	*proc
	addr   string
	client *http.Client
}

// exporterEnv is added to the exporter's environment (-exporter-env), to
// try runtime settings such as GOMAXPROCS or GOGC without a rebuild.
var exporterEnv []string

func startExporter(ctx context.Context, bin, configPath string) (*exporter, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := startProc("qmp_exporter", bin, []string{
		"--config.file=" + configPath,
		"--web.listen-address=" + addr,
		"--web.disable-exporter-metrics",
		"--log.level=warn",
	}, exporterEnv, io.Discard)
	if err != nil {
		return nil, err
	}
	e := &exporter{proc: p, addr: addr, client: &http.Client{
		Timeout:   2 * time.Minute,
		Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4},
	}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := e.client.Get("http://" + addr + "/-/healthy")
		if err == nil {
			resp.Body.Close()
			return e, nil
		}
		if p.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			_ = p.stop(5 * time.Second)
			return nil, fmt.Errorf("exporter did not become healthy: %v\n%s", err, p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func (e *exporter) cpu() time.Duration {
	d, err := cpuTime(e.pid())
	if err != nil {
		return 0
	}
	return d
}

func (e *exporter) rss() int64 {
	n, _ := rss(e.pid())
	return n
}

// reload asks the exporter to re-read its configuration file.
func (e *exporter) reload(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+e.addr+"/-/reload", nil)
	if err != nil {
		return err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("reload: %s: %s", resp.Status, body)
	}
	return nil
}

// waitIdle waits until the exporter's CPU use over the last 500 ms is at
// most maxShare of one core, or limit has passed; it returns the time it
// became idle.
func (e *exporter) waitIdle(ctx context.Context, maxShare float64, limit time.Duration) time.Time {
	const step = 100 * time.Millisecond
	const span = 5 // steps
	var hist []time.Duration
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		hist = append(hist, e.cpu())
		if n := len(hist); n > span {
			used := hist[n-1] - hist[n-1-span]
			if used.Seconds() <= maxShare*(span*step).Seconds() {
				return time.Now()
			}
		}
		time.Sleep(step)
	}
	return time.Now()
}

// loadgen is a running qmp-loadgen process and the lines it printed.
type loadgen struct {
	*proc
	mu    sync.Mutex
	lines []string // every line but the per-VM ones
	seen  map[string]time.Time
	perVM map[string]int64 // events sent, from the per-VM lines at exit
	eof   chan struct{}
}

func startLoadgen(bin string, args []string) (*loadgen, error) {
	pr, pw := io.Pipe()
	p, err := startProc("qmp-loadgen", bin, args, nil, pw)
	if err != nil {
		return nil, err
	}
	l := &loadgen{proc: p, seen: map[string]time.Time{}, perVM: map[string]int64{}, eof: make(chan struct{})}
	go func() { <-p.done; pw.Close() }()
	go func() {
		defer close(l.eof)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if rest, ok := strings.CutPrefix(line, "vm "); ok {
				kv := parseKV(rest)
				n, _ := strconv.ParseInt(kv["sent"], 10, 64)
				l.mu.Lock()
				l.perVM[kv["name"]] += n
				l.mu.Unlock()
				continue
			}
			kind, _, _ := strings.Cut(line, " ")
			l.mu.Lock()
			l.lines = append(l.lines, line)
			if _, ok := l.seen[kind]; !ok {
				l.seen[kind] = time.Now()
			}
			l.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	return l, nil
}

// line returns the last line of the given kind (its first word), parsed
// into key=value pairs, and when the first such line came.
func (l *loadgen) line(kind string) (map[string]string, time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.lines) - 1; i >= 0; i-- {
		if k, rest, _ := strings.Cut(l.lines[i], " "); k == kind {
			return parseKV(rest), l.seen[kind], true
		}
	}
	return nil, time.Time{}, false
}

func parseKV(s string) map[string]string {
	m := map[string]string{}
	for f := range strings.FieldsSeq(s) {
		if k, v, ok := strings.Cut(f, "="); ok {
			m[k] = v
		}
	}
	return m
}

// fleet is the load generator processes of one run.
type fleet []*loadgen

// waitLine waits until every process printed a line of the given kind.
func (fl fleet) waitLine(ctx context.Context, kind string, limit time.Duration) (time.Time, error) {
	deadline := time.Now().Add(limit)
	for {
		last, all := time.Time{}, true
		for _, l := range fl {
			_, at, ok := l.line(kind)
			if !ok {
				all = false
				if l.exited() {
					return time.Time{}, fmt.Errorf("qmp-loadgen exited before %q: %v\n%s", kind, l.err, l.stderr)
				}
				break
			}
			if at.After(last) {
				last = at
			}
		}
		if all {
			return last, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Time{}, fmt.Errorf("qmp-loadgen did not print %q within %s", kind, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sum adds up a numeric field of every process's last line of a kind.
func (fl fleet) sum(kind, key string) int64 {
	var n int64
	for _, l := range fl {
		if m, _, ok := l.line(kind); ok {
			v, _ := strconv.ParseInt(m[key], 10, 64)
			n += v
		}
	}
	return n
}

func (fl fleet) signal(sig os.Signal) {
	for _, l := range fl {
		_ = l.cmd.Process.Signal(sig)
	}
}

// stop ends every process (SIGTERM: they close their sockets and print
// their totals) and returns the totals summed.
func (fl fleet) stop() (genTotals, error) {
	var errs []error
	for _, l := range fl {
		_ = l.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, l := range fl {
		select {
		case <-l.done:
		case <-time.After(30 * time.Second):
			_ = l.cmd.Process.Kill()
			<-l.done
			errs = append(errs, errors.New("qmp-loadgen did not exit within 30 s of SIGTERM"))
		}
		<-l.eof
	}
	t := genTotals{
		perVM:    map[string]int64{},
		commands: fl.sum("total", "commands"),
		sent:     fl.sum("total", "sent"),
		refused:  fl.sum("total", "refused"),
		unknown:  fl.sum("total", "unknown"),
		sessions: fl.sum("total", "sessions"),
	}
	for _, l := range fl {
		l.mu.Lock()
		for k, v := range l.perVM {
			t.perVM[k] += v
		}
		l.mu.Unlock()
		if _, _, ok := l.line("total"); !ok {
			errs = append(errs, fmt.Errorf("qmp-loadgen printed no total: %v\n%s", l.err, l.stderr))
		}
	}
	return t, errors.Join(errs...)
}

// genTotals are what the load generators report at exit.
type genTotals struct {
	sent, refused, unknown, sessions, commands int64
	perVM                                      map[string]int64 // events sent by VM name
}

func (t *genTotals) add(o genTotals) {
	if t.perVM == nil {
		t.perVM = map[string]int64{}
	}
	for k, v := range o.perVM {
		t.perVM[k] += v
	}
	t.commands += o.commands
	t.sent += o.sent
	t.refused += o.refused
	t.unknown += o.unknown
	t.sessions += o.sessions
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
