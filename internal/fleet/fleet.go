// Package fleet is the set of VMs the exporter knows, whatever their
// source: the one place where sources (which write a VM's state) and the
// exposition (which reads it) meet.
//
// A source adds a VM with Add when it learns of it, changes its state
// between VM.Lock and VM.Unlock (folding events, applying query replies,
// marking it up or down), and removes it with Remove when it is gone for
// good. A reader (a scrape) walks the VMs a scrape shows with Visible,
// which also decides each VM's vm label. Nothing here does I/O.
package fleet

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
)

// Meta is how a source describes a VM when it adds it: what names it and
// what labels it carries. It does not change for the VM's life.
type Meta struct {
	// Name is the vm label the operator configured; empty when none was
	// given, in which case the label is QEMU's own -name (State.Info) or,
	// failing that, DefaultName.
	Name string
	// DefaultName is the label when neither the configuration nor QEMU
	// names the VM (for a socket, its file's base name).
	DefaultName string
	// Labels are added to every series of the VM.
	Labels map[string]string
	// Address says where the VM is reached, for logs.
	Address string
	// HideWhenStale: the VM's series are hidden once it has been
	// unreachable for Options.StaleAfter (a discovered socket may linger
	// after QEMU was killed; a VM that dialled in may never come back).
	HideWhenStale bool
	// Libvirt marks a VM seen through libvirt rather than through a QMP
	// session of the exporter's own: what only such a session knows (its
	// connection counters, and the events libvirt does not relay) is
	// absent for it, not zero.
	Libvirt bool
}

// Options configure a Fleet.
type Options struct {
	// StaleAfter is how long a VM with Meta.HideWhenStale may stay
	// unreachable before its series are hidden.
	StaleAfter time.Duration
	// Logger receives the fleet's warnings; nil discards them.
	Logger log.Logger
}

// Fleet is the set of VMs. Its methods are safe for concurrent use.
type Fleet struct {
	opts Options

	mu  sync.Mutex
	vms map[string]*VM
	// warned holds the VMs already reported as duplicates of another
	// source of the same VM.
	warned map[*VM]bool
}

// New returns an empty fleet.
func New(opts Options) *Fleet {
	if opts.StaleAfter <= 0 {
		opts.StaleAfter = 5 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = log.NewNopLogger()
	}
	return &Fleet{opts: opts, vms: make(map[string]*VM), warned: make(map[*VM]bool)}
}

// StaleAfter is Options.StaleAfter, for sources that forget VMs which
// have been gone that long.
func (f *Fleet) StaleAfter() time.Duration { return f.opts.StaleAfter }

// Add adds a VM under key, which orders the VMs (so that label collisions
// resolve the same way on every scrape) and must be unique across all
// sources: a new source starts its keys with its own kind (the
// QMP-socket source's keys, older, are its targets' and "dialin\x00"
// plus a dialled-in VM's identity). Its state is
// a fresh vmstate.State, down since now, its counters at zero since now.
func (f *Fleet) Add(key string, meta Meta, now time.Time) (*VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vms[key]; ok {
		return nil, fmt.Errorf("fleet: a VM with key %q exists already", key)
	}
	v := &VM{key: key, meta: meta, st: vmstate.New()}
	v.st.DownSince = now
	v.st.CountersSince = now.UnixMilli()
	f.vms[key] = v
	return v, nil
}

// Remove forgets v: its series are gone from the next scrape.
func (f *Fleet) Remove(v *VM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.vms[v.key] == v {
		delete(f.vms, v.key)
	}
	delete(f.warned, v)
}

// Len returns the number of VMs.
func (f *Fleet) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.vms)
}

// sorted returns the VMs in key order.
func (f *Fleet) sorted() []*VM {
	f.mu.Lock()
	defer f.mu.Unlock()
	vms := make([]*VM, 0, len(f.vms))
	for _, v := range f.vms {
		vms = append(vms, v)
	}
	slices.SortFunc(vms, func(a, b *VM) int { return cmp.Compare(a.key, b.key) })
	return vms
}

