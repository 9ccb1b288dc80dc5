package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// config is what the flags set.
type config struct {
	n, first   int
	rate       float64 // events per second per VM; 0 floods
	duration   time.Duration
	burst      int
	hang       int
	dir        string // socket mode: the directory of the sockets
	dial       string // dial mode: the listener to dial
	reconnect  time.Duration
	waitSignal bool
	perVM      bool
	mix        string // a key of mixes; "" is "full"
}

// fleet is the set of fake VMs and the sending window they share.
type fleet struct {
	cfg  config
	vms  []*vm
	out  io.Writer // results, one line each
	logw io.Writer // diagnostics
	omu  sync.Mutex

	// The sending window: started is closed once start and end are set.
	startOnce  sync.Once
	started    chan struct{}
	start, end time.Time
	senders    atomic.Int64 // event senders running
	sentOnce   sync.Once

	negotiatedVMs atomic.Int64 // VMs that negotiated at least once
	refusedAny    atomic.Bool
}

func newFleet(cfg config, out, logw io.Writer) *fleet {
	f := &fleet{cfg: cfg, out: out, logw: logw, started: make(chan struct{})}
	mix := mixes[cfg.mix]
	if mix == nil {
		mix = mixes["full"]
	}
	for i := range cfg.n {
		f.vms = append(f.vms, newVM(cfg.first+i, i < cfg.hang, mix))
	}
	return f
}

func (f *fleet) printf(format string, args ...any) {
	f.omu.Lock()
	defer f.omu.Unlock()
	fmt.Fprintf(f.out, format+"\n", args...)
}

func (f *fleet) logf(format string, args ...any) {
	f.omu.Lock()
	defer f.omu.Unlock()
	fmt.Fprintf(f.logw, "qmp-loadgen: "+format+"\n", args...)
}

// socketPath is where VM v listens in socket mode.
func (f *fleet) socketPath(v *vm) string { return filepath.Join(f.cfg.dir, v.name+".qmp") }

// negotiated records that v completed a handshake; the first time every
// VM has, the window starts unless it waits for a signal.
func (f *fleet) negotiated(v *vm) {
	if !v.everNegotiated.CompareAndSwap(false, true) {
		return // only a VM's first negotiation counts
	}
	if int(f.negotiatedVMs.Add(1)) == len(f.vms) {
		f.printf("negotiated vms=%d", len(f.vms))
		if !f.cfg.waitSignal {
			f.startWindow()
		}
	}
}

// startWindow opens the sending window (once) and prints "sent" when it
// has closed and every sender has stopped.
func (f *fleet) startWindow() {
	f.startOnce.Do(func() {
		f.start = time.Now()
		f.end = f.start.Add(f.cfg.duration)
		close(f.started)
		rate := "flood"
		if f.cfg.rate > 0 {
			rate = fmt.Sprint(f.cfg.rate)
		}
		f.printf("sending vms=%d rate=%s duration=%s", len(f.vms), rate, f.cfg.duration)
		go func() {
			time.Sleep(time.Until(f.end))
			for f.senders.Load() > 0 {
				time.Sleep(5 * time.Millisecond)
			}
			f.sentOnce.Do(func() {
				f.printf("sent vms=%d events=%d", len(f.vms), f.totals().sent)
			})
		}()
	})
}

// listen opens every VM's socket. Stale socket files are removed, as QEMU
// does.
func (f *fleet) listen() ([]net.Listener, error) {
	if err := os.MkdirAll(f.cfg.dir, 0o755); err != nil {
		return nil, err
	}
	var lns []net.Listener
	for _, v := range f.vms {
		p := f.socketPath(v)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			closeAll(lns)
			return nil, err
		}
		ln, err := net.Listen("unix", p)
		if err != nil {
			closeAll(lns)
			return nil, err
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		_ = ln.Close()
	}
}

// serveListener serves one client at a time, as a QEMU monitor does:
// while a session is up, further connections wait in the listen backlog
// and get no greeting.
func (f *fleet) serveListener(ctx context.Context, v *vm, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		v.serve(ctx, f, c)
		if ctx.Err() != nil {
			return
		}
	}
}

// dialLoop connects to the listener like a QEMU started with
// -chardev socket,...,reconnect=N: dial, serve, wait, dial again.
func (f *fleet) dialLoop(ctx context.Context, v *vm) {
	var d net.Dialer
	for ctx.Err() == nil {
		c, err := d.DialContext(ctx, "unix", f.cfg.dial)
		if err == nil {
			v.serve(ctx, f, c)
		}
		select {
		case <-ctx.Done():
		case <-time.After(f.cfg.reconnect):
		}
	}
}

// run serves until ctx ends. The listeners (socket mode) are open when it
// prints "listening".
func (f *fleet) run(ctx context.Context) error {
	var wg sync.WaitGroup
	if f.cfg.dial != "" {
		f.printf("dialing vms=%d path=%s", len(f.vms), f.cfg.dial)
		for _, v := range f.vms {
			wg.Go(func() { f.dialLoop(ctx, v) })
		}
	} else {
		lns, err := f.listen()
		if err != nil {
			return err
		}
		for i, v := range f.vms {
			wg.Go(func() { f.serveListener(ctx, v, lns[i]) })
		}
		f.printf("listening vms=%d dir=%s", len(f.vms), f.cfg.dir)
		<-ctx.Done()
		closeAll(lns) // unlinks the socket files, as an exiting QEMU does
	}
	wg.Wait()
	return nil
}

// totals are the fleet's counters summed.
type totals struct {
	sent, sessions, commands, unknown, refused, malformed uint64
}

func (f *fleet) totals() totals {
	var t totals
	for _, v := range f.vms {
		t.sent += v.sent.Load()
		t.sessions += v.sessions.Load()
		t.commands += v.commands.Load()
		t.unknown += v.unknown.Load()
		t.refused += v.refused.Load()
		t.malformed += v.malformed.Load()
	}
	return t
}

func (t totals) String() string {
	return fmt.Sprintf("sent=%d sessions=%d commands=%d unknown=%d refused=%d malformed=%d",
		t.sent, t.sessions, t.commands, t.unknown, t.refused, t.malformed)
}

// report prints the per-VM lines (if asked) and the total.
func (f *fleet) report(prefix string) {
	if prefix == "total" && f.cfg.perVM {
		var b strings.Builder
		for _, v := range f.vms {
			fmt.Fprintf(&b, "vm name=%s sent=%d sessions=%d commands=%d unknown=%d refused=%d malformed=%d\n",
				v.name, v.sent.Load(), v.sessions.Load(), v.commands.Load(), v.unknown.Load(), v.refused.Load(), v.malformed.Load())
		}
		f.omu.Lock()
		_, _ = io.WriteString(f.out, b.String())
		f.omu.Unlock()
	}
	f.printf("%s vms=%d %s", prefix, len(f.vms), f.totals())
}

// writeConfig writes an exporter configuration file listing the sockets.
func (f *fleet) writeConfig(path string) error {
	var b strings.Builder
	b.WriteString("# Written by qmp-loadgen: the sockets of its fake VMs.\nvms:\n")
	for _, v := range f.vms {
		fmt.Fprintf(&b, "  - socket: %s\n", f.socketPath(v))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
