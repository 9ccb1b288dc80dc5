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

	"github.com/qmp-exporter/qmp_exporter/internal/journal"
	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
	"github.com/qmp-exporter/qmp_exporter/qmp"
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
	// Kind says how the VM is reached. A VM seen through libvirt rather
	// than through a QMP session of the exporter's own lacks what only
	// such a session knows (its connection counters, and the events
	// libvirt does not relay): those are absent for it, not zero.
	Kind Kind
}

// Kind is how a VM is reached.
type Kind uint8

// The kinds of VM; their String is what pages and the event log show.
const (
	Socket   Kind = iota // a QMP socket the exporter dials (configured or discovered)
	Listener             // a QEMU that dialled in to a listener socket
	Libvirt              // a libvirt domain
)

func (k Kind) String() string {
	switch k {
	case Listener:
		return "listener"
	case Libvirt:
		return "libvirt"
	}
	return "socket"
}

// Options configure a Fleet.
type Options struct {
	// StaleAfter is how long a VM with Meta.HideWhenStale may stay
	// unreachable before its series are hidden.
	StaleAfter time.Duration
	// Logger receives the fleet's warnings; nil discards them.
	Logger log.Logger
	// Journal, when set, keeps each VM's recent events (VM.Apply).
	Journal *journal.Journal
}

// Fleet is the set of VMs. Its methods are safe for concurrent use.
type Fleet struct {
	opts Options

	mu  sync.Mutex
	vms map[string]*VM
	// warned holds the VMs already reported as duplicates of another
	// source of the same VM.
	warned map[*VM]bool
	// walks numbers the calls of Visible; conflictsAt is the walk whose
	// findings conflicts holds: the VMs sharing their UUID with a
	// different VM, by VM, with that UUID. conflictCount counts each
	// start of such a sharing (UUIDConflicts).
	walks, conflictsAt uint64
	conflicts          map[*VM]string
	conflictCount      uint64
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
	if f.opts.Journal != nil {
		v.events = f.opts.Journal.NewRing(meta.Kind.String())
	}
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
	delete(f.conflicts, v)
	if v.events != nil {
		v.events.Close()
	}
}

// Len returns the number of VMs.
func (f *Fleet) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.vms)
}

// sorted returns the VMs in key order, and the number of this walk.
func (f *Fleet) sorted() ([]*VM, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vms := make([]*VM, 0, len(f.vms))
	for _, v := range f.vms {
		vms = append(vms, v)
	}
	slices.SortFunc(vms, func(a, b *VM) int { return cmp.Compare(a.key, b.key) })
	f.walks++
	return vms, f.walks
}

// Visible calls fn, with the VM's lock held, for each VM whose series a
// scrape shows, with its vm label and state, in key order. VMs with
// HideWhenStale that have been unreachable for StaleAfter are left out,
// and so is every VM that is up and provably the same QEMU as one shown
// before it (two sources reaching one VM; see sameQEMU). VMs that share a
// UUID but may be different QEMUs (a cloned definition, a script with a
// fixed -uuid) are all shown, each under its own vm label, and counted in
// UUIDConflicts: hiding a running VM would be worse than showing one
// twice. fn must not keep st after it returns, and must not change it.
func (f *Fleet) Visible(now time.Time, fn func(v *VM, label string, st *vmstate.State)) {
	vms, walk := f.sorted()
	used := make(map[string]bool)
	first := make(map[string]shown, len(vms)) // UUID → the first VM shown with it
	var more map[string][]shown               // UUID → the others shown with it (rare)
	var conflicts []conflict
	for _, v := range vms {
		v.mu.Lock()
		if v.meta.HideWhenStale && v.st.Stale(now, f.opts.StaleAfter) {
			v.mu.Unlock()
			continue
		}
		uuid := v.st.Info.UUID
		identified := v.st.Up && uuid != "" && uuid != vmstate.ZeroUUID
		me := shown{name: v.st.Info.Name, pid: v.st.PID}
		var others []shown
		if identified {
			if f1, ok := first[uuid]; ok {
				others = append(append(others, f1), more[uuid]...)
			}
			if same := slices.IndexFunc(others, me.sameQEMU); same >= 0 {
				v.mu.Unlock()
				f.warnDuplicate(v, others[same].label)
				continue
			}
		}
		me.label = uniqueName(v.label(), v.meta, used)
		switch {
		case !identified:
		case len(others) == 0:
			first[uuid] = me
		default:
			if more == nil {
				more = make(map[string][]shown)
			}
			more[uuid] = append(more[uuid], me)
			conflicts = append(conflicts, conflict{v: v, uuid: uuid, label: me.label, other: others[0].label, pid: me.pid, otherPID: others[0].pid})
		}
		fn(v, me.label, &v.st)
		v.mu.Unlock()
	}
	f.noteConflicts(walk, conflicts)
}

