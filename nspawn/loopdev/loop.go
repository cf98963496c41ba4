// Package loopdev binds files to loop block devices, so that the kernel can
// mount a file system image that lives in a file (here: the FUSE file that
// serves a container's CAS volume).
package loopdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Options configure Attach.
type Options struct {
	ReadOnly bool
	// BlockSize is the device's logical block size (512 to 4096, a power
	// of two); 0 means 4096, the ext4 block size, so that the file below
	// sees only whole, aligned 4 KiB requests.
	BlockSize uint32
	// NodeDir is where a device node is made when /dev/loopN does not
	// exist (a container's private /dev, or a host without udev). Empty
	// means the device must be in /dev.
	NodeDir string
}

// Device is an attached loop device. The kernel detaches it (autoclear)
// when the last user closes it: Close this handle once whatever uses the
// device (a mount) holds it open itself.
type Device struct {
	Number int
	Path   string // the node opened: /dev/loopN, or NodeDir/loopN
	file   *os.File
}

const (
	loopMajor = 7
	// loFlagsAutoclear detaches the device when its last opener closes it.
	loFlagsAutoclear = 4
	loFlagsReadOnly  = 1
)

// Attach binds backing to a free loop device. Another process may take
// the free device between asking for it and binding it; that is retried.
func Attach(backing *os.File, opts Options) (*Device, error) {
	bs := opts.BlockSize
	if bs == 0 {
		bs = 4096
	}
	if bs < 512 || bs > 4096 || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("loop: block size %d: want a power of two from 512 to 4096", bs)
	}
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: %w (the kernel needs CONFIG_BLK_DEV_LOOP)", err)
	}
	defer ctl.Close()
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("loop: find a free device: %w", err)
		}
		d, err := configure(n, backing, bs, opts)
		if err == nil {
			return d, nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return nil, err
		}
		lastErr = err
		time.Sleep(time.Duration(attempt+1) * time.Millisecond)
	}
	return nil, fmt.Errorf("loop: every free device was taken before we could bind it: %w", lastErr)
}

func configure(n int, backing *os.File, bs uint32, opts Options) (*Device, error) {
	path, err := node(n, "/dev", opts.NodeDir)
	if err != nil {
		return nil, err
	}
	mode := os.O_RDWR
	if opts.ReadOnly {
		mode = os.O_RDONLY
	}
	f, err := os.OpenFile(path, mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: open %s: %w", path, err)
	}
	cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Size: bs}
	cfg.Info.Flags = loFlagsAutoclear
	if opts.ReadOnly {
		cfg.Info.Flags |= loFlagsReadOnly
	}
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], backing.Name())
	if err := unix.IoctlLoopConfigure(int(f.Fd()), &cfg); err != nil {
		f.Close()
		return nil, fmt.Errorf("loop: bind %s to %s: %w", backing.Name(), path, err)
	}
	return &Device{Number: n, Path: path, file: f}, nil
}

// node returns a path to loop device n: devDir/loopN if it is that device,
// else a node made in dir from the numbers sysfs gives.
func node(n int, devDir, dir string) (string, error) {
	want, err := devNumber(n)
	if err != nil {
		return "", err
	}
	dev := filepath.Join(devDir, fmt.Sprintf("loop%d", n))
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == want {
		return dev, nil
	}
	if dir == "" {
		return "", fmt.Errorf("loop: %s is missing (no udev or a private /dev?) and no directory was given to make a node in", dev)
	}
	p := filepath.Join(dir, fmt.Sprintf("loop%d", n))
	if err := unix.Lstat(p, &st); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == want {
			return p, nil
		}
		if err := os.Remove(p); err != nil {
			return "", fmt.Errorf("loop: %w", err)
		}
	}
	if err := unix.Mknod(p, unix.S_IFBLK|0o600, int(want)); err != nil {
		return "", fmt.Errorf("loop: make a node for loop%d in %s: %w", n, dir, err)
	}
	return p, nil
}

// devNumber reads loop device n's number from sysfs ("7:3"), which holds
// even where /dev does not: with max_part set the minor is not n.
func devNumber(n int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/dev", n))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return unix.Mkdev(loopMajor, uint32(n)), nil
		}
		return 0, fmt.Errorf("loop: %w", err)
	}
	maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("loop: /sys/block/loop%d/dev says %q", n, b)
	}
	return unix.Mkdev(uint32(ma), uint32(mi)), nil
}

// Close closes this handle. With autoclear, the kernel detaches the device
// once no one else (a mount) holds it either.
func (d *Device) Close() error {
	if d.file == nil {
		return nil
	}
	err := d.file.Close()
	d.file = nil
	return err
}

// Detach unbinds the device now (LOOP_CLR_FD) and closes the handle. It
// fails with EBUSY while a mount uses it.
func (d *Device) Detach() error {
	if d.file == nil {
		return errors.New("loop: closed")
	}
	err := unix.IoctlSetInt(int(d.file.Fd()), unix.LOOP_CLR_FD, 0)
	cerr := d.Close()
	if err != nil {
		return fmt.Errorf("loop: detach %s: %w", d.Path, err)
	}
	return cerr
}
