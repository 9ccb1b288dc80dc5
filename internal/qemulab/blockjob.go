package qemulab

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// FindQEMUImg returns the path of qemu-img: $QEMU_IMG if set, else qemu-img
// next to the QEMU binary FindQEMU found, else qemu-img in $PATH.
func FindQEMUImg() (string, error) {
	if b := os.Getenv("QEMU_IMG"); b != "" {
		return exec.LookPath(b)
	}
	if q, err := FindQEMU(); err == nil {
		if p, err := exec.LookPath(filepath.Join(filepath.Dir(q), "qemu-img")); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("qemu-img")
	if err != nil {
		return "", fmt.Errorf("qemulab: qemu-img is missing (Debian's qemu-utils): %w", err)
	}
	return p, nil
}

// Image describes a qcow2 image for AddQcow2.
type Image struct {
	// Node is the node name given to blockdev-add; the file is
	// <VM.Dir>/<Node>.qcow2.
	Node string
	// Size is the virtual size in bytes.
	Size int64
	// Data is how many bytes at the start of the image hold data (a
	// non-zero pattern); the rest is unallocated. A mirror copies only
	// data, so Data sets how much work a block job has.
	Data int64
	// FailReads puts a blkdebug node between the qcow2 node and its file
	// that fails every data read of the qcow2 driver with EIO, so that a
	// block job reading the image fails (BLOCK_JOB_ERROR). Once a job has
	// read it, the node fails its own metadata reads too: remove it
	// (blockdev-del) before a migration, since cont after a completed
	// migration re-opens every node and fails on it ("Could not reopen
	// qcow2 layer: Could not read qcow2 header: Input/output error").
	FailReads bool
	// CorruptL1 damages the image's first L1 table entry (an L2 table
	// offset that is not cluster-aligned) before it is opened, so the
	// first read of a data cluster makes QEMU mark the image corrupt:
	// BLOCK_IMAGE_CORRUPTED {"device": "", "node-name": <Node>, "msg":
	// "L2 table offset 0x40200 unaligned (L1 index: 0)", "fatal": true}.
	// It needs Data > 0.
	CorruptL1 bool
}

// AddQcow2 creates a qcow2 image with qemu-img in the VM's directory and
// adds it to the running QEMU with blockdev-add (driver qcow2 over a file
// node), under the node name img.Node, without attaching it to a device:
// it is what block jobs work on. It returns the image's path.
func (v *VM) AddQcow2(ctx context.Context, img Image) (string, error) {
	if img.Node == "" || img.Size <= 0 || img.Data < 0 || img.Data > img.Size {
		return "", fmt.Errorf("qemulab: AddQcow2: bad image %+v", img)
	}
	qemuImg, err := FindQEMUImg()
	if err != nil {
		return "", err
	}
	path := filepath.Join(v.Dir, img.Node+".qcow2")
	if img.Data == 0 {
		err = run(ctx, qemuImg, "create", "-q", "-f", "qcow2", path, strconv.FormatInt(img.Size, 10))
	} else {
		// qemu-img convert leaves zero clusters unallocated, so only the
		// pattern becomes data.
		raw := path + ".raw"
		if err = writePattern(raw, img.Size, img.Data); err == nil {
			err = run(ctx, qemuImg, "convert", "-q", "-f", "raw", "-O", "qcow2", raw, path)
			os.Remove(raw)
		}
	}
	if err != nil {
		return "", err
	}
	if img.CorruptL1 {
		if img.Data == 0 {
			return "", fmt.Errorf("qemulab: AddQcow2: CorruptL1 needs Data")
		}
		if err := corruptL1(path); err != nil {
			return "", err
		}
	}
	file := map[string]any{"driver": "file", "filename": path}
	if img.FailReads {
		file = map[string]any{
			"driver":       "blkdebug",
			"image":        file,
			"inject-error": []any{map[string]any{"event": "read_aio", "errno": errnoEIO}},
		}
	}
	_, err = v.Ctl.Execute(ctx, "blockdev-add", map[string]any{"driver": "qcow2", "node-name": img.Node, "file": file})
	return path, err
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemulab: %s %v: %w: %s", filepath.Base(name), args, err, bytes.TrimSpace(out))
	}
	return nil
}

func writePattern(path string, size, data int64) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("qemulab: %w", err)
	}
	chunk := bytes.Repeat([]byte{0x5a}, 64<<10)
	for off := int64(0); off < data; off += int64(len(chunk)) {
		n := min(int64(len(chunk)), data-off)
		if _, err := f.Write(chunk[:n]); err != nil {
			f.Close()
			return fmt.Errorf("qemulab: %w", err)
		}
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("qemulab: %w", err)
	}
	return f.Close()
}

