package qemulab

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"time"
)

// FaultyDisk describes the disk that Options.FaultyDisk adds: an ide-hd on a
// legacy ISA IDE controller (I/O ports 0x1f0-0x1f7, which the test drives
// through qtest with VM.DiskRead and VM.DiskWrite), backed by a 1 MiB raw
// image under a blkdebug node that fails every request touching sector
// FaultySector: reads with EIO, writes with ENOSPC. Other sectors work.
//
// A failed request makes QEMU apply the device's error action and emit
// BLOCK_IO_ERROR, e.g. for a read with ReadError "report":
//
//	{"device": "disk0", "node-name": "disk0-fmt", "operation": "read",
//	 "action": "report", "nospace": false, "reason": "Input/output error"}
//
// and for a write with WriteError "stop" (or the default "enospc"):
//
//	{"device": "disk0", "node-name": "disk0-fmt", "operation": "write",
//	 "action": "stop", "nospace": true, "reason": "No space left on device"}
//
// QEMU 9.2 and later add the guest device, "qom-path": "/machine/peripheral/hd0".
// QEMU 10.0 (not 7.2) also rate-limits the event per device: of several
// errors within a second, the first is reported at once and the last a
// second later; those between are not reported.
//
// With action "stop", STOP follows, query-status says "io-error" and
// query-block shows the drive's "io-status" as "failed" (or "nospace"). cont
// retries the request: unless Once is set it fails again at once (another
// BLOCK_IO_ERROR and STOP), so the VM stays in io-error.
type FaultyDisk struct {
	// ReadError and WriteError become the device's rerror and werror
	// properties: "report", "ignore", "stop" or "enospc" (stop on ENOSPC,
	// report anything else). Empty keeps QEMU's defaults, rerror=report
	// and werror=enospc.
	ReadError, WriteError string
	// Once injects only one read error and one write error: a retry after
	// cont, and every later request, succeeds.
	Once bool
}

// Names of the FaultyDisk, as they appear in BLOCK_IO_ERROR and query-block.
const (
	// FaultyDrive is the -drive id: BLOCK_IO_ERROR's "device" and
	// query-block's "device".
	FaultyDrive = "disk0"
	// FaultyNode is the node name of the raw format node:
	// BLOCK_IO_ERROR's "node-name".
	FaultyNode = "disk0-fmt"
	// FaultyDiskID is the qdev id of the ide-hd (query-block's "qdev").
	FaultyDiskID = "hd0"
	// FaultySector is the sector whose reads and writes fail.
	FaultySector = 1
)

const (
	faultyDiskFile = "faulty.img"
	faultyDiskSize = 1 << 20
	errnoEIO       = 5
	errnoENOSPC    = 28
)

func (f *FaultyDisk) args(dir string) []string {
	drive := "if=none,id=" + FaultyDrive + ",format=raw,node-name=" + FaultyNode +
		",file.driver=blkdebug,file.image.driver=file,file.image.filename=" + qemuOpt(filepath.Join(dir, faultyDiskFile))
	for i, r := range []struct {
		event string
		errno int
	}{{"read_aio", errnoEIO}, {"write_aio", errnoENOSPC}} {
		p := ",file.inject-error." + strconv.Itoa(i) + "."
		drive += p + "event=" + r.event + p + "errno=" + strconv.Itoa(r.errno) + p + "sector=" + strconv.Itoa(FaultySector)
		if f.Once {
			drive += p + "once=on"
		}
	}
	dev := "ide-hd,bus=isaide.0,drive=" + FaultyDrive + ",id=" + FaultyDiskID
	if f.ReadError != "" {
		dev += ",rerror=" + qemuOpt(f.ReadError)
	}
	if f.WriteError != "" {
		dev += ",werror=" + qemuOpt(f.WriteError)
	}
	return []string{"-device", "isa-ide,id=isaide", "-drive", drive, "-device", dev}
}

// ATA task file of the primary ISA IDE channel.
const (
	ataData        = 0x1f0
	ataCount       = 0x1f2
	ataLBALow      = 0x1f3
	ataLBAMid      = 0x1f4
	ataLBAHigh     = 0x1f5
	ataDevice      = 0x1f6
	ataCommand     = 0x1f7 // write: command; read: status
	ataDeviceLBA   = 0xe0  // master, LBA addressing
	ataReadSector  = 0x20  // READ SECTORS (PIO)
	ataWriteSector = 0x30  // WRITE SECTORS (PIO)
	ataStatusBusy  = 0x80
	ataStatusDRQ   = 0x08
	ataSectorWords = 256
	ataIdleTimeout = 2 * time.Second
)

// DiskRead makes the guest read one sector of the FaultyDisk with READ
// SECTORS (PIO). It returns once the command is issued; the request
// completes asynchronously. Reading FaultySector produces BLOCK_IO_ERROR
// (see FaultyDisk); other sectors read fine and produce no event.
func (v *VM) DiskRead(ctx context.Context, sector uint32) error {
	return v.ataCommand(ctx, ataReadSector, sector)
}

// DiskWrite makes the guest write one sector of the FaultyDisk with WRITE
// SECTORS (PIO): it issues the command and transfers 512 bytes, after which
// QEMU submits the write. Writing FaultySector produces BLOCK_IO_ERROR with
// "nospace": true (see FaultyDisk).
func (v *VM) DiskWrite(ctx context.Context, sector uint32) error {
	if err := v.ataCommand(ctx, ataWriteSector, sector); err != nil {
		return err
	}
	st, err := v.QTest.Inb(ctx, ataCommand)
	if err != nil {
		return err
	}
	if st&ataStatusDRQ == 0 {
		return fmt.Errorf("qemulab: disk write: drive not ready for data (status %#x)", st)
	}
	for range ataSectorWords {
		if err := v.QTest.Outw(ctx, ataData, 0x5aa5); err != nil {
			return err
		}
	}
	return nil
}

func (v *VM) ataCommand(ctx context.Context, cmd uint8, sector uint32) error {
	if sector >= faultyDiskSize/512 {
		return fmt.Errorf("qemulab: disk: sector %d beyond the disk's end", sector)
	}
	if err := v.ataIdle(ctx); err != nil {
		return err
	}
	for _, w := range []struct {
		port uint16
		val  uint8
	}{
		{ataDevice, ataDeviceLBA | uint8(sector>>24&0x0f)},
		{ataCount, 1},
		{ataLBALow, uint8(sector)},
		{ataLBAMid, uint8(sector >> 8)},
		{ataLBAHigh, uint8(sector >> 16)},
		{ataCommand, cmd},
	} {
		if err := v.QTest.Outb(ctx, w.port, w.val); err != nil {
			return err
		}
	}
	return nil
}

// ataIdle waits until the drive accepts a command: QEMU ignores commands
// while BSY or DRQ is set. Data left by an earlier successful read is
// drained. A request stopped by an error action stays busy until cont.
func (v *VM) ataIdle(ctx context.Context) error {
	deadline := time.Now().Add(ataIdleTimeout)
	for {
		st, err := v.QTest.Inb(ctx, ataCommand)
		if err != nil {
			return err
		}
		switch {
		case st&ataStatusBusy == 0 && st&ataStatusDRQ != 0:
			for range ataSectorWords {
				if _, err := v.QTest.Inw(ctx, ataData); err != nil {
					return err
				}
			}
			continue
		case st&ataStatusBusy == 0:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("qemulab: disk: drive still busy after %v (status %#x; a request stopped by an error action waits for cont)", ataIdleTimeout, st)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemulab: disk: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
