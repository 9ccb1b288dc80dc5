package qemulab

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// eventsSince returns the events of m's log from position since on that
// match keep (all if keep is nil).
func eventsSince(m *Monitor, since int, keep func(Event) bool) []Event {
	var out []Event
	for _, ev := range m.Events()[since:] {
		if keep == nil || keep(ev) {
			out = append(out, ev)
		}
	}
	return out
}

// jobStatuses lists the statuses of the JOB_STATUS_CHANGE events of job id
// from position since on.
func jobStatuses(t *testing.T, m *Monitor, since int, id string) []string {
	t.Helper()
	var out []string
	for _, ev := range eventsSince(m, since, EventWith("JOB_STATUS_CHANGE", "id", id)) {
		var d struct{ Status string }
		if err := ev.Decode(&d); err != nil {
			t.Fatal(err)
		}
		out = append(out, d.Status)
	}
	return out
}

// waitFor waits on m for an event matching match from since on and decodes
// its data.
func waitFor(t *testing.T, ctx context.Context, m *Monitor, since int, what string, match func(Event) bool) (Event, map[string]any) {
	t.Helper()
	ev, err := m.WaitFunc(ctx, what, since, match)
	if err != nil {
		t.Fatal(err)
	}
	data := map[string]any{}
	if ev.Data != nil {
		if err := json.Unmarshal(ev.Data, &data); err != nil {
			t.Fatal(err)
		}
	}
	return ev, data
}

func named(name string) func(Event) bool { return func(ev Event) bool { return ev.Name == name } }

// wantKeys checks that the event's data has exactly the given members.
func wantKeys(t *testing.T, ev Event, data map[string]any, keys ...string) {
	t.Helper()
	var got []string
	for k := range data {
		got = append(got, k)
	}
	slices.Sort(got)
	slices.Sort(keys)
	if !slices.Equal(got, keys) {
		t.Errorf("%s data members = %v, want %v; event %s", ev.Name, got, keys, ev.Raw)
	}
}

func wantCommandError(t *testing.T, err error, class, descPart string) {
	t.Helper()
	var ce *CommandError
	if !errors.As(err, &ce) || ce.Class != class || !strings.Contains(ce.Desc, descPart) {
		t.Errorf("error = %v, want %s containing %q", err, class, descPart)
	}
}

