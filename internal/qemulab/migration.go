package qemulab

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Migration URIs for the lab. Both run /bin/sh -c on the host.
const (
	// MigrateToNull migrates into cat > /dev/null: the migration
	// succeeds (the 128 MiB of an idle lab VM are mostly zero pages,
	// about 320 KB on the wire) and the VM ends in "postmigrate".
	MigrateToNull = "exec:cat > /dev/null"
	// MigrateToFail migrates into false, which exits at once: the
	// migration fails ("Unable to write to command: Broken pipe", or on
	// QEMU 10.0, when the RAM setup meets the closed pipe first,
	// "ram_save_setup failed: Input/output error") and the VM keeps
	// running.
	MigrateToFail = "exec:false"
)

// SlowMigration is a max-bandwidth, in bytes per second, that keeps a
// lab migration "active" for about ten seconds: long enough to query it or
// cancel it. (QEMU treats very small values such as 1 as no limit.)
const SlowMigration = 32 << 10

// FastMigration is a max-bandwidth that lets a lab migration finish at
// once; raising the limit to it ends a SlowMigration in about 0.1 s.
const FastMigration = 1 << 30

// SetMigrationEvents sets the "events" migration capability (off by
// default). When on, QEMU emits MIGRATION {"status": ...} on every status
// change (setup, active, completed, failed, cancelling, cancelled, ...) and
// MIGRATION_PASS {"pass": n} at the start of every pass over RAM. When off,
// a client learns the outcome only by polling query-migrate (see
// RunMigration). The capability cannot change while a migration runs.
func (v *VM) SetMigrationEvents(ctx context.Context, on bool) error {
	_, err := v.Ctl.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []any{map[string]any{"capability": "events", "state": on}},
	})
	return err
}

// SetMigrationSpeed sets the max-bandwidth migration parameter, in bytes
// per second; it applies at once to a running migration too.
func (v *VM) SetMigrationSpeed(ctx context.Context, bytesPerSecond int64) error {
	_, err := v.Ctl.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": bytesPerSecond})
	return err
}

// Migrate starts an outgoing migration to uri and returns at once. With the
// events capability, QEMU emits (a MigrateToNull run):
//
//	MIGRATION {"status": "setup"}      (before migrate returns)
//	MIGRATION_PASS {"pass": 1}
//	MIGRATION {"status": "active"}
//	STOP
//	MIGRATION {"status": "device"}     (QEMU 10.0, not 7.2)
//	MIGRATION_PASS {"pass": 2}         (3 after a slow run: one more pass)
//	MIGRATION {"status": "completed"}
//
// After a completed migration the source VM stays stopped in the
// "postmigrate" status (query-status running false); cont resumes it
// (RESUME, "running"), as on a real source whose destination failed. Call
// WaitMigration after the final event before cont or the next Migrate. To
// MigrateToFail: setup, MIGRATION_PASS 1, active, then
// MIGRATION {"status": "failed"} with no STOP; query-migrate then says
// {"status": "failed", "error-desc": "Unable to write to command: Broken pipe"}
// (see MigrateToFail for 10.0's).
func (v *VM) Migrate(ctx context.Context, uri string) error {
	_, err := v.Ctl.Execute(ctx, "migrate", map[string]any{"uri": uri})
	return err
}

// CancelMigration runs migrate_cancel. On an active migration QEMU emits
// MIGRATION {"status": "cancelling"} (before the command returns), then
// {"status": "cancelled"} about 0.1 s later; the VM keeps running. On a
// VM with no migration running it does nothing and emits nothing.
func (v *VM) CancelMigration(ctx context.Context) error {
	_, err := v.Ctl.Execute(ctx, "migrate_cancel", nil)
	return err
}

