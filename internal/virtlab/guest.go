package virtlab

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// GuestAction is what the tiny guest of GuestImage does as soon as it
// runs. Each guest does its one thing, then disables interrupts and halts
// for good.
type GuestAction int

const (
	// GuestPanic writes 1 (bit 0, "panicked") to the ISA pvpanic device
	// at port 0x505, as Linux does when it panics. The domain needs
	// DomainOptions.Panic; what libvirt does then is DomainOptions.OnCrash.
	GuestPanic GuestAction = iota + 1
	// GuestCrashLoaded writes 2 (bit 1, "crash kernel loaded") to the
	// pvpanic device, as Linux does instead of 1 when it panics with a
	// kdump kernel loaded, which then takes over. QEMU goes on running;
	// libvirt emits only an event.
	GuestCrashLoaded
	// GuestWatchdog arms the ib700 watchdog (port 0x443) for
	// GuestWatchdogTimeout and never refreshes it. The domain needs
	// DomainOptions.Watchdog with WatchdogModel WatchdogIB700: an
	// i6300esb is never armed by it.
	GuestWatchdog
	// GuestDiskWrite writes one sector (LBA 0) to the master drive of the
	// primary IDE channel, target FullDiskTarget, with ATA PIO (WRITE
	// SECTORS). With DomainOptions.FullDisk the write fails with ENOSPC.
	GuestDiskWrite
	// GuestBallast does nothing but halt; its image carries BallastBytes
	// of data after the code, which QEMU loads into guest memory with it.
	// A migration of the domain (a virsh save) then has that much RAM to
	// move, enough to stall on a reader that does not read.
	GuestBallast
)

// BallastBytes is the data GuestBallast's image carries: far more than
// libvirt and a pipe buffer between QEMU and a save file (about 1 MiB).
const BallastBytes = 8 << 20

// GuestWatchdogTimeout is the ib700 timeout GuestWatchdog sets: the
// watchdog fires this long (QEMU's virtual clock, which follows the host's
// while the guest halts) after the guest armed it, which it does about
// 150 ms after the start: 2.15 s after libvirt's "Started Booted" were
// seen.
const GuestWatchdogTimeout = 2 * time.Second

func (g GuestAction) String() string {
	switch g {
	case GuestPanic:
		return "panic"
	case GuestCrashLoaded:
		return "crashloaded"
	case GuestWatchdog:
		return "watchdog"
	case GuestDiskWrite:
		return "diskwrite"
	case GuestBallast:
		return "ballast"
	}
	return fmt.Sprintf("GuestAction(%d)", int(g))
}

// GuestImage writes the image of a guest that does kind, media/guest-KIND.img
// in the Daemon's media directory (readable by libvirt-qemu), and returns
// its path, for DomainOptions.Kernel. Writing it again is harmless: the
// bytes are the same.
func (d *Daemon) GuestImage(kind GuestAction) (string, error) {
	img, err := guestImage(kind)
	if err != nil {
		return "", err
	}
	p := filepath.Join(d.mediaDir, "guest-"+kind.String()+".img")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		return "", fmt.Errorf("virtlab: guest image: %w", err)
	}
	return p, nil
}

// The guest image is a flat binary that QEMU loads as a multiboot (v1)
// kernel (-kernel, libvirt's <os><kernel>): QEMU's multiboot option ROM,
// run by SeaBIOS before any disk, copies it to loadAddr and jumps to the
// entry point in 32-bit protected mode, flat segments, paging and
// interrupts off, EAX = 0x2BADB002, EBX = the multiboot information (which
// the guest ignores). No stack is set up; the guest needs none.
const (
	multibootMagic = 0x1BADB002
	// multibootAddrs is flag bit 16: the header's address fields are
	// valid, which a kernel that is not an ELF file must set (QEMU refuses
	// it otherwise). No other flag: bit 2 (video mode) makes QEMU refuse,
	// bits 0 and 1 ask for what the guest does not need.
	multibootAddrs = 1 << 16
	// multibootHeaderSize: magic, flags, checksum and the five addresses.
	multibootHeaderSize = 8 * 4
	// loadAddr is where the image goes, with its header at the start: 1
	// MiB, above the BIOS area, as for every multiboot kernel.
	loadAddr = 0x100000
	// entryAddr is the first instruction, right after the header.
	entryAddr = loadAddr + multibootHeaderSize
)