// shown is what Visible keeps of a VM it showed, to compare the next ones
// with the same UUID.
type shown struct {
	label, name string
	pid         int32
}

// sameQEMU reports whether a VM up with the same UUID as o is provably
// the QEMU o is (two monitors of one QEMU, or a QEMU reached both through
// its socket and through libvirt): it reports the same -name, and, when
// the kernel told the process behind both sessions (unix sockets, a QEMU
// dialling in), it is the same process. A UUID alone proves nothing:
// cloned definitions and scripts with a fixed -uuid give it to several
// QEMUs. Two processes with one name and UUID (say, both ends of a
// migration on one host) are two VMs; two names behind one process (a
// proxy serving several QEMUs) are too.
func (s shown) sameQEMU(o shown) bool {
	return s.name == o.name && (s.pid == 0 || o.pid == 0 || s.pid == o.pid)
}

// conflict is a VM Visible showed although a VM shown before it has its
// UUID.
type conflict struct {
	v             *VM
	uuid, label   string
	other         string // the vm label of the first VM with the UUID
	pid, otherPID int32
}

// noteConflicts records the conflicts walk found, unless a later walk
// has already recorded its own (scrapes may overlap; the later one saw
// the newer state). A VM that was not in conflict at the walk before is
// counted and logged once; one no longer in conflict is forgotten, so
// that it counts again if its conflict starts again.
func (f *Fleet) noteConflicts(walk uint64, found []conflict) {
	f.mu.Lock()
	if walk < f.conflictsAt {
		f.mu.Unlock()
		return
	}
	f.conflictsAt = walk
	if len(found) == 0 && len(f.conflicts) == 0 {
		f.mu.Unlock()
		return
	}
	var now map[*VM]string
	var started []conflict
	for _, c := range found {
		if f.vms[c.v.key] != c.v {
			continue // removed since the walk
		}
		if now == nil {
			now = make(map[*VM]string, len(found))
		}
		now[c.v] = c.uuid
		if f.conflicts[c.v] != c.uuid {
			started = append(started, c)
		}
	}
	f.conflicts = now
	f.conflictCount += uint64(len(started))
	f.mu.Unlock()
	for _, c := range started {
		level.Warn(f.opts.Logger).Log("msg", "two different VMs report the same UUID; reporting both", "vm", c.label, "other_vm", c.other,
			"uuid", c.uuid, "address", c.v.meta.Address, "pid", c.pid, "other_pid", c.otherPID)
	}
}

// UUIDConflicts returns how many times Visible found a VM sharing its
// UUID with a different VM shown before it: each VM counts once from the
// walk that first finds its conflict until a walk finds it gone.
func (f *Fleet) UUIDConflicts() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conflictCount
}

// warnDuplicate logs, once, that v reaches the same VM (same UUID, -name
// and, when known, process) as the VM already exported as first; v's
// series are left out.
func (f *Fleet) warnDuplicate(v *VM, first string) {
	f.mu.Lock()
	seen := f.warned[v]
	f.warned[v] = true
	f.mu.Unlock()
	if !seen {
		level.Warn(f.opts.Logger).Log("msg", "two sources reach the same VM (same UUID and name, and the same process where known); reporting it once", "vm", first, "duplicate_address", v.meta.Address)
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
	gen    uint64
	events *journal.Ring // nil without a journal
	st     vmstate.State
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

// Apply folds ev into the VM's state and keeps it among the VM's recent
// events, returning the queries the fold asks for (vmstate.State.Apply).
// Call it between Lock and Unlock; a source folds every event it
// receives through here, once.
func (v *VM) Apply(ev qmp.Event) vmstate.Need {
	n := v.st.Apply(ev)
	if v.events != nil {
		v.events.Add(journal.Event{Name: ev.Name, Data: ev.Data, Time: ev.Time}, time.Now(), v.label(), v.st.Info.UUID)
	}
	return n
}

// Events returns the VM's recent events, or nil when the fleet keeps none.
func (v *VM) Events() *journal.Ring { return v.events }

// Unlock releases the lock Lock or LockRead took.
func (v *VM) Unlock() { v.mu.Unlock() }

// Gen returns a number that changes whenever the VM's state may have
// changed. Call it with the lock held (inside Visible, for instance).
func (v *VM) Gen() uint64 { return v.gen }

// Label is the VM's vm label as far as the VM itself tells: its
// configured name, else QEMU's -name, else its default name. Visible may
// still change it to keep labels unique among the VMs of a scrape. Call it
// with the lock held.
func (v *VM) Label() string { return v.label() }

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