func TestBlockJobs(t *testing.T) {
	t.Parallel()
	v := startVM(t, Options{})
	ctx := testContext(t)
	ctl := v.Ctl
	const mib = 1 << 20
	for _, img := range []Image{
		{Node: "src", Size: 4 * mib, Data: 4 * mib},
		{Node: "tgt0", Size: 4 * mib},
		{Node: "tgt1", Size: 4 * mib},
		{Node: "tgt2", Size: 4 * mib},
		{Node: "tgt3", Size: 4 * mib},
		{Node: "tgt4", Size: 4 * mib},
		{Node: "tgt5", Size: 4 * mib},
		{Node: "tgt6", Size: 4 * mib},
		{Node: "bad", Size: 4 * mib, Data: 4 * mib, FailReads: true},
		{Node: "corrupt", Size: 4 * mib, Data: mib, CorruptL1: true},
	} {
		if _, err := v.AddQcow2(ctx, img); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("mirror, write threshold, complete", func(t *testing.T) {
		if err := v.SetWriteThreshold(ctx, "tgt0", mib); err != nil {
			t.Fatal(err)
		}
		mark := ctl.Mark()
		ready, err := v.MirrorReady(ctx, Mirror{JobID: "mirror0", Source: "src", Target: "tgt0"})
		if err != nil {
			t.Fatal(err)
		}
		var rd map[string]any
		json.Unmarshal(ready.Data, &rd)
		wantKeys(t, ready, rd, "device", "len", "offset", "speed", "type")
		wantFields(t, ready, rd, map[string]any{"device": "mirror0", "type": "mirror", "len": float64(4 * mib), "offset": float64(4 * mib), "speed": float64(0)})

		ev, data := waitFor(t, ctx, ctl, mark, "BLOCK_WRITE_THRESHOLD", named("BLOCK_WRITE_THRESHOLD"))
		wantKeys(t, ev, data, "node-name", "amount-exceeded", "write-threshold")
		wantFields(t, ev, data, map[string]any{"node-name": "tgt0", "write-threshold": float64(mib)})
		if a, _ := data["amount-exceeded"].(float64); a <= 0 || a > 3*mib {
			t.Errorf("amount-exceeded = %v", data["amount-exceeded"])
		}

		var jobs []struct{ ID, Type, Status string }
		if err := json.Unmarshal(execute(t, ctx, ctl, "query-jobs", nil), &jobs); err != nil || len(jobs) != 1 || jobs[0] != (struct{ ID, Type, Status string }{"mirror0", "mirror", "ready"}) {
			t.Errorf("query-jobs = %+v (%v)", jobs, err)
		}

		done, err := v.CompleteJob(ctx, "mirror0")
		if err != nil {
			t.Fatal(err)
		}
		data = map[string]any{}
		json.Unmarshal(done.Data, &data)
		wantKeys(t, done, data, "device", "len", "offset", "speed", "type")
		wantFields(t, done, data, map[string]any{"device": "mirror0", "type": "mirror", "len": float64(4 * mib), "offset": float64(4 * mib)})
		// null comes right after COMPLETED; wait for it.
		waitFor(t, ctx, ctl, done.Index, "job null", func(ev Event) bool {
			return EventWith("JOB_STATUS_CHANGE", "id", "mirror0")(ev) && strings.Contains(string(ev.Data), `"null"`)
		})
		want := []string{"created", "running", "ready", "waiting", "pending", "concluded", "null"}
		if got := jobStatuses(t, ctl, mark, "mirror0"); !slices.Equal(got, want) {
			t.Errorf("mirror0 JOB_STATUS_CHANGE = %v, want %v", got, want)
		}
		if err := json.Unmarshal(execute(t, ctx, ctl, "query-jobs", nil), &jobs); err != nil || len(jobs) != 0 {
			t.Errorf("query-jobs after completion = %+v (%v)", jobs, err)
		}
	})

	t.Run("forced cancel", func(t *testing.T) {
		mark := ctl.Mark()
		if _, err := v.MirrorReady(ctx, Mirror{JobID: "mirror1", Source: "src", Target: "tgt1"}); err != nil {
			t.Fatal(err)
		}
		ev, err := v.CancelJob(ctx, "mirror1", true)
		if err != nil {
			t.Fatal(err)
		}
		var data map[string]any
		json.Unmarshal(ev.Data, &data)
		if ev.Name != "BLOCK_JOB_CANCELLED" {
			t.Fatalf("forced cancel ended with %s", ev.Raw)
		}
		wantKeys(t, ev, data, "device", "len", "offset", "speed", "type")
		wantFields(t, ev, data, map[string]any{"device": "mirror1", "type": "mirror", "len": float64(4 * mib)})
		waitFor(t, ctx, ctl, ev.Index, "job null", func(ev Event) bool {
			return EventWith("JOB_STATUS_CHANGE", "id", "mirror1")(ev) && strings.Contains(string(ev.Data), `"null"`)
		})
		want := []string{"created", "running", "ready", "aborting", "concluded", "null"}
		if got := jobStatuses(t, ctl, mark, "mirror1"); !slices.Equal(got, want) {
			t.Errorf("mirror1 JOB_STATUS_CHANGE = %v, want %v", got, want)
		}
	})

	t.Run("cancel of a ready mirror completes it", func(t *testing.T) {
		if _, err := v.MirrorReady(ctx, Mirror{JobID: "mirror1b", Source: "src", Target: "tgt2"}); err != nil {
			t.Fatal(err)
		}
		ev, err := v.CancelJob(ctx, "mirror1b", false)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Name != "BLOCK_JOB_COMPLETED" || strings.Contains(string(ev.Data), `"error"`) {
			t.Errorf("unforced cancel of a ready mirror ended with %s, want BLOCK_JOB_COMPLETED without error", ev.Raw)
		}
	})

	t.Run("manual finalize and dismiss", func(t *testing.T) {
		mark := ctl.Mark()
		if _, err := v.MirrorReady(ctx, Mirror{JobID: "mirror5", Source: "src", Target: "tgt6", Manual: true}); err != nil {
			t.Fatal(err)
		}
		ev, err := v.CompleteJob(ctx, "mirror5")
		if err != nil {
			t.Fatal(err)
		}
		data := map[string]any{}
		json.Unmarshal(ev.Data, &data)
		if ev.Name != "BLOCK_JOB_PENDING" {
			t.Fatalf("complete of a manual job returned %s, want BLOCK_JOB_PENDING", ev.Raw)
		}
		wantKeys(t, ev, data, "type", "id")
		wantFields(t, ev, data, map[string]any{"type": "mirror", "id": "mirror5"})
		var jobs []struct{ ID, Status string }
		if err := json.Unmarshal(execute(t, ctx, ctl, "query-jobs", nil), &jobs); err != nil || len(jobs) != 1 || jobs[0].Status != "pending" {
			t.Errorf("query-jobs of a pending job = %+v (%v)", jobs, err)
		}
		if ev, err = v.FinalizeJob(ctx, "mirror5"); err != nil || ev.Name != "BLOCK_JOB_COMPLETED" {
			t.Fatalf("FinalizeJob = %s, %v", ev.Raw, err)
		}
		waitFor(t, ctx, ctl, ev.Index, "concluded", jobStatus("mirror5", "concluded"))
		if err := json.Unmarshal(execute(t, ctx, ctl, "query-jobs", nil), &jobs); err != nil || len(jobs) != 1 || jobs[0].Status != "concluded" {
			t.Errorf("query-jobs of a concluded job = %+v (%v)", jobs, err)
		}
		if _, err := v.DismissJob(ctx, "mirror5"); err != nil {
			t.Fatal(err)
		}
		want := []string{"created", "running", "ready", "waiting", "pending", "concluded", "null"}
		if got := jobStatuses(t, ctl, mark, "mirror5"); !slices.Equal(got, want) {
			t.Errorf("mirror5 JOB_STATUS_CHANGE = %v, want %v", got, want)
		}
		if err := json.Unmarshal(execute(t, ctx, ctl, "query-jobs", nil), &jobs); err != nil || len(jobs) != 0 {
			t.Errorf("query-jobs after dismiss = %+v (%v)", jobs, err)
		}
	})

	t.Run("source error stop", func(t *testing.T) {
		mark := ctl.Mark()
		if err := v.StartMirror(ctx, Mirror{JobID: "mirror2", Source: "bad", Target: "tgt3", OnSourceError: "stop"}); err != nil {
			t.Fatal(err)
		}
		ev, data := waitFor(t, ctx, ctl, mark, "BLOCK_JOB_ERROR", named("BLOCK_JOB_ERROR"))
		wantKeys(t, ev, data, "device", "operation", "action")
		wantFields(t, ev, data, map[string]any{"device": "mirror2", "operation": "read", "action": "stop"})
		waitFor(t, ctx, ctl, mark, "job paused", func(ev Event) bool {
			return EventWith("JOB_STATUS_CHANGE", "id", "mirror2")(ev) && strings.Contains(string(ev.Data), `"paused"`)
		})
		var bj []struct {
			Device, Status string
			IOStatus       string `json:"io-status"`
			Paused         bool
		}
		raw := execute(t, ctx, ctl, "query-block-jobs", nil)
		if err := json.Unmarshal(raw, &bj); err != nil || len(bj) != 1 || !bj[0].Paused || bj[0].IOStatus != "failed" {
			t.Errorf("query-block-jobs of a job stopped by an error = %s", raw)
		}
		end, err := v.CancelJob(ctx, "mirror2", true)
		if err != nil {
			t.Fatal(err)
		}
		if end.Name != "BLOCK_JOB_CANCELLED" {
			t.Errorf("forced cancel of a paused job ended with %s", end.Raw)
		}
		n := len(eventsSince(ctl, mark, named("BLOCK_JOB_ERROR")))
		t.Logf("%d BLOCK_JOB_ERROR (one per failed request in flight)", n)
	})

	t.Run("source error report", func(t *testing.T) {
		mark := ctl.Mark()
		if err := v.StartMirror(ctx, Mirror{JobID: "mirror3", Source: "bad", Target: "tgt4", OnSourceError: "report"}); err != nil {
			t.Fatal(err)
		}
		end, err := v.WaitJobEnd(ctx, "mirror3", mark)
		if err != nil {
			t.Fatal(err)
		}
		var data map[string]any
		json.Unmarshal(end.Data, &data)
		if end.Name != "BLOCK_JOB_COMPLETED" {
			t.Fatalf("failed job ended with %s", end.Raw)
		}
		wantKeys(t, end, data, "device", "len", "offset", "speed", "type", "error")
		wantFields(t, end, data, map[string]any{"device": "mirror3", "error": "Input/output error", "offset": float64(0)})
		errs := eventsSince(ctl, mark, named("BLOCK_JOB_ERROR"))
		if len(errs) == 0 || !strings.Contains(string(errs[0].Data), `"action": "report"`) {
			t.Errorf("BLOCK_JOB_ERROR before the failed completion: %v", errs)
		}
		waitFor(t, ctx, ctl, end.Index, "job null", func(ev Event) bool {
			return EventWith("JOB_STATUS_CHANGE", "id", "mirror3")(ev) && strings.Contains(string(ev.Data), `"null"`)
		})
		want := []string{"created", "running", "aborting", "concluded", "null"}
		if got := jobStatuses(t, ctl, mark, "mirror3"); !slices.Equal(got, want) {
			t.Errorf("mirror3 JOB_STATUS_CHANGE = %v, want %v", got, want)
		}
	})

	t.Run("corrupt image", func(t *testing.T) {
		mark := ctl.Mark()
		if err := v.StartMirror(ctx, Mirror{JobID: "mirror4", Source: "corrupt", Target: "tgt5"}); err != nil {
			t.Fatal(err)
		}
		ev, data := waitFor(t, ctx, ctl, mark, "BLOCK_IMAGE_CORRUPTED", named("BLOCK_IMAGE_CORRUPTED"))
		wantKeys(t, ev, data, "device", "node-name", "msg", "fatal")
		wantFields(t, ev, data, map[string]any{"device": "", "node-name": "corrupt", "fatal": true})
		if msg, _ := data["msg"].(string); !strings.Contains(msg, "unaligned") {
			t.Errorf("msg = %q", msg)
		}
		end, err := v.WaitJobEnd(ctx, "mirror4", mark)
		if err != nil {
			t.Fatal(err)
		}
		if end.Name != "BLOCK_JOB_COMPLETED" || !strings.Contains(string(end.Data), `"error"`) {
			t.Errorf("job on a corrupt image ended with %s", end.Raw)
		}
	})
}

func TestMigration(t *testing.T) {
	t.Parallel()
	v := startVM(t, Options{})
	ctx := testContext(t)
	ctl := v.Ctl
	statuses := func(since int) []string {
		var out []string
		for _, ev := range eventsSince(ctl, since, nil) {
			switch ev.Name {
			case "MIGRATION":
				var d struct{ Status string }
				ev.Decode(&d)
				out = append(out, d.Status)
			case "MIGRATION_PASS":
				var d struct{ Pass int }
				ev.Decode(&d)
				out = append(out, "pass"+string(rune('0'+d.Pass)))
			case "STOP", "RESUME":
				out = append(out, ev.Name)
			}
		}
		return out
	}
	waitStatus := func(since int, status string) Event {
		t.Helper()
		ev, _ := waitFor(t, ctx, ctl, since, "MIGRATION "+status, EventWith("MIGRATION", "status", status))
		if migrationDone(status) {
			if _, err := v.WaitMigration(ctx, 0); err != nil {
				t.Fatal(err)
			}
		}
		return ev
	}

	t.Run("without events", func(t *testing.T) {
		mark := ctl.Mark()
		mi, err := v.RunMigration(ctx, MigrateToFail)
		if err != nil {
			t.Fatal(err)
		}
		if mi.Status != "failed" || mi.ErrorDesc == "" {
			t.Errorf("query-migrate after a failed migration = %s", mi.Raw)
		}
		mi, err = v.RunMigration(ctx, MigrateToNull)
		if err != nil {
			t.Fatal(err)
		}
		if mi.Status != "completed" || mi.RAM == nil || mi.RAM.Total < RAMSize || mi.RAM.Transferred <= 0 {
			t.Errorf("query-migrate after a migration = %s", mi.Raw)
		}
		waitFor(t, ctx, ctl, mark, "STOP", named("STOP"))
		if got := statuses(mark); !slices.Equal(got, []string{"STOP"}) {
			t.Errorf("events without the capability = %v, want only STOP", got)
		}
		if got := queryStatus(t, ctx, ctl); got != "postmigrate" {
			t.Errorf("status after migration = %q", got)
		}
		resume := ctl.Expect("RESUME")
		execute(t, ctx, ctl, "cont", nil)
		wait(t, ctx, resume)
	})

	if err := v.SetMigrationEvents(ctx, true); err != nil {
		t.Fatal(err)
	}

	t.Run("completed", func(t *testing.T) {
		mark := ctl.Mark()
		if err := v.Migrate(ctx, MigrateToNull); err != nil {
			t.Fatal(err)
		}
		ev := waitStatus(mark, "completed")
		wantKeys(t, ev, map[string]any{"status": nil}, "status")
		want := []string{"setup", "active", "STOP", "completed"}
		if v.Version().AtLeast(10, 0) {
			// 10.0 announces the stopped VM's device state being sent.
			want = []string{"setup", "active", "STOP", "device", "completed"}
		}
		// Between them, the passes over RAM: as many as QEMU's estimate of
		// the downtime takes (a loaded machine may need one more), numbered
		// from 1, the first during setup, the last with the VM stopped.
		got := statuses(mark)
		var rest []string
		passes, firstPass, lastPass, stop := 0, -1, -1, -1
		for i, s := range got {
			if strings.HasPrefix(s, "pass") {
				if passes++; s != "pass"+strconv.Itoa(passes) {
					t.Errorf("events = %v: %s where pass%d was due", got, s, passes)
				}
				if firstPass < 0 {
					firstPass = i
				}
				lastPass = i
				continue
			}
			if s == "STOP" {
				stop = i
			}
			rest = append(rest, s)
		}
		if !slices.Equal(rest, want) || passes < 2 || firstPass != 1 || lastPass < stop {
			t.Errorf("events = %v, want %v, with passes 1, 2, ... from after setup to after STOP", got, want)
		}
		if got := queryStatus(t, ctx, ctl); got != "postmigrate" {
			t.Errorf("status after migration = %q, want postmigrate", got)
		}
		resume := ctl.Expect("RESUME")
		execute(t, ctx, ctl, "cont", nil)
		wait(t, ctx, resume)
		if got := queryStatus(t, ctx, ctl); got != "running" {
			t.Errorf("status after cont = %q, want running", got)
		}
	})

	t.Run("failed", func(t *testing.T) {
		mark := ctl.Mark()
		if err := v.Migrate(ctx, MigrateToFail); err != nil {
			t.Fatal(err)
		}
		waitStatus(mark, "failed")
		want := []string{"setup", "pass1", "active", "failed"}
		if got := statuses(mark); !slices.Equal(got, want) {
			t.Errorf("events = %v, want %v", got, want)
		}
		mi, err := v.QueryMigrate(ctx)
		// The text tells which write met the closed pipe first: any write
		// on 7.2 and 10.0, or, on 10.0 only, the RAM setup.
		desc := []string{"Unable to write to command: Broken pipe"}
		if v.Version().AtLeast(10, 0) {
			desc = append(desc, "ram_save_setup failed: Input/output error")
		}
		if err != nil || mi.Status != "failed" || !slices.Contains(desc, mi.ErrorDesc) {
			t.Errorf("query-migrate = %s (%v), want error-desc one of %q", mi.Raw, err, desc)
		}
		if got := queryStatus(t, ctx, ctl); got != "running" {
			t.Errorf("status after a failed migration = %q", got)
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		if err := v.SetMigrationSpeed(ctx, SlowMigration); err != nil {
			t.Fatal(err)
		}
		mark := ctl.Mark()
		if err := v.Migrate(ctx, MigrateToNull); err != nil {
			t.Fatal(err)
		}
		waitStatus(mark, "active")
		mi, err := v.QueryMigrate(ctx)
		if err != nil || mi.Status != "active" || mi.RAM == nil || mi.RAM.Remaining <= 0 {
			t.Errorf("query-migrate while active = %s (%v)", mi.Raw, err)
		}
		if err := v.CancelMigration(ctx); err != nil {
			t.Fatal(err)
		}
		waitStatus(mark, "cancelled")
		want := []string{"setup", "pass1", "active", "cancelling", "cancelled"}
		if got := statuses(mark); !slices.Equal(got, want) {
			t.Errorf("events = %v, want %v", got, want)
		}
		if mi, err := v.QueryMigrate(ctx); err != nil || mi.Status != "cancelled" {
			t.Errorf("query-migrate = %s (%v)", mi.Raw, err)
		}
		if got := queryStatus(t, ctx, ctl); got != "running" {
			t.Errorf("status after a cancelled migration = %q", got)
		}
		mark = ctl.Mark()
		if err := v.CancelMigration(ctx); err != nil {
			t.Errorf("migrate_cancel with no migration: %v", err)
		}
		if got := statuses(mark); len(got) != 0 {
			t.Errorf("migrate_cancel with no migration emitted %v", got)
		}
	})

	t.Run("slow, then sped up", func(t *testing.T) {
		mark := ctl.Mark()
		if err := v.Migrate(ctx, MigrateToNull); err != nil {
			t.Fatal(err)
		}
		waitStatus(mark, "active")
		if err := v.SetMigrationSpeed(ctx, FastMigration); err != nil {
			t.Fatal(err)
		}
		waitStatus(mark, "completed")
		if got := queryStatus(t, ctx, ctl); got != "postmigrate" {
			t.Errorf("status = %q", got)
		}
	})
}

func TestDump(t *testing.T) {
	t.Parallel()
	v := startVM(t, Options{})
	ctx := testContext(t)
	ctl := v.Ctl

	mark := ctl.Mark()
	ev, err := v.Dump(ctx, "file:"+filepath.Join(v.Dir, "dump"), "kdump-zlib")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Result struct {
			Status           string
			Total, Completed int64
		}
		Error *string
	}
	if err := ev.Decode(&d); err != nil {
		t.Fatal(err)
	}
	if d.Result.Status != "completed" || d.Result.Total <= 0 || d.Result.Completed != d.Result.Total || d.Error != nil {
		t.Errorf("DUMP_COMPLETED = %s", ev.Raw)
	}
	var names []string
	for _, e := range eventsSince(ctl, mark, nil) {
		names = append(names, e.Name)
	}
	if want := []string{"STOP", "DUMP_COMPLETED", "RESUME"}; !slices.Equal(names, want) {
		t.Errorf("events = %v, want %v", names, want)
	}

	ev, err = v.Dump(ctx, DumpToFull, "")
	if err != nil {
		t.Fatal(err)
	}
	var data map[string]any
	json.Unmarshal(ev.Data, &data)
	wantKeys(t, ev, data, "result", "error")
	d.Error = nil
	ev.Decode(&d)
	if d.Result.Status != "failed" || d.Error == nil || !strings.Contains(*d.Error, "No space left on device") {
		t.Errorf("DUMP_COMPLETED of a failed dump = %s", ev.Raw)
	}
	var qd struct{ Status string }
	if err := json.Unmarshal(execute(t, ctx, ctl, "query-dump", nil), &qd); err != nil || qd.Status != "failed" {
		t.Errorf("query-dump = %+v (%v)", qd, err)
	}

	mark = ctl.Mark()
	_, err = v.Dump(ctx, "file:/nonexistent/dir/dump", "")
	wantCommandError(t, err, "GenericError", "No such file or directory")
	_, err = v.Dump(ctx, "fd:nosuchfd", "")
	wantCommandError(t, err, "GenericError", "nosuchfd")
	if evs := eventsSince(ctl, mark, nil); len(evs) != 0 {
		t.Errorf("a dump that fails synchronously emitted %v", evs)
	}
	if got := queryStatus(t, ctx, ctl); got != "running" {
		t.Errorf("status = %q", got)
	}
}

func TestRTC(t *testing.T) {
	t.Parallel()
	v := startVM(t, Options{})
	ctx := testContext(t)
	y2k := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	change := v.Ctl.Expect("RTC_CHANGE")
	before := time.Now()
	if err := v.SetRTC(ctx, y2k); err != nil {
		t.Fatal(err)
	}
	ev, data := wait(t, ctx, change)
	wantKeys(t, ev, data, "offset", "qom-path")
	want := float64(y2k.Unix() - before.Unix())
	if off, _ := data["offset"].(float64); math.Abs(off-want) > 2 {
		t.Errorf("offset = %v, want about %v", data["offset"], want)
	}
	if p, _ := data["qom-path"].(string); !strings.HasPrefix(p, "/machine/") {
		t.Errorf("qom-path = %q", p)
	}
	got, err := v.RTC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := got.Sub(y2k); d < 0 || d > 3*time.Second {
		t.Errorf("RTC after SetRTC = %v", got)
	}
}

func TestPower(t *testing.T) {
	t.Parallel()
	v := startVM(t, Options{})
	ctx := testContext(t)
	ctl := v.Ctl
	names := func(since int) []string {
		var out []string
		for _, e := range eventsSince(ctl, since, nil) {
			out = append(out, e.Name)
		}
		return out
	}

	e := ctl.Expect("POWERDOWN")
	if err := v.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if ev, _ := wait(t, ctx, e); ev.Data != nil {
		t.Errorf("POWERDOWN with data: %s", ev.Raw)
	}

	mark := ctl.Mark()
	e = ctl.Expect("SUSPEND")
	if err := v.Suspend(ctx); err != nil {
		t.Fatal(err)
	}
	if ev, _ := wait(t, ctx, e); ev.Data != nil {
		t.Errorf("SUSPEND with data: %s", ev.Raw)
	}
	if got := queryStatus(t, ctx, ctl); got != "suspended" {
		t.Errorf("status after S3 = %q, want suspended", got)
	}
	e = ctl.Expect("WAKEUP")
	if err := v.Wakeup(ctx); err != nil {
		t.Fatal(err)
	}
	wait(t, ctx, e)
	if got := queryStatus(t, ctx, ctl); got != "running" {
		t.Errorf("status after wakeup = %q, want running", got)
	}
	if got := names(mark); !slices.Equal(got, []string{"SUSPEND", "WAKEUP"}) {
		t.Errorf("events = %v, want SUSPEND WAKEUP", got)
	}
	wantCommandError(t, v.Wakeup(ctx), "GenericError", "not in suspended state")

	mark = ctl.Mark()
	stop := ctl.Expect("STOP")
	if err := v.SuspendToDisk(ctx); err != nil {
		t.Fatal(err)
	}
	wait(t, ctx, stop)
	if got := names(mark); !slices.Equal(got, []string{"SUSPEND_DISK", "SHUTDOWN", "STOP"}) {
		t.Errorf("events of S4 = %v", got)
	}
	ev, data := waitFor(t, ctx, ctl, mark, "SHUTDOWN", named("SHUTDOWN"))
	wantFields(t, ev, data, map[string]any{"guest": true, "reason": "guest-shutdown"})
	if got := queryStatus(t, ctx, ctl); got != "shutdown" {
		t.Errorf("status after S4 = %q, want shutdown", got)
	}

	reset := ctl.Expect("RESET")
	execute(t, ctx, ctl, "system_reset", nil)
	wait(t, ctx, reset)
	if got := queryStatus(t, ctx, ctl); got != "prelaunch" {
		t.Errorf("status after system_reset in shutdown = %q, want prelaunch", got)
	}
	resume := ctl.Expect("RESUME")
	execute(t, ctx, ctl, "cont", nil)
	wait(t, ctx, resume)

	mark = ctl.Mark()
	stop = ctl.Expect("STOP")
	if err := v.GuestPowerOff(ctx); err != nil {
		t.Fatal(err)
	}
	wait(t, ctx, stop)
	ev, data = waitFor(t, ctx, ctl, mark, "SHUTDOWN", named("SHUTDOWN"))
	wantFields(t, ev, data, map[string]any{"guest": true, "reason": "guest-shutdown"})
	if got := names(mark); !slices.Equal(got, []string{"SHUTDOWN", "STOP"}) {
		t.Errorf("events of S5 = %v", got)
	}
}

func TestBalloon(t *testing.T) {
	t.Parallel()
	v := startVM(t, Options{Balloon: true})
	ctx := testContext(t)
	ctl := v.Ctl
	actual := func() int64 {
		var b struct{ Actual int64 }
		if err := json.Unmarshal(execute(t, ctx, ctl, "query-balloon", nil), &b); err != nil {
			t.Fatal(err)
		}
		return b.Actual
	}
	if got := actual(); got != RAMSize {
		t.Errorf("query-balloon actual = %d, want %d", got, RAMSize)
	}
	change := ctl.Expect("BALLOON_CHANGE")
	execute(t, ctx, ctl, "balloon", map[string]any{"value": RAMSize - 32<<20})
	if got, err := v.BalloonRequest(ctx); err != nil || got != 32<<20 {
		t.Errorf("balloon request seen by the guest = %d (%v), want %d", got, err, 32<<20)
	}
	if got := actual(); got != RAMSize {
		t.Errorf("query-balloon actual without a guest = %d, want %d", got, RAMSize)
	}
	if err := v.GuestBalloon(ctx, 16<<20); err != nil {
		t.Fatal(err)
	}
	// The first BALLOON_CHANGE is the guest's: balloon emitted none.
	ev, data := wait(t, ctx, change)
	wantKeys(t, ev, data, "actual")
	wantFields(t, ev, data, map[string]any{"actual": float64(RAMSize - 16<<20)})
	if got := actual(); got != RAMSize-16<<20 {
		t.Errorf("query-balloon actual = %d", got)
	}
}

func TestPanicActions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		panic, shutdown string
		action          string // GUEST_PANICKED's
		shutdownEvent   bool   // SHUTDOWN {"guest": true, "reason": "guest-panic"} follows
		status          string // query-status after, "" if QEMU exits
		exitCode        int
	}{
		{"", "", "pause", false, "guest-panicked", 0},
		{"pause", "", "pause", false, "guest-panicked", 0},
		{"none", "", "run", false, "running", 0},
		{"shutdown", "", "pause", false, "guest-panicked", 0},
		{"shutdown", "poweroff", "poweroff", true, "", 0},
		{"exit-failure", "", "poweroff", true, "guest-panicked", 0},
		{"exit-failure", "poweroff", "poweroff", true, "", 1},
	} {
		t.Run(tc.panic+"/"+tc.shutdown, func(t *testing.T) {
			t.Parallel()
			v := startVM(t, Options{Devices: true, PanicAction: tc.panic, ShutdownAction: tc.shutdown})
			ctx := testContext(t)
			ctl := v.Ctl
			mark := ctl.Mark()
			if err := v.Panic(ctx); err != nil {
				t.Fatal(err)
			}
			ev, data := waitFor(t, ctx, ctl, mark, "GUEST_PANICKED", named("GUEST_PANICKED"))
			wantKeys(t, ev, data, "action")
			wantFields(t, ev, data, map[string]any{"action": tc.action})
			if tc.shutdownEvent {
				ev, data := waitFor(t, ctx, ctl, mark, "SHUTDOWN", named("SHUTDOWN"))
				wantFields(t, ev, data, map[string]any{"guest": true, "reason": "guest-panic"})
			}
			if tc.status == "" {
				select {
				case <-v.Exited():
				case <-ctx.Done():
					t.Fatal("QEMU still running")
				}
				code := 0
				if err := v.ExitErr(); err != nil {
					var ee interface{ ExitCode() int }
					if errors.As(err, &ee) {
						code = ee.ExitCode()
					}
				}
				if code != tc.exitCode {
					t.Errorf("exit: %v, want code %d", v.ExitErr(), tc.exitCode)
				}
				return
			}
			if got := queryStatus(t, ctx, ctl); got != tc.status {
				t.Errorf("status = %q, want %q", got, tc.status)
			}
		})
	}
}