// Visible calls fn, with the VM's lock held, for each VM whose series a
// scrape shows, with its vm label and state, in key order. VMs with
// HideWhenStale that have been unreachable for StaleAfter are left out,
// and so is every VM after the first that is up with the same UUID (two
// sources reaching one VM). fn must not keep st after it returns, and
// must not change it.
func (f *Fleet) Visible(now time.Time, fn func(v *VM, label string, st *vmstate.State)) {
	used := make(map[string]bool)
	uuids := make(map[string]string) // UUID → vm label of its first VM
	for _, v := range f.sorted() {
		v.mu.Lock()
		if v.meta.HideWhenStale && v.st.Stale(now, f.opts.StaleAfter) {
			v.mu.Unlock()
			continue
		}
		uuid := v.st.Info.UUID
		identified := v.st.Up && uuid != "" && uuid != vmstate.ZeroUUID
		if identified {
			if first, dup := uuids[uuid]; dup {
				v.mu.Unlock()
				f.warnDuplicate(v, first)
				continue
			}
		}
		label := uniqueName(v.label(), v.meta, used)
		if identified {
			uuids[uuid] = label
		}
		fn(v, label, &v.st)
		v.mu.Unlock()
	}
}

// warnDuplicate logs, once, that v reaches the same VM (same UUID) as the
// VM already exported as first; v's series are left out.
func (f *Fleet) warnDuplicate(v *VM, first string) {
	f.mu.Lock()
	seen := f.warned[v]
	f.warned[v] = true
	f.mu.Unlock()
	if !seen {
		level.Warn(f.opts.Logger).Log("msg", "two sources reach the same VM (same UUID); reporting it once", "vm", first, "duplicate_address", v.meta.Address)
	}
}

// uniqueName keeps vm labels unique within a scrape: two VMs whose QEMUs
// report the same -name would otherwise produce duplicate series and fail
// the whole scrape. The later one (in key order) falls back to its
// default name, then to a numbered suffix.
func uniqueName(name string, meta Meta, used map[string]bool) string {
	if !used[name] {
		used[name] = true
		return name
	}
	if d := meta.DefaultName; !used[d] {
		used[d] = true
		return d
	}
	for i := 2; ; i++ {
		n := name + "#" + strconv.Itoa(i)
		if !used[n] {
			used[n] = true
			return n
		}
	}
}

// VM is one virtual machine of the fleet: its state, and the lock that
// guards it. A source may guard its own per-VM bookkeeping with the same
// lock when that must change together with the state.
type VM struct {
	key  string
	meta Meta

	mu sync.Mutex
	// gen changes whenever the VM is locked through Lock, which every
	// writer uses: a scrape renders a VM's series again only when it
	// moved.
	gen uint64
	st  vmstate.State
}

// Meta returns what the VM's source said of it.
func (v *VM) Meta() Meta { return v.meta }

// Lock locks the VM for a change and returns its state, which the caller
// may read and change until it calls Unlock. The change shows at the next
// scrape.
func (v *VM) Lock() *vmstate.State {
	v.mu.Lock()
	v.gen++
	return &v.st
}

// LockRead locks the VM to read its state without changing it (a
// scrape's cached rendering stays valid). Unlock when done.
func (v *VM) LockRead() *vmstate.State {
	v.mu.Lock()
	return &v.st
}

// Unlock releases the lock Lock or LockRead took.
func (v *VM) Unlock() { v.mu.Unlock() }

// Gen returns a number that changes whenever the VM's state may have
// changed. Call it with the lock held (inside Visible, for instance).
func (v *VM) Gen() uint64 { return v.gen }

// label is the configured name, else QEMU's -name, else the default.
// Called with the lock held.
func (v *VM) label() string {
	if v.meta.Name != "" {
		return v.meta.Name
	}
	if v.st.Info.Name != "" {
		return v.st.Info.Name
	}
	return v.meta.DefaultName
}