// MigrationInfo is the part of query-migrate's reply the recipes use.
type MigrationInfo struct {
	// Status is the MigrationStatus: "none" before any migration, then
	// "setup", "active", "completed", "failed", "cancelling",
	// "cancelled", ...
	Status string `json:"status"`
	// ErrorDesc is set when Status is "failed".
	ErrorDesc string `json:"error-desc"`
	// RAM holds the RAM transfer figures (only while active and after
	// completion): total, remaining and transferred bytes, and more.
	RAM *struct {
		Total       int64 `json:"total"`
		Remaining   int64 `json:"remaining"`
		Transferred int64 `json:"transferred"`
	} `json:"ram"`
	// Raw is the whole reply.
	Raw json.RawMessage `json:"-"`
}

// QueryMigrate runs query-migrate.
func (v *VM) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	raw, err := v.Ctl.Execute(ctx, "query-migrate", nil)
	if err != nil {
		return MigrationInfo{}, err
	}
	var mi MigrationInfo
	if err := json.Unmarshal(raw, &mi); err != nil {
		return MigrationInfo{}, fmt.Errorf("qemulab: query-migrate: %w", err)
	}
	mi.Raw = raw
	return mi, nil
}

// migrationDone tells the final statuses of an outgoing migration.
func migrationDone(status string) bool {
	switch status {
	case "completed", "failed", "cancelled":
		return true
	}
	return false
}

// WaitMigration polls query-migrate every poll (10 ms if zero) until the
// migration has ended (completed, failed or cancelled), then until QEMU has
// finished with it, and returns the last query-migrate reply. It needs no
// events, as an exporter must do on a VM whose events capability is off.
//
// QEMU 7.2 emits MIGRATION {"status": "completed"} (and query-migrate says
// so) while the VM is still in "finish-migrate" and the migration thread
// still runs: cont is then refused ("Migration is not finalized yet"), and
// a new migrate fails with "duplicate yank instance" and makes QEMU abort
// ("migration_iteration_finish: Unknown ending state 1"). So after the
// event, call WaitMigration before cont or the next Migrate: it also waits
// until query-status has left "finish-migrate" and query-yank no longer
// lists the migration.
func (v *VM) WaitMigration(ctx context.Context, poll time.Duration) (MigrationInfo, error) {
	if poll <= 0 {
		poll = 10 * time.Millisecond
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		mi, err := v.QueryMigrate(ctx)
		if err != nil {
			return mi, err
		}
		if migrationDone(mi.Status) {
			settled, err := v.migrationSettled(ctx)
			if err != nil || settled {
				return mi, err
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return mi, fmt.Errorf("qemulab: migration still %q: %w", mi.Status, ctx.Err())
		}
	}
}

// migrationSettled reports whether QEMU is done with the last migration:
// the run state has left finish-migrate and the migration's yank instance,
// which QEMU removes when it cleans up, is gone.
func (v *VM) migrationSettled(ctx context.Context) (bool, error) {
	raw, err := v.Ctl.Execute(ctx, "query-status", nil)
	if err != nil {
		return false, err
	}
	var st struct{ Status string }
	if err := json.Unmarshal(raw, &st); err != nil {
		return false, fmt.Errorf("qemulab: query-status: %w", err)
	}
	if st.Status == "finish-migrate" {
		return false, nil
	}
	if raw, err = v.Ctl.Execute(ctx, "query-yank", nil); err != nil {
		return false, err
	}
	var instances []struct{ Type string }
	if err := json.Unmarshal(raw, &instances); err != nil {
		return false, fmt.Errorf("qemulab: query-yank: %w", err)
	}
	for _, in := range instances {
		if in.Type == "migration" {
			return false, nil
		}
	}
	return true, nil
}

// RunMigration turns the events capability off, migrates to uri and polls
// query-migrate until the migration ends, which it returns: a migration as
// an exporter sees it when nobody asked QEMU for MIGRATION events (only
// STOP, and RESUME on cont, are emitted). The capability stays off.
func (v *VM) RunMigration(ctx context.Context, uri string) (MigrationInfo, error) {
	if err := v.SetMigrationEvents(ctx, false); err != nil {
		return MigrationInfo{}, err
	}
	if err := v.Migrate(ctx, uri); err != nil {
		return MigrationInfo{}, err
	}
	return v.WaitMigration(ctx, 0)
}
