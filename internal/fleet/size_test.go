package fleet

import (
	"testing"
	"unsafe"
)

// TestVMSize keeps a VM record within the 768-byte allocation class: a
// host keeps one per VM, and the next class is 896 bytes.
func TestVMSize(t *testing.T) {
	if n := unsafe.Sizeof(VM{}); n > 768 {
		t.Errorf("fleet.VM is %d bytes, more than the 768 of its allocation class; pack vmstate.State's fields again", n)
	}
}
