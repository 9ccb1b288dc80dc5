//go:build !linux

package qemulab

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
