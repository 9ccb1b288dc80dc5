//go:build !linux

package virtlab

import (
	"errors"
	"os"
	"syscall"
)

func sysProcAttr() *syscall.SysProcAttr { return nil }

// tryLock fails: virtlab runs libvirt's Linux daemons only.
func tryLock(*os.File) (bool, error) {
	return false, errors.New("virtlab: only supported on Linux")
}

func mountTmpfs(string, string, string) error {
	return errors.New("virtlab: only supported on Linux")
}

func unmount(string) error { return errors.New("virtlab: only supported on Linux") }
