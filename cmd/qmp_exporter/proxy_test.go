package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"path/filepath"
	"sort"
	"sync"
	"testing"
)

// commandRecorder is a unix socket proxy between the exporter and a QEMU
// monitor that records every command the exporter sends, to check them
// against the read-only allow-list on a real QEMU.
type commandRecorder struct {
	Path string

	mu       sync.Mutex
	commands map[string]int
	wg       sync.WaitGroup
}

func newCommandRecorder(t *testing.T, upstream string) *commandRecorder {
	t.Helper()
	r := &commandRecorder{Path: filepath.Join(t.TempDir(), "proxy.qmp"), commands: map[string]int{}}
	ln, err := net.Listen("unix", r.Path)
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("unix", upstream)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			r.wg.Go(func() { io.Copy(c, u); c.Close() })
			r.wg.Go(func() {
				sc := bufio.NewScanner(c)
				sc.Buffer(nil, 1<<20)
				for sc.Scan() {
					var cmd struct {
						Execute string `json:"execute"`
					}
					if json.Unmarshal(sc.Bytes(), &cmd) != nil || cmd.Execute == "" {
						cmd.Execute = "<not a command: " + sc.Text() + ">"
					}
					r.mu.Lock()
					r.commands[cmd.Execute]++
					r.mu.Unlock()
					if _, err := u.Write(append(sc.Bytes(), '\n')); err != nil {
						break
					}
				}
				u.Close()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		r.wg.Wait()
	})
	return r
}

// Commands returns the distinct commands seen, sorted.
func (r *commandRecorder) Commands() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for c := range r.commands {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// Count returns how many times the exporter sent command.
func (r *commandRecorder) Count(command string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.commands[command]
}