// TestWatchdogPowerOff: with -action watchdog=poweroff, QEMU 7.2 reports
// the watchdog and exits at once, with status 0 and no SHUTDOWN.
func TestWatchdogPowerOff(t *testing.T) {
	t.Parallel()
	v := startVM(t, Options{Devices: true, WatchdogAction: "poweroff"})
	ctx := testContext(t)
	mark := v.Ctl.Mark()
	if err := v.FireWatchdog(ctx); err != nil {
		t.Fatal(err)
	}
	ev, data := waitFor(t, ctx, v.Ctl, mark, "WATCHDOG", named("WATCHDOG"))
	wantKeys(t, ev, data, "action")
	wantFields(t, ev, data, map[string]any{"action": "poweroff"})
	select {
	case <-v.Exited():
	case <-ctx.Done():
		t.Fatal("QEMU still running")
	}
	if err := v.ExitErr(); err != nil {
		t.Errorf("exit: %v, want status 0", err)
	}
	select {
	case <-v.Ctl.Done():
	case <-ctx.Done():
		t.Fatal("control monitor still open")
	}
	var after []string
	for _, e := range v.Ctl.Events()[mark:] {
		after = append(after, e.Name)
	}
	if !slices.Equal(after, []string{"WATCHDOG"}) {
		t.Errorf("events after the watchdog fired: %v, want WATCHDOG alone", after)
	}
}

