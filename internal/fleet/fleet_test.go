package fleet

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/google/go-cmp/cmp"

	"github.com/qmp-exporter/qmp_exporter/internal/vmstate"
)

// qemu is one VM of a test fleet: the socket its source reaches it by,
// and what its session learnt (up, -name, -uuid, and the process behind
// the socket, 0 when the kernel cannot tell).
type qemu struct {
	socket, name, uuid string
	pid                int32
	down               bool
}

const (
	uuidA = "5c0ffee0-0d15-4a7b-9e3c-00000000000a"
	uuidB = "5c0ffee0-0d15-4a7b-9e3c-00000000000b"
)

// newTestFleet adds the VMs in order, keyed by their socket (so that key
// order is the order given), and returns the fleet and its log.
func newTestFleet(t *testing.T, vms ...qemu) (*Fleet, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	f := New(Options{Logger: log.NewLogfmtLogger(&logs)})
	for i, q := range vms {
		v, err := f.Add(string(rune('a'+i))+q.socket, Meta{DefaultName: q.socket, Address: "/run/" + q.socket + ".qmp"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		set(v, q)
	}
	return f, &logs
}

// set makes v's session what q says.
func set(v *VM, q qemu) {
	st := v.Lock()
	defer v.Unlock()
	st.SetInfo(vmstate.Info{Name: q.name, UUID: q.uuid})
	st.PID = q.pid
	if q.down {
		st.MarkDown(time.Now())
	} else {
		st.MarkUp(time.Now())
	}
}

// labels returns the vm labels a scrape shows, in order.
func labels(f *Fleet) []string {
	var got []string
	f.Visible(time.Now(), func(_ *VM, label string, _ *vmstate.State) { got = append(got, label) })
	return got
}

// TestVisibleSharedUUID: a VM is shown once only when two sources provably
// reach the same QEMU (same UUID and -name, and the same process when the
// kernel names it); any other VMs sharing a UUID are all shown, under
// distinct vm labels, and counted as conflicts.
func TestVisibleSharedUUID(t *testing.T) {
	for _, tc := range []struct {
		name      string
		vms       []qemu
		want      []string
		conflicts uint64
	}{
		{"two monitors of one QEMU, unix sockets",
			[]qemu{{"s1", "web", uuidA, 100, false}, {"s2", "web", uuidA, 100, false}},
			[]string{"web"}, 0},
		{"one QEMU by socket and by TCP or libvirt (no process known on one side)",
			[]qemu{{"s1", "web", uuidA, 100, false}, {"tcp", "web", uuidA, 0, false}},
			[]string{"web"}, 0},
		{"two sources, no process known on either",
			[]qemu{{"tcp1", "web", uuidA, 0, false}, {"tcp2", "web", uuidA, 0, false}},
			[]string{"web"}, 0},
		{"clones: same UUID, different names",
			[]qemu{{"s1", "web", uuidA, 100, false}, {"s2", "db", uuidA, 200, false}},
			[]string{"web", "db"}, 1},
		{"clones over TCP: same UUID, different names, no process known",
			[]qemu{{"tcp1", "web", uuidA, 0, false}, {"tcp2", "db", uuidA, 0, false}},
			[]string{"web", "db"}, 1},
		{"two processes with one UUID and one name: the second gets its socket's name",
			[]qemu{{"s1", "web", uuidA, 100, false}, {"s2", "web", uuidA, 200, false}},
			[]string{"web", "s2"}, 1},
		{"one process, two names (a proxy in front of two QEMUs)",
			[]qemu{{"s1", "web", uuidA, 100, false}, {"s2", "db", uuidA, 100, false}},
			[]string{"web", "db"}, 1},
		{"three clones, and a second monitor of the last one",
			[]qemu{{"s1", "a", uuidA, 1, false}, {"s2", "b", uuidA, 2, false}, {"s3", "c", uuidA, 3, false}, {"s4", "c", uuidA, 3, false}},
			[]string{"a", "b", "c"}, 2},
		{"different UUIDs, one name: both, the second by its socket",
			[]qemu{{"s1", "web", uuidA, 1, false}, {"s2", "web", uuidB, 2, false}},
			[]string{"web", "s2"}, 0},
		{"a VM that is down is not compared",
			[]qemu{{"s1", "web", uuidA, 100, false}, {"s2", "web", uuidA, 100, true}},
			[]string{"web", "s2"}, 0},
		{"no UUID (QEMU without -uuid) proves nothing",
			[]qemu{{"s1", "web", vmstate.ZeroUUID, 100, false}, {"s2", "web", vmstate.ZeroUUID, 100, false}},
			[]string{"web", "s2"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := newTestFleet(t, tc.vms...)
			if diff := cmp.Diff(tc.want, labels(f)); diff != "" {
				t.Errorf("vm labels shown (-want +got):\n%s", diff)
			}
			if got := f.UUIDConflicts(); got != tc.conflicts {
				t.Errorf("UUIDConflicts() = %d, want %d", got, tc.conflicts)
			}
		})
	}
}

// TestUUIDConflictCountedOncePerStart: a conflict is counted and logged
// when a scrape first finds it, not again while it lasts, and again if
// it ends (one clone stops) and starts again (it comes back).
func TestUUIDConflictCountedOncePerStart(t *testing.T) {
	f, logs := newTestFleet(t, qemu{"s1", "web", uuidA, 100, false}, qemu{"s2", "db", uuidA, 200, false})
	var vms []*VM
	f.Visible(time.Now(), func(v *VM, _ string, _ *vmstate.State) { vms = append(vms, v) })
	labels(f)
	labels(f)
	if got := f.UUIDConflicts(); got != 1 {
		t.Errorf("after three scrapes of one conflict, UUIDConflicts() = %d, want 1", got)
	}
	const msg = "two different VMs report the same UUID; reporting both"
	if n := strings.Count(logs.String(), msg); n != 1 {
		t.Errorf("%d warnings about the conflict, want 1:\n%s", n, logs)
	}
	for _, kv := range []string{`vm=db`, `other_vm=web`, "uuid=" + uuidA, `address=/run/s2.qmp`, `pid=200`, `other_pid=100`} {
		if !strings.Contains(logs.String(), kv) {
			t.Errorf("warning lacks %s:\n%s", kv, logs)
		}
	}

	set(vms[1], qemu{"s2", "db", uuidA, 200, true}) // db stops
	labels(f)
	set(vms[1], qemu{"s2", "db", uuidA, 300, false}) // and comes back
	labels(f)
	labels(f)
	if got := f.UUIDConflicts(); got != 2 {
		t.Errorf("after the conflict ended and started again, UUIDConflicts() = %d, want 2", got)
	}
	if n := strings.Count(logs.String(), msg); n != 2 {
		t.Errorf("%d warnings about the conflict, want 2:\n%s", n, logs)
	}
}

// TestUUIDConflictOverlappingScrapes: when two scrapes overlap, the one
// that started first may finish last; what it saw is older, and must
// neither forget a conflict the later one recorded nor count it again.
func TestUUIDConflictOverlappingScrapes(t *testing.T) {
	f, _ := newTestFleet(t, qemu{"s1", "web", uuidA, 100, false}, qemu{"s2", "db", uuidA, 200, false})
	_, early := f.sorted() // a walk starts before the conflict is seen...
	labels(f)              // ...a later one records it...
	f.noteConflicts(early, nil)
	labels(f) // ...and the next one must find it known.
	if got := f.UUIDConflicts(); got != 1 {
		t.Errorf("UUIDConflicts() = %d, want 1: an older walk's findings overrode a newer one's", got)
	}
}

// TestDuplicateLoggedOnce: a VM hidden as a second source of the same
// QEMU is logged once, not at every scrape.
func TestDuplicateLoggedOnce(t *testing.T) {
	f, logs := newTestFleet(t, qemu{"s1", "web", uuidA, 100, false}, qemu{"s2", "web", uuidA, 100, false})
	labels(f)
	labels(f)
	if n := strings.Count(logs.String(), "two sources reach the same VM"); n != 1 {
		t.Errorf("%d warnings about the duplicate, want 1:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), "duplicate_address=/run/s2.qmp") {
		t.Errorf("warning does not name the duplicate's address:\n%s", logs)
	}
}

// TestUUIDConflictOfRemovedVM: a VM removed while a scrape walked the
// fleet is not counted when that walk's conflicts are recorded, even if
// another VM was added under its key meanwhile.
func TestUUIDConflictOfRemovedVM(t *testing.T) {
	f, _ := newTestFleet(t, qemu{"s1", "web", uuidA, 100, false}, qemu{"s2", "db", uuidA, 200, false})
	vms, walk := f.sorted()
	db := vms[1]
	f.Remove(db)
	again, err := f.Add(db.key, db.meta, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	set(again, qemu{"s2", "db", uuidA, 300, true})
	f.noteConflicts(walk, []conflict{{v: db, uuid: uuidA, label: "db", other: "web"}})
	if got := f.UUIDConflicts(); got != 0 {
		t.Errorf("UUIDConflicts() = %d, want 0: a removed VM was counted", got)
	}
}

// TestAddStartsCounters: a VM's counters start from zero when its source
// adds it, and the state says when (its OpenMetrics _created), to the
// millisecond.
func TestAddStartsCounters(t *testing.T) {
	f := New(Options{})
	at := time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC)
	v, err := f.Add("k", Meta{DefaultName: "k"}, at)
	if err != nil {
		t.Fatal(err)
	}
	st := v.LockRead()
	defer v.Unlock()
	if want := int64(1777636800123); st.CountersSince != want || !st.DownSince.Equal(at) {
		t.Errorf("CountersSince %d, DownSince %v; want %d and %v", st.CountersSince, st.DownSince, want, at)
	}
}