// I/O ports the guests use.
const (
	pvpanicPort      = 0x505 // ISA pvpanic's default ioport
	pvpanicPanicked  = 1     // bit 0: the guest panicked
	pvpanicCrashLoad = 2     // bit 1: a crash kernel was loaded
	ib700EnablePort  = 0x443 // ib700: a write of a timeout code arms it
	// ib700Timeout2s is the code of GuestWatchdogTimeout: QEMU's ib700
	// maps the low four bits 0..15 to 30, 28, ..., 2, 0 seconds.
	ib700Timeout2s = 0x0E

	ataData     = 0x1F0 // primary channel, command block
	ataCount    = 0x1F2 // sector count
	ataLBALow   = 0x1F3 // LBA bits 0-7
	ataLBAMid   = 0x1F4 // LBA bits 8-15
	ataLBAHigh  = 0x1F5 // LBA bits 16-23
	ataDevice   = 0x1F6 // bit 6 LBA, bit 4 drive (0: master), bits 0-3 LBA 24-27
	ataCommand  = 0x1F7 // command on write, status on read
	ataControl  = 0x3F6 // device control: bit 1 nIEN masks the drive's IRQ
	ataLBAMode  = 0xE0  // LBA, master (bits 7 and 5 are obsolete, set)
	ataNIEN     = 0x02
	ataWrite    = 0x30 // WRITE SECTORS (LBA28, PIO)
	ataDRQ      = 0x08 // status: ready for data
	ataERR      = 0x01 // status: the command failed
	sectorWords = 256  // one 512-byte sector, written 16 bits at a time
)

// guestImage returns the multiboot image of a guest that does kind.
func guestImage(kind GuestAction) ([]byte, error) {
	var c code
	switch kind {
	case GuestPanic:
		c.outb(pvpanicPort, pvpanicPanicked)
	case GuestCrashLoaded:
		c.outb(pvpanicPort, pvpanicCrashLoad)
	case GuestWatchdog:
		c.outb(ib700EnablePort, ib700Timeout2s)
	case GuestDiskWrite:
		c.cld()                     // rep outsw walks ESI upwards
		c.outb(ataControl, ataNIEN) // no IRQ 14 for the write's completion
		c.outb(ataDevice, ataLBAMode)
		c.outb(ataCount, 1)
		c.outb(ataLBALow, 0)
		c.outb(ataLBAMid, 0)
		c.outb(ataLBAHigh, 0)
		c.outb(ataCommand, ataWrite)
		// Wait for DRQ (or ERR): QEMU sets DRQ as soon as it takes the
		// command. DX still holds the status port.
		wait := c.here()
		c.inALDX()
		c.testAL(ataDRQ | ataERR)
		c.jz(wait)
		// The sector's data: the first 512 bytes of the guest's own
		// image. QEMU submits the write once it has all 256 words.
		c.movDX(ataData)
		c.movECX(sectorWords)
		c.movESI(loadAddr)
		c.repOutsw()
	case GuestBallast:
	default:
		return nil, fmt.Errorf("virtlab: unknown guest action %d", int(kind))
	}
	c.haltForever()

	img := make([]byte, multibootHeaderSize, multibootHeaderSize+len(c.b))
	le := binary.LittleEndian
	flags := uint32(multibootAddrs)
	le.PutUint32(img[0:], multibootMagic)
	le.PutUint32(img[4:], flags)
	le.PutUint32(img[8:], -(multibootMagic + flags)) // checksum: magic+flags+checksum = 0 (mod 2^32)
	le.PutUint32(img[12:], loadAddr)                 // header_addr: the header is the image's start
	le.PutUint32(img[16:], loadAddr)                 // load_addr
	le.PutUint32(img[20:], 0)                        // load_end_addr: 0 loads the whole file
	le.PutUint32(img[24:], 0)                        // bss_end_addr: no bss
	le.PutUint32(img[28:], entryAddr)                // entry_addr
	img = append(img, c.b...)
	if kind == GuestBallast {
		// No page of it is all zeros, which QEMU would migrate as a flag.
		for i := range BallastBytes {
			img = append(img, byte(i%251+1))
		}
	}
	return img, nil
}