// corruptL1 makes the first L1 entry of a qcow2 image point to an L2 table
// offset that is not cluster-aligned.
func corruptL1(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("qemulab: %w", err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], 40); err != nil { // header: l1_table_offset
		return fmt.Errorf("qemulab: qcow2 header: %w", err)
	}
	l1 := int64(binary.BigEndian.Uint64(b[:]))
	if _, err := f.ReadAt(b[:], l1); err != nil {
		return fmt.Errorf("qemulab: qcow2 L1 table: %w", err)
	}
	binary.BigEndian.PutUint64(b[:], binary.BigEndian.Uint64(b[:])|0x200)
	if _, err := f.WriteAt(b[:], l1); err != nil {
		return fmt.Errorf("qemulab: qcow2 L1 table: %w", err)
	}
	return nil
}

// Mirror describes a blockdev-mirror job (always "sync": "full").
type Mirror struct {
	// JobID is the job-id. BLOCK_JOB_* events carry it as "device",
	// JOB_STATUS_CHANGE as "id", query-jobs as "id" and query-block-jobs
	// as "device".
	JobID string
	// Source and Target are node names (AddQcow2's Image.Node).
	Source, Target string
	// Speed limits the job to that many bytes per second; 0 is unlimited.
	// block-job-set-speed changes it while the job runs.
	Speed int64
	// BufSize is buf-size, the bytes in flight; 0 is QEMU's default. With a
	// small BufSize and a Speed, progress moves in steps of about BufSize
	// (e.g. 1 MiB and 4 MiB/s: 2 MiB more every half second).
	BufSize int64
	// OnSourceError is on-source-error: "report" (QEMU's default),
	// "stop", "ignore" or "enospc".
	OnSourceError string
	// Manual sets auto-finalize and auto-dismiss to false: after
	// block-job-complete the job waits in "pending" (QEMU emits
	// BLOCK_JOB_PENDING {"type": "mirror", "id": <JobID>}, which a job
	// that finalizes automatically never sends) until FinalizeJob, then in
	// "concluded" until DismissJob.
	Manual bool
}

// StartMirror runs blockdev-mirror. QEMU emits JOB_STATUS_CHANGE
// {"status": "created", "id": <JobID>} and {"status": "running"} before the
// command returns. With unlimited speed a mirror of a few MiB reaches
// JOB_STATUS_CHANGE "ready" and BLOCK_JOB_READY
//
//	{"device": "mirror0", "len": 4194304, "offset": 4194304, "speed": 0, "type": "mirror"}
//
// within milliseconds, then stays ready (mirroring new writes) until
// CompleteJob or CancelJob.
//
// A job reading a FailReads image emits one BLOCK_JOB_ERROR per failed
// request in flight (several: the requests are issued in parallel):
//
//	{"device": "mirror1", "operation": "read", "action": "stop"}
//
// With OnSourceError "stop" the job then pauses (JOB_STATUS_CHANGE
// "paused"; query-block-jobs shows "io-status": "failed", "paused": true)
// until block-job-resume or a forced CancelJob. With "report" it ends at
// once: JOB_STATUS_CHANGE "aborting", then BLOCK_JOB_COMPLETED with an
// "error" member (not BLOCK_JOB_CANCELLED):
//
//	{"device": "mirror2", "len": 4194304, "offset": 0, "speed": 0, "type": "mirror", "error": "Input/output error"}
//
// then "concluded" and "null".
func (v *VM) StartMirror(ctx context.Context, m Mirror) error {
	args := map[string]any{"job-id": m.JobID, "device": m.Source, "target": m.Target, "sync": "full"}
	if m.Speed != 0 {
		args["speed"] = m.Speed
	}
	if m.BufSize != 0 {
		args["buf-size"] = m.BufSize
	}
	if m.OnSourceError != "" {
		args["on-source-error"] = m.OnSourceError
	}
	if m.Manual {
		args["auto-finalize"] = false
		args["auto-dismiss"] = false
	}
	_, err := v.Ctl.Execute(ctx, "blockdev-mirror", args)
	return err
}

// MirrorReady starts a mirror and waits for its BLOCK_JOB_READY, which it
// returns. See StartMirror.
func (v *VM) MirrorReady(ctx context.Context, m Mirror) (Event, error) {
	mark := v.Ctl.Mark()
	if err := v.StartMirror(ctx, m); err != nil {
		return Event{}, err
	}
	return v.Ctl.WaitFunc(ctx, "BLOCK_JOB_READY of "+m.JobID, mark, EventWith("BLOCK_JOB_READY", "device", m.JobID))
}

// CompleteJob runs block-job-complete on a ready job and waits for its
// BLOCK_JOB_COMPLETED, which it returns. For a mirror QEMU emits
// JOB_STATUS_CHANGE "waiting" and "pending", then
//
//	BLOCK_JOB_COMPLETED {"device": "mirror0", "len": 4194304, "offset": 4194304, "speed": 0, "type": "mirror"}
//
// then JOB_STATUS_CHANGE "concluded" and "null" (the job is dismissed
// automatically and disappears from query-jobs). The target node replaces
// the source in the graph. For a Manual job, CompleteJob returns the
// BLOCK_JOB_PENDING that follows "pending" instead, and the job waits for
// FinalizeJob.
func (v *VM) CompleteJob(ctx context.Context, jobID string) (Event, error) {
	mark := v.Ctl.Mark()
	if _, err := v.Ctl.Execute(ctx, "block-job-complete", map[string]any{"device": jobID}); err != nil {
		return Event{}, err
	}
	end := v.jobEnd(jobID)
	pending := EventWith("BLOCK_JOB_PENDING", "id", jobID)
	return v.Ctl.WaitFunc(ctx, "completion of job "+jobID, mark, func(ev Event) bool {
		return end(ev) || pending(ev)
	})
}

