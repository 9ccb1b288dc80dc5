package qemulab

import (
	"context"
	"fmt"
	"strconv"
)

// BalloonID is the qdev id of the virtio-balloon device of Options.Balloon.
const BalloonID = "balloon0"

// RAMSize is the lab VM's memory size (-m 128M), the "actual" that
// query-balloon reports while nothing is ballooned.
const RAMSize = 128 << 20

// The balloon is a transitional virtio-pci device at a fixed slot, so that
// the recipes can play its guest driver through its legacy I/O BAR.
const (
	balloonSlot   = 0x08
	balloonIOBase = 0xc000 // where GuestBalloon maps BAR0
	pciCommand    = 0x04
	pciCommandIO  = 0x0001
	pciBAR0       = 0x10
	// Legacy virtio I/O layout: the device's own configuration starts at
	// offset 20 while the guest has not enabled MSI-X. The balloon's is
	// {le32 num_pages; le32 actual}, in 4 KiB pages.
	virtioLegacyConfig = 20
	balloonNumPages    = balloonIOBase + virtioLegacyConfig
	balloonActual      = balloonIOBase + virtioLegacyConfig + 4
	balloonPageSize    = 4096
)

var balloonDevice = "virtio-balloon-pci,id=" + BalloonID + ",addr=" + strconv.Itoa(balloonSlot) + ",disable-legacy=off"

// enableBalloonIO maps the balloon's legacy I/O BAR at balloonIOBase, as
// firmware would. Idempotent.
func (v *VM) enableBalloonIO(ctx context.Context) error {
	if err := v.pciWritel(ctx, balloonSlot, 0, pciBAR0, balloonIOBase); err != nil {
		return err
	}
	return v.pciWritew(ctx, balloonSlot, 0, pciCommand, pciCommandIO)
}

// GuestBalloon plays the guest's balloon driver (needs Options.Balloon): it
// reports that the balloon now holds inflated bytes (rounded down to 4 KiB
// pages) by writing the "actual" field of the device's configuration.
// When the value changes, QEMU emits
//
//	BALLOON_CHANGE {"actual": <RAMSize - inflated>}
//
// (e.g. {"actual": 117440512} for 16 MiB) and query-balloon reports the same
// "actual". Nothing else ever changes it in the lab: the balloon command only
// sets the target a guest would work towards, and emits no event.
// BALLOON_CHANGE is rate-limited by QEMU to one per second (see SetRTC).
func (v *VM) GuestBalloon(ctx context.Context, inflated int64) error {
	if inflated < 0 || inflated > RAMSize {
		return fmt.Errorf("qemulab: GuestBalloon: %d bytes out of range", inflated)
	}
	if err := v.enableBalloonIO(ctx); err != nil {
		return err
	}
	return v.QTest.Outl(ctx, balloonActual, uint32(inflated/balloonPageSize))
}

// BalloonRequest reads what the host asks the guest's balloon driver to hold
// (needs Options.Balloon): the num_pages field of the device's
// configuration, in bytes. After balloon {"value": RAMSize - x} it is x.
func (v *VM) BalloonRequest(ctx context.Context) (int64, error) {
	if err := v.enableBalloonIO(ctx); err != nil {
		return 0, err
	}
	n, err := v.QTest.Inl(ctx, balloonNumPages)
	return int64(n) * balloonPageSize, err
}