// TestPVShutdown: a guest's shutdown request through pvpanic, which QEMU
// 9.1 added and 7.2 ignores.
func TestPVShutdown(t *testing.T) {
	t.Parallel()
	v := startVM(t, Options{Devices: true})
	ctx := testContext(t)
	ctl := v.Ctl
	mark := ctl.Mark()
	if err := v.PVShutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if !v.Version().AtLeast(9, 1) {
		// The write's events, if any, would precede this reply.
		if got := queryStatus(t, ctx, ctl); got != "running" {
			t.Errorf("QEMU %v: status = %q, want running", v.Version(), got)
		}
		if evs := eventsSince(ctl, mark, nil); len(evs) != 0 {
			t.Errorf("QEMU %v: events %v, want none", v.Version(), evs)
		}
		return
	}
	waitFor(t, ctx, ctl, mark, "STOP", named("STOP"))
	var got []string
	for _, ev := range eventsSince(ctl, mark, nil) {
		got = append(got, ev.Name)
		if ev.Name == "GUEST_PVSHUTDOWN" && ev.Data != nil {
			t.Errorf("GUEST_PVSHUTDOWN with data: %s", ev.Raw)
		}
	}
	if want := []string{"GUEST_PVSHUTDOWN", "SHUTDOWN", "STOP"}; !slices.Equal(got, want) {
		t.Errorf("events = %v, want %v", got, want)
	}
	ev, data := waitFor(t, ctx, ctl, mark, "SHUTDOWN", named("SHUTDOWN"))
	wantKeys(t, ev, data, "guest", "reason")
	wantFields(t, ev, data, map[string]any{"guest": true, "reason": "guest-shutdown"})
	if got := queryStatus(t, ctx, ctl); got != "shutdown" {
		t.Errorf("status = %q, want shutdown", got)
	}
}

