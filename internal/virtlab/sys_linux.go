package virtlab

import (
	"errors"
	"os"
	"syscall"
)

// sysProcAttr makes the kernel SIGKILL libvirtd and virtlogd if the process
// that started them dies, so a crashed test run leaves no daemon behind.
// (The kernel ties this to the thread that forked; the Go runtime doesn't
// end threads on its own.) The domains' QEMU processes are not affected:
// libvirtd daemonizes them.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// tryLock takes an exclusive flock on f without blocking. It reports false,
// nil when another open file description holds the lock.
func tryLock(f *os.File) (bool, error) {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return false, nil
	}
	return err == nil, err
}

// mountTmpfs mounts a tmpfs named source on dir with the tmpfs options
// opts (e.g. "size=65536,mode=0755"), not executable nor setuid.
func mountTmpfs(source, dir, opts string) error {
	return syscall.Mount(source, dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, opts)
}

// unmount detaches the file system mounted on dir at once; it goes away
// when nothing uses it any more (MNT_DETACH). EINVAL: nothing is mounted
// there.
func unmount(dir string) error {
	return syscall.Unmount(dir, syscall.MNT_DETACH)
}
