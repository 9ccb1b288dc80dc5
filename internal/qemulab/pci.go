package qemulab

import "context"

// PCI configuration mechanism #1: the address goes to 0xcf8, the data is
// read or written at 0xcfc..0xcff.
const (
	pciConfigAddress = 0xcf8
	pciConfigData    = 0xcfc
)

// pciAddr is the 0xcf8 value selecting register reg of bus 0, device dev,
// function fn.
func pciAddr(dev, fn uint8, reg uint8) uint32 {
	return 1<<31 | uint32(dev)<<11 | uint32(fn)<<8 | uint32(reg&^3)
}

// pciWritel, pciWritew and pciWriteb write the PCI configuration space of a
// device on bus 0 through qtest, as firmware does.
func (v *VM) pciWritel(ctx context.Context, dev, fn, reg uint8, val uint32) error {
	if err := v.QTest.Outl(ctx, pciConfigAddress, pciAddr(dev, fn, reg)); err != nil {
		return err
	}
	return v.QTest.Outl(ctx, pciConfigData, val)
}

func (v *VM) pciWritew(ctx context.Context, dev, fn, reg uint8, val uint16) error {
	if err := v.QTest.Outl(ctx, pciConfigAddress, pciAddr(dev, fn, reg)); err != nil {
		return err
	}
	return v.QTest.Outw(ctx, pciConfigData+uint16(reg&2), val)
}

func (v *VM) pciWriteb(ctx context.Context, dev, fn, reg uint8, val uint8) error {
	if err := v.QTest.Outl(ctx, pciConfigAddress, pciAddr(dev, fn, reg)); err != nil {
		return err
	}
	return v.QTest.Outb(ctx, pciConfigData+uint16(reg&3), val)
}