func TestSPICE(t *testing.T) {
	t.Parallel()
	v := startVM(t, Options{SPICE: true})
	ctx := testContext(t)
	ctl := v.Ctl
	var q struct {
		Enabled  bool
		Auth     string
		Host     string
		Channels []map[string]any
	}
	if err := json.Unmarshal(execute(t, ctx, ctl, "query-spice", nil), &q); err != nil {
		t.Fatal(err)
	}
	if !q.Enabled || q.Auth != "none" || q.Host != v.SPICESocket || len(q.Channels) != 0 {
		t.Errorf("query-spice = %+v", q)
	}
	connected, initialized, disconnected := ctl.Expect("SPICE_CONNECTED"), ctl.Expect("SPICE_INITIALIZED"), ctl.Expect("SPICE_DISCONNECTED")
	c, err := SPICEHandshake(ctx, v.SPICESocket)
	if err != nil {
		t.Fatal(err)
	}
	ev, data := wait(t, ctx, connected)
	wantKeys(t, ev, data, "server", "client")
	// "port" is the socket path, but only if it fits QEMU's 32-byte buffer
	// for getnameinfo's service name; else it is empty.
	wantPort := v.SPICESocket
	if len(wantPort) >= 32 {
		wantPort = ""
	}
	if s, _ := data["server"].(map[string]any); s["family"] != "unix" || s["host"] != "localhost" || s["port"] != wantPort {
		t.Errorf("SPICE_CONNECTED server = %v, want port %q", data["server"], wantPort)
	}
	ev, data = wait(t, ctx, initialized)
	wantKeys(t, ev, data, "server", "client")
	if s, _ := data["server"].(map[string]any); s["auth"] != "none" {
		t.Errorf("SPICE_INITIALIZED server = %v, want auth none", data["server"])
	}
	cl, _ := data["client"].(map[string]any)
	for _, k := range []string{"connection-id", "channel-type", "channel-id", "tls"} {
		if _, ok := cl[k]; !ok {
			t.Errorf("SPICE_INITIALIZED client lacks %q: %s", k, ev.Raw)
		}
	}
	if err := json.Unmarshal(execute(t, ctx, ctl, "query-spice", nil), &q); err != nil || len(q.Channels) != 1 {
		t.Errorf("query-spice with a client: %+v (%v)", q, err)
	}
	c.Close()
	wait(t, ctx, disconnected)
}

