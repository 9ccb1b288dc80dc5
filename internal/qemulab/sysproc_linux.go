package qemulab

import "syscall"

// sysProcAttr makes the kernel SIGKILL QEMU if the process that started it
// dies, so a crashed test run leaves no QEMU behind. (The kernel ties this
// to the thread that forked; the Go runtime doesn't end threads on its own.)
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