// FinalizeJob runs job-finalize on a pending Manual job and waits for its
// BLOCK_JOB_COMPLETED, which it returns; JOB_STATUS_CHANGE "concluded"
// follows, and the job stays in query-jobs, "concluded", until DismissJob.
func (v *VM) FinalizeJob(ctx context.Context, jobID string) (Event, error) {
	mark := v.Ctl.Mark()
	if _, err := v.Ctl.Execute(ctx, "job-finalize", map[string]any{"id": jobID}); err != nil {
		return Event{}, err
	}
	return v.WaitJobEnd(ctx, jobID, mark)
}

// DismissJob runs job-dismiss on a concluded Manual job and waits for its
// JOB_STATUS_CHANGE "null", which it returns; the job leaves query-jobs.
func (v *VM) DismissJob(ctx context.Context, jobID string) (Event, error) {
	mark := v.Ctl.Mark()
	if _, err := v.Ctl.Execute(ctx, "job-dismiss", map[string]any{"id": jobID}); err != nil {
		return Event{}, err
	}
	return v.Ctl.WaitFunc(ctx, "dismissal of job "+jobID, mark, jobStatus(jobID, "null"))
}

// jobStatus matches the JOB_STATUS_CHANGE of job id to status.
func jobStatus(id, status string) func(Event) bool {
	ofJob := EventWith("JOB_STATUS_CHANGE", "id", id)
	to := EventWith("JOB_STATUS_CHANGE", "status", status)
	return func(ev Event) bool { return ofJob(ev) && to(ev) }
}

// CancelJob runs block-job-cancel and waits for the job's end event, which
// it returns. With force, a mirror (ready or not, even one paused by an
// error) emits JOB_STATUS_CHANGE "aborting", then
//
//	BLOCK_JOB_CANCELLED {"device": "mirror1", "len": 4194304, "offset": 4194304, "speed": 0, "type": "mirror"}
//
// then "concluded" and "null". Without force, a ready mirror is not
// cancelled but completes without switching to the target: QEMU then emits
// BLOCK_JOB_COMPLETED.
func (v *VM) CancelJob(ctx context.Context, jobID string, force bool) (Event, error) {
	mark := v.Ctl.Mark()
	if _, err := v.Ctl.Execute(ctx, "block-job-cancel", map[string]any{"device": jobID, "force": force}); err != nil {
		return Event{}, err
	}
	return v.WaitJobEnd(ctx, jobID, mark)
}

// WaitJobEnd waits for the BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED of
// jobID at event log position since or later.
func (v *VM) WaitJobEnd(ctx context.Context, jobID string, since int) (Event, error) {
	return v.Ctl.WaitFunc(ctx, "end of job "+jobID, since, v.jobEnd(jobID))
}

func (v *VM) jobEnd(jobID string) func(Event) bool {
	completed := EventWith("BLOCK_JOB_COMPLETED", "device", jobID)
	cancelled := EventWith("BLOCK_JOB_CANCELLED", "device", jobID)
	return func(ev Event) bool { return completed(ev) || cancelled(ev) }
}

// SetWriteThreshold arms block-set-write-threshold on node: the first write
// that ends beyond threshold bytes makes QEMU emit
//
//	BLOCK_WRITE_THRESHOLD {"node-name": "tgt", "amount-exceeded": 1048576, "write-threshold": 1048576}
//
// where amount-exceeded is how far the write went past the threshold. The
// threshold is then disarmed (query-named-block-nodes shows
// "write_threshold": 0) and must be set again for another event. Writes by
// a block job count: set it on a mirror's target.
func (v *VM) SetWriteThreshold(ctx context.Context, node string, threshold uint64) error {
	_, err := v.Ctl.Execute(ctx, "block-set-write-threshold", map[string]any{"node-name": node, "write-threshold": threshold})
	return err
}

// AttachUSBStorage plugs a usb-storage device with qdev id id into the
// qemu-xhci controller (bus XHCIBus, as Options.Devices adds), backed by the
// node node, so that query-block lists the node with the device: "device"
// is "" (the BlockBackend is anonymous) and "qdev" is the path of the SCSI
// disk inside the USB device, "/machine/peripheral/<id>/<id>.0/legacy[0]".
// During a mirror of the node, query-block's "inserted" gains a
// "dirty-bitmaps" entry whose "count" is the bytes still to copy; after
// CompleteJob the device is backed by the target node.
func (v *VM) AttachUSBStorage(ctx context.Context, node, id string) error {
	_, err := v.Ctl.Execute(ctx, "device_add", map[string]any{"driver": "usb-storage", "bus": XHCIBus, "drive": node, "id": id})
	return err
}
