package virtlab

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// FullDiskTarget is the target device of DomainOptions.FullDisk's disk:
// IDE bus 0 unit 0, the primary channel's master, which GuestDiskWrite
// writes to (libvirt's alias and QEMU's id "ide0-0-0").
const FullDiskTarget = "hda"

const (
	// fullDiskFS is the size of a full disk's tmpfs: 16 pages.
	fullDiskFS = 64 << 10
	// fullDiskSize is the apparent size of a full disk's image, all of it
	// a hole: 2048 sectors, none of which can be written.
	fullDiskSize = 1 << 20
	// fullDiskSource is the source ("device") of a full disk's tmpfs in
	// /proc/self/mountinfo, which tells Start the leftovers of a crashed
	// run.
	fullDiskSource = "virtlab-fulldisk"
	// fullDiskImage is the image's name in its tmpfs.
	fullDiskImage = "disk.raw"
)

// FullDisk returns the path of the image of the domain's full disk
// (DomainOptions.FullDisk), or "" if it has none.
func (x *Domain) FullDisk() string { return x.fullDisk }

// newFullDisk makes a raw image every write to which fails with ENOSPC:
// it mounts a tmpfs of fullDiskFS bytes at full/NAME in the Daemon's
// directory, creates the image there as a sparse file of fullDiskSize
// bytes (a hole throughout), then fills the tmpfs with another file. A
// write to the image needs a page the tmpfs no longer has; reads work and
// return zeros. Close unmounts the tmpfs.
func (d *Daemon) newFullDisk(name string) (string, error) {
	mnt := filepath.Join(d.dir, "full", name)
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return "", fmt.Errorf("virtlab: full disk: %w", err)
	}
	if err := mountTmpfs(fullDiskSource, mnt, fmt.Sprintf("size=%d,mode=0755", fullDiskFS)); err != nil {
		return "", fmt.Errorf("virtlab: full disk: mount a tmpfs on %s: %w", mnt, err)
	}
	d.mu.Lock()
	d.mounts = append(d.mounts, mnt)
	d.mu.Unlock()

	img := filepath.Join(mnt, fullDiskImage)
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		return "", fmt.Errorf("virtlab: full disk: %w", err)
	}
	if err := os.Truncate(img, fullDiskSize); err != nil {
		return "", fmt.Errorf("virtlab: full disk: %w", err)
	}
	if err := fill(filepath.Join(mnt, "filler")); err != nil {
		return "", err
	}
	// The image must now refuse a write.
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		return "", fmt.Errorf("virtlab: full disk: %w", err)
	}
	_, werr := f.WriteAt([]byte{1}, 0)
	if err := f.Close(); err != nil && werr == nil {
		werr = err
	}
	if !errors.Is(werr, syscall.ENOSPC) {
		return "", fmt.Errorf("virtlab: full disk: a write to %s on the full tmpfs gave %v, want ENOSPC", img, werr)
	}
	return img, nil
}

// fill writes to a new file at path until its file system is full.
func fill(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("virtlab: full disk: %w", err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	for range fullDiskFS/len(page) + 16 {
		if _, err := f.Write(page); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return nil
			}
			return fmt.Errorf("virtlab: full disk: filling its tmpfs: %w", err)
		}
	}
	return fmt.Errorf("virtlab: full disk: %s still takes writes after %d bytes", path, fullDiskFS+16*len(page))
}

// unmountAll unmounts the tmpfs of every full disk, lazily (MNT_DETACH):
// a QEMU that still holds its image open keeps it alive.
func (d *Daemon) unmountAll() error {
	d.mu.Lock()
	mounts := d.mounts
	d.mounts = nil
	d.mu.Unlock()
	var errs []error
	for _, m := range mounts {
		if err := unmount(m); err != nil && !errors.Is(err, syscall.EINVAL) { // EINVAL: not mounted
			errs = append(errs, fmt.Errorf("virtlab: unmount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// unmountLeftovers unmounts the full disks' tmpfs mounts that a crashed
// run left (fullDiskMounts). Only the holder of the machine-wide lock
// mounts them, so none is in use by a live Daemon.
func unmountLeftovers() error {
	mnts, err := fullDiskMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mnts {
		if err := unmount(m); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("virtlab: unmount %s, left by an earlier run: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// fullDiskMounts returns the mount points of every full disk's tmpfs (a
// tmpfs whose source is fullDiskSource) in this process's mount namespace.
func fullDiskMounts() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("virtlab: %w", err)
	}
	defer f.Close()
	var mnts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m, ok := fullDiskMount(sc.Text()); ok {
			mnts = append(mnts, m)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("virtlab: /proc/self/mountinfo: %w", err)
	}
	return mnts, nil
}

// fullDiskMount reads a line of /proc/self/mountinfo: "ID PARENT MAJ:MIN
// ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS". It
// returns the mount point if the line is a full disk's tmpfs.
func fullDiskMount(line string) (string, bool) {
	f := strings.Fields(line)
	for i := 6; i+2 < len(f); i++ {
		if f[i] == "-" {
			if f[i+1] == "tmpfs" && f[i+2] == fullDiskSource && len(f) > 4 {
				return unescapeMountinfo(f[4]), true
			}
			return "", false
		}
	}
	return "", false
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space,
// \011, \012, \134) in a path of /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			o := s[i+1 : i+4]
			if o[0] >= '0' && o[0] <= '3' && o[1] >= '0' && o[1] <= '7' && o[2] >= '0' && o[2] <= '7' {
				b.WriteByte((o[0]-'0')<<6 | (o[1]-'0')<<3 | (o[2] - '0'))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