// code assembles 32-bit x86 machine code (protected mode, default operand
// size 32 bits), one method per instruction; each names its encoding as
// the Intel SDM writes it.
type code struct{ b []byte }

func (c *code) emit(b ...byte) { c.b = append(c.b, b...) }

// here is the offset of the next instruction, a target for jz.
func (c *code) here() int { return len(c.b) }

// movDX is mov dx, imm16: 66 BA iw (the operand-size prefix 66 makes
// mov r32, imm32 (B8+r, r = 2 for EDX) a 16-bit move).
func (c *code) movDX(v uint16) { c.emit(0x66, 0xBA, byte(v), byte(v>>8)) }

// movAL is mov al, imm8: B0 ib (B0+r, r = 0 for AL).
func (c *code) movAL(v byte) { c.emit(0xB0, v) }

// movECX is mov ecx, imm32: B9 id (B8+1).
func (c *code) movECX(v uint32) { c.emit(0xB9, byte(v), byte(v>>8), byte(v>>16), byte(v>>24)) }

// movESI is mov esi, imm32: BE id (B8+6).
func (c *code) movESI(v uint32) { c.emit(0xBE, byte(v), byte(v>>8), byte(v>>16), byte(v>>24)) }

// outDXAL is out dx, al: EE. (out imm8, al, E6 ib, reaches ports below
// 0x100 only.)
func (c *code) outDXAL() { c.emit(0xEE) }

// outb writes the byte v to port: mov dx, port; mov al, v; out dx, al.
func (c *code) outb(port uint16, v byte) {
	c.movDX(port)
	c.movAL(v)
	c.outDXAL()
}

// inALDX is in al, dx: EC.
func (c *code) inALDX() { c.emit(0xEC) }

// testAL is test al, imm8: A8 ib (sets ZF if al & v is 0).
func (c *code) testAL(v byte) { c.emit(0xA8, v) }

// jz jumps to the offset target if ZF is set: 74 cb, cb the signed
// distance from the end of the instruction.
func (c *code) jz(target int) { c.emit(0x74, rel8(target-(c.here()+2))) }

// jmp jumps to the offset target: EB cb.
func (c *code) jmp(target int) { c.emit(0xEB, rel8(target-(c.here()+2))) }

// rel8 is a short jump's displacement; the guests' jumps are all short.
func rel8(d int) byte {
	if d < -128 || d > 127 {
		panic(fmt.Sprintf("virtlab: jump of %d bytes needs rel32", d))
	}
	return byte(int8(d))
}

// cld is cld: FC (clears DF, so string instructions count upwards).
func (c *code) cld() { c.emit(0xFC) }

// repOutsw is rep outsw: F3 66 6F. It writes ECX words from [DS:ESI] to
// port DX, ESI += 2 each (F3 is rep, 66 the 16-bit operand size of
// outsd, 6F).
func (c *code) repOutsw() { c.emit(0xF3, 0x66, 0x6F) }

// haltForever is cli; l: hlt; jmp l (FA, F4, EB FD). With interrupts off
// only an NMI or a reset ends hlt (the guest has no interrupt table for an
// NMI to use); the jmp is there for good measure.
func (c *code) haltForever() {
	c.emit(0xFA) // cli
	l := c.here()
	c.emit(0xF4) // hlt
	c.jmp(l)
}
