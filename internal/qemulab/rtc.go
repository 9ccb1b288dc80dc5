package qemulab

import (
	"context"
	"fmt"
	"time"
)

// The MC146818 real-time clock's CMOS registers, reached through an index
// port and a data port.
const (
	cmosIndex   = 0x70
	cmosData    = 0x71
	rtcSeconds  = 0x00
	rtcMinutes  = 0x02
	rtcHours    = 0x04
	rtcWeekday  = 0x06 // 1 = Sunday
	rtcMonthDay = 0x07
	rtcMonth    = 0x08
	rtcYear     = 0x09 // year within the century
	rtcRegB     = 0x0b
	rtcCentury  = 0x32 // QEMU's mc146818rtc default "base_year" register
	rtcRegBSet  = 0x80 // SET: stop updates while the time is written
	rtcRegBDM   = 0x04 // DM: binary, not BCD
	rtcRegB24h  = 0x02 // 24-hour mode
)

func (v *VM) cmosRead(ctx context.Context, reg uint8) (uint8, error) {
	if err := v.QTest.Outb(ctx, cmosIndex, reg); err != nil {
		return 0, err
	}
	return v.QTest.Inb(ctx, cmosData)
}

func (v *VM) cmosWrite(ctx context.Context, reg, val uint8) error {
	if err := v.QTest.Outb(ctx, cmosIndex, reg); err != nil {
		return err
	}
	return v.QTest.Outb(ctx, cmosData, val)
}

// SetRTC sets the guest's real-time clock to t (taken in UTC, to the
// second; years 1900 to 2099) the way a guest OS does: it sets the SET bit
// of register B, writes the time and date registers in the clock's current
// format (BCD after a reset), switches to 24-hour mode, then clears SET.
// QEMU emits one RTC_CHANGE when SET is cleared:
//
//	{"offset": -848944882, "qom-path": "/machine/unattached/device[8]"}
//
// offset is the new guest time minus the host's current time (UTC, the
// default -rtc base), in whole seconds: here t was 2000-01-01T00:00:00Z on
// 2026-11-25. qom-path is the QOM path of the RTC device (on q35 an
// unattached child, so its index may differ between QEMU versions).
// RTC_CHANGE is rate-limited by QEMU to one per second: a second change
// within a second is delivered late (with the timestamp of its emission),
// and of several changes in the same second only the last is delivered.
func (v *VM) SetRTC(ctx context.Context, t time.Time) error {
	t = t.UTC()
	if t.Year() < 1900 || t.Year() > 2099 {
		return fmt.Errorf("qemulab: SetRTC: year %d outside 1900-2099", t.Year())
	}
	b, err := v.cmosRead(ctx, rtcRegB)
	if err != nil {
		return err
	}
	enc := bcd
	if b&rtcRegBDM != 0 {
		enc = func(x int) uint8 { return uint8(x) }
	}
	b |= rtcRegB24h
	if err := v.cmosWrite(ctx, rtcRegB, b|rtcRegBSet); err != nil {
		return err
	}
	for _, r := range []struct {
		reg uint8
		val int
	}{
		{rtcSeconds, t.Second()},
		{rtcMinutes, t.Minute()},
		{rtcHours, t.Hour()},
		{rtcWeekday, int(t.Weekday()) + 1},
		{rtcMonthDay, t.Day()},
		{rtcMonth, int(t.Month())},
		{rtcYear, t.Year() % 100},
		{rtcCentury, t.Year() / 100},
	} {
		if err := v.cmosWrite(ctx, r.reg, enc(r.val)); err != nil {
			return err
		}
	}
	return v.cmosWrite(ctx, rtcRegB, b&^rtcRegBSet)
}

// RTC reads the guest's real-time clock (in 24-hour mode, as SetRTC leaves
// it; a reset machine is in 24-hour mode too).
func (v *VM) RTC(ctx context.Context) (time.Time, error) {
	b, err := v.cmosRead(ctx, rtcRegB)
	if err != nil {
		return time.Time{}, err
	}
	if b&rtcRegB24h == 0 {
		return time.Time{}, fmt.Errorf("qemulab: RTC: clock in 12-hour mode (register B %#x)", b)
	}
	dec := fromBCD
	if b&rtcRegBDM != 0 {
		dec = func(x uint8) int { return int(x) }
	}
	regs := []uint8{rtcSeconds, rtcMinutes, rtcHours, rtcMonthDay, rtcMonth, rtcYear, rtcCentury}
	read := func() ([]int, error) {
		vals := make([]int, len(regs))
		for i, r := range regs {
			x, err := v.cmosRead(ctx, r)
			if err != nil {
				return nil, err
			}
			vals[i] = dec(x)
		}
		return vals, nil
	}
	// Read twice until two reads agree, in case the clock ticked between
	// two registers.
	prev, err := read()
	if err != nil {
		return time.Time{}, err
	}
	for range 5 {
		cur, err := read()
		if err != nil {
			return time.Time{}, err
		}
		if fmt.Sprint(cur) == fmt.Sprint(prev) {
			break
		}
		prev = cur
	}
	s, mi, h, d, mo, y, c := prev[0], prev[1], prev[2], prev[3], prev[4], prev[5], prev[6]
	return time.Date(c*100+y, time.Month(mo), d, h, mi, s, 0, time.UTC), nil
}

func bcd(x int) uint8 { return uint8(x/10<<4 | x%10) }

func fromBCD(x uint8) int { return int(x>>4)*10 + int(x&0xf) }