func TestBlockIOError(t *testing.T) {
	t.Parallel()
	t.Run("report and enospc", func(t *testing.T) {
		t.Parallel()
		v := startVM(t, Options{FaultyDisk: &FaultyDisk{}})
		ctx := testContext(t)
		ctl := v.Ctl
		mark := ctl.Mark()
		if err := v.DiskRead(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if err := v.DiskRead(ctx, FaultySector); err != nil {
			t.Fatal(err)
		}
		ev, data := waitFor(t, ctx, ctl, mark, "BLOCK_IO_ERROR", named("BLOCK_IO_ERROR"))
		keys := []string{"device", "node-name", "operation", "action", "nospace", "reason"}
		if v.Version().AtLeast(9, 2) {
			// The guest device, which 7.2 leaves to query-block to find.
			keys = append(keys, "qom-path")
			wantFields(t, ev, data, map[string]any{"qom-path": "/machine/peripheral/" + FaultyDiskID})
		}
		wantKeys(t, ev, data, keys...)
		wantFields(t, ev, data, map[string]any{"device": FaultyDrive, "node-name": FaultyNode, "operation": "read",
			"action": "report", "nospace": false, "reason": "Input/output error"})
		if n := len(eventsSince(ctl, mark, nil)); n != 1 {
			t.Errorf("%d events, want 1 (reading sector 0 works)", n)
		}
		if got := queryStatus(t, ctx, ctl); got != "running" {
			t.Errorf("status = %q", got)
		}

		mark = ctl.Mark()
		if err := v.DiskWrite(ctx, FaultySector); err != nil {
			t.Fatal(err)
		}
		ev, data = waitFor(t, ctx, ctl, mark, "BLOCK_IO_ERROR", named("BLOCK_IO_ERROR"))
		wantFields(t, ev, data, map[string]any{"device": FaultyDrive, "operation": "write",
			"action": "stop", "nospace": true, "reason": "No space left on device"})
		waitFor(t, ctx, ctl, mark, "STOP", named("STOP"))
		if got := queryStatus(t, ctx, ctl); got != "io-error" {
			t.Errorf("status = %q, want io-error", got)
		}
		var blocks []struct {
			Device   string
			IOStatus string `json:"io-status"`
		}
		if err := json.Unmarshal(execute(t, ctx, ctl, "query-block", nil), &blocks); err != nil || len(blocks) != 1 || blocks[0].IOStatus != "nospace" {
			t.Errorf("query-block = %+v (%v), want io-status nospace", blocks, err)
		}
	})
	t.Run("burst", func(t *testing.T) {
		t.Parallel()
		v := startVM(t, Options{FaultyDisk: &FaultyDisk{}})
		ctx := testContext(t)
		ctl := v.Ctl
		mark := ctl.Mark()
		for range 3 {
			if err := v.DiskRead(ctx, FaultySector); err != nil {
				t.Fatal(err)
			}
		}
		// A read waits for the drive to be idle: the third failure has
		// happened, and its event, unless held back, precedes this reply.
		if err := v.DiskRead(ctx, 0); err != nil {
			t.Fatal(err)
		}
		queryStatus(t, ctx, ctl)
		n := len(eventsSince(ctl, mark, named("BLOCK_IO_ERROR")))
		if !v.Version().AtLeast(10, 0) {
			if n != 3 {
				t.Errorf("QEMU %v: %d BLOCK_IO_ERROR for 3 failed reads, want 3", v.Version(), n)
			}
			return
		}
		// 10.0 rate-limits the event per device: the first at once, then,
		// a second later, the last one held back; the second is lost.
		if n != 1 {
			t.Fatalf("QEMU %v: %d BLOCK_IO_ERROR at once for 3 failed reads, want 1", v.Version(), n)
		}
		first := eventsSince(ctl, mark, named("BLOCK_IO_ERROR"))[0]
		waitFor(t, ctx, ctl, first.Index+1, "held BLOCK_IO_ERROR", named("BLOCK_IO_ERROR"))
		queryStatus(t, ctx, ctl) // after anything emitted with the held event
		if n := len(eventsSince(ctl, mark, named("BLOCK_IO_ERROR"))); n != 2 {
			t.Errorf("QEMU %v: %d BLOCK_IO_ERROR for 3 failed reads, want 2", v.Version(), n)
		}
	})
	t.Run("stop once", func(t *testing.T) {
		t.Parallel()
		v := startVM(t, Options{FaultyDisk: &FaultyDisk{ReadError: "stop", Once: true}})
		ctx := testContext(t)
		ctl := v.Ctl
		mark := ctl.Mark()
		if err := v.DiskRead(ctx, FaultySector); err != nil {
			t.Fatal(err)
		}
		ev, data := waitFor(t, ctx, ctl, mark, "BLOCK_IO_ERROR", named("BLOCK_IO_ERROR"))
		wantFields(t, ev, data, map[string]any{"operation": "read", "action": "stop", "nospace": false})
		waitFor(t, ctx, ctl, mark, "STOP", named("STOP"))
		var blocks []struct {
			IOStatus string `json:"io-status"`
		}
		if err := json.Unmarshal(execute(t, ctx, ctl, "query-block", nil), &blocks); err != nil || len(blocks) != 1 || blocks[0].IOStatus != "failed" {
			t.Errorf("query-block = %+v (%v), want io-status failed", blocks, err)
		}
		resume := ctl.Expect("RESUME")
		execute(t, ctx, ctl, "cont", nil)
		wait(t, ctx, resume)
		// The retry succeeds: the drive becomes idle, the VM keeps running.
		if err := v.DiskRead(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if got := queryStatus(t, ctx, ctl); got != "running" {
			t.Errorf("status = %q", got)
		}
		if n := len(eventsSince(ctl, mark, named("BLOCK_IO_ERROR"))); n != 1 {
			t.Errorf("%d BLOCK_IO_ERROR, want 1", n)
		}
		if err := json.Unmarshal(execute(t, ctx, ctl, "query-block", nil), &blocks); err != nil || blocks[0].IOStatus != "ok" {
			t.Errorf("query-block after cont = %+v (%v), want io-status ok", blocks, err)
		}
	})
}
