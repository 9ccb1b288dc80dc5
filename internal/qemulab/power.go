package qemulab

import "context"

// The q35 machine's ACPI power management lives in the ICH9 LPC bridge,
// device 00:1f.0. Its PM I/O block is only decoded once firmware has set
// PMBASE and ACPI_EN in the bridge's PCI configuration space; the lab's
// firmware does nothing, so the recipes below program them first, as
// SeaBIOS and OVMF do, at the address they use.
const (
	lpcDevice    = 0x1f
	lpcPMBase    = 0x40 // PMBASE register (bit 0 reads as 1: I/O space)
	lpcACPICntl  = 0x44 // ACPI_CNTL register
	lpcACPIEn    = 0x80 // ACPI_CNTL.ACPI_EN: decode the PM I/O block
	pmBase       = 0x600
	pm1Control   = pmBase + 4 // PM1_CNT
	pm1SleepEn   = 1 << 13    // PM1_CNT.SLP_EN
	pm1SleepType = 10         // PM1_CNT.SLP_TYP, bits 10-12
	// QEMU's ACPI core treats SLP_TYP 0 as soft off (S5) and 1 as S3; the
	// ICH9 model's S4 value (property x-s4-val) defaults to 2.
	slpTypS5 = 0
	slpTypS3 = 1
	slpTypS4 = 2
)

// enableACPI makes the PM I/O block appear at pmBase. It is idempotent; a
// machine reset (including the one a wakeup does) undoes it.
func (v *VM) enableACPI(ctx context.Context) error {
	if err := v.pciWritel(ctx, lpcDevice, 0, lpcPMBase, pmBase|1); err != nil {
		return err
	}
	return v.pciWriteb(ctx, lpcDevice, 0, lpcACPICntl, lpcACPIEn)
}

// sleep writes SLP_TYP typ with SLP_EN to PM1_CNT, as an ACPI guest does
// last when it enters a sleep state.
func (v *VM) sleep(ctx context.Context, typ uint16) error {
	if err := v.enableACPI(ctx); err != nil {
		return err
	}
	return v.QTest.Outw(ctx, pm1Control, typ<<pm1SleepType|pm1SleepEn)
}

// PowerDown presses the ACPI power button (system_powerdown): QEMU emits
// POWERDOWN, with no data. Without a guest to react, nothing else happens
// and the VM keeps running.
func (v *VM) PowerDown(ctx context.Context) error {
	_, err := v.Ctl.Execute(ctx, "system_powerdown", nil)
	return err
}

// Suspend makes the guest enter S3 (suspend to RAM) through the ACPI PM1
// control register: QEMU emits SUSPEND, with no data, and query-status says
// "suspended" (running false). Wake it with Wakeup.
func (v *VM) Suspend(ctx context.Context) error {
	return v.sleep(ctx, slpTypS3)
}

// Wakeup runs system_wakeup: QEMU emits WAKEUP, with no data, resets the
// machine (without a RESET event) and runs it again: query-status says
// "running". On a VM that is not suspended, system_wakeup fails with a
// GenericError "Unable to wake up: guest is not in suspended state".
func (v *VM) Wakeup(ctx context.Context) error {
	_, err := v.Ctl.Execute(ctx, "system_wakeup", nil)
	return err
}

// SuspendToDisk makes the guest enter S4 through the ACPI PM1 control
// register: QEMU emits SUSPEND_DISK (no data), then SHUTDOWN {"guest": true,
// "reason": "guest-shutdown"}; with the lab's -no-shutdown, STOP follows and
// query-status says "shutdown" (with ShutdownAction "poweroff", QEMU exits).
// system_reset (status "prelaunch") then cont make it run again.
func (v *VM) SuspendToDisk(ctx context.Context) error {
	return v.sleep(ctx, slpTypS4)
}

// GuestPowerOff makes the guest power off (S5) through the ACPI PM1 control
// register: QEMU emits SHUTDOWN {"guest": true, "reason": "guest-shutdown"},
// then, with -no-shutdown, STOP; query-status says "shutdown".
func (v *VM) GuestPowerOff(ctx context.Context) error {
	return v.sleep(ctx, slpTypS5)
}
