package vmm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/cas/volume"
	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/ratelimit"
	"github.com/voltvmm/volt/vmm/snapshot"
	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/blk"
	"github.com/voltvmm/volt/vmm/virtio/mmio"
	vnet "github.com/voltvmm/volt/vmm/virtio/net"
	"github.com/voltvmm/volt/vmm/virtio/rng"
	"github.com/voltvmm/volt/vmm/virtio/vsock"
)

// The virtio-mmio window: slot i is the 4 KiB page at virtioBase+i*4 KiB,
// in the 32-bit MMIO gap below the IOAPIC and LAPIC, and takes the i-th GSI
// of virtioGSIs. The GSIs skip the ISA lines in use (0 PIT, 1 keyboard, 4
// COM1, 8 RTC, 12 mouse); the MP table describes all 24 IOAPIC pins.
const virtioBase = 0xd000_0000

var virtioGSIs = []uint32{5, 6, 7, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23}

// MaxVirtioDevices is how many virtio devices fit the window and the GSIs.
var MaxVirtioDevices = len(virtioGSIs)

// DriveConfig is one virtio-blk disk: a file or block device at Path, or
// a CAS volume (Volume, in the store CASStore): a copy-on-write overlay over
// a manifest, whose writes stay in the volume's overlay until committed.
type DriveConfig struct {
	ID       string
	Path     string
	Volume   string
	CASStore string
	ReadOnly bool
	// Root makes the disk the root file system: it gets the first slot (so
	// Linux names it vda) and "root=/dev/vda rw" (ro if read-only) is added
	// to the command line unless it names a root already.
	Root bool
	// PartUUID, with Root, names the root by partition UUID
	// (root=PARTUUID=...) instead of /dev/vda, as Firecracker's partuuid.
	PartUUID string
	// Direct opens the file with O_DIRECT.
	Direct    bool
	RateLimit ratelimit.Config
}

// NetConfig is one virtio-net interface: the device and its host backend.
type NetConfig = vnet.Spec

// VsockConfig is the virtio-vsock device: the guest's CID and the host's
// Unix socket (Firecracker's hybrid vsock).
type VsockConfig = vsock.Config

// EntropyConfig is the virtio-rng device.
type EntropyConfig struct {
	RateLimit ratelimit.Config
}

// validateDevices checks the devices' configurations without touching the
// host.
func (c *Config) validateDevices() []error {
	var errs []error
	ids := map[string]bool{}
	roots := 0
	for _, d := range c.Drives {
		switch {
		case d.ID == "":
			errs = append(errs, errors.New("a drive without an ID"))
		case ids["drive "+d.ID]:
			errs = append(errs, fmt.Errorf("drive %q given twice", d.ID))
		case (d.Path == "") == (d.Volume == ""):
			errs = append(errs, fmt.Errorf("drive %q needs a path or a CAS volume, one of them", d.ID))
		case d.Volume != "" && d.CASStore == "":
			errs = append(errs, fmt.Errorf("drive %q is a CAS volume but no CAS store is given", d.ID))
		case d.Volume != "" && d.Direct:
			errs = append(errs, fmt.Errorf("drive %q: O_DIRECT does not apply to a CAS volume", d.ID))
		}
		ids["drive "+d.ID] = true
		if d.Root {
			roots++
		}
	}
	if roots > 1 {
		errs = append(errs, fmt.Errorf("%d drives are the root device; at most one can be", roots))
	}
	for _, n := range c.Nets {
		if err := n.Config.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("network interface %q: %w", n.Config.ID, err))
		}
		if err := n.Backend.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("network interface %q: %w", n.Config.ID, err))
		}
		if ids["net "+n.Config.ID] {
			errs = append(errs, fmt.Errorf("network interface %q given twice", n.Config.ID))
		}
		ids["net "+n.Config.ID] = true
	}
	if c.Vsock != nil {
		if err := c.Vsock.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("vsock: %w", err))
		}
	}
	if n := len(c.Drives) + len(c.Nets) + boolInt(c.Vsock != nil) + boolInt(c.Entropy != nil); n > MaxVirtioDevices {
		errs = append(errs, fmt.Errorf("%d virtio devices, at most %d fit", n, MaxVirtioDevices))
	}
	return errs
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// virtioSlot is one virtio-mmio device of the VM.
type virtioSlot struct {
	kind      string
	name      string
	base      uint64
	gsi       uint32
	transport *mmio.Transport
	attach    *mmio.Attachment
	// drive is how a disk was opened (block devices only).
	drive *snapshot.DriveState
	// rateLimit is the entropy device's limit, which its own state lacks.
	rateLimit ratelimit.Config
	// close releases what the device holds on the host (the disk, the
	// TAP, the Unix socket), after the transport is closed.
	close func() error
	// udsPath is the vsock device's host socket.
	udsPath string
}

// deviceMemory is the guest memory the virtio queues use: with dirty-page
// tracking on it also records the pages devices write, which KVM's dirty log
// does not see, so that diff snapshots include them.
type deviceMemory struct {
	*memory.Memory
	mu    sync.Mutex
	dirty []uint64 // one bit per page, in memory-file order
}

var _ virtio.DirtyMarker = (*deviceMemory)(nil)

// MarkDirty records that a device wrote [addr, addr+n).
func (m *deviceMemory) MarkDirty(addr memory.GuestAddr, n uint64) {
	if n == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.Regions() {
		if addr < r.Guest || addr >= r.End() {
			continue
		}
		first := (r.FileOffset + uint64(addr-r.Guest)) / memory.PageSize
		last := (r.FileOffset + uint64(addr-r.Guest) + n - 1) / memory.PageSize
		for p := first; p <= last && p/64 < uint64(len(m.dirty)); p++ {
			m.dirty[p/64] |= 1 << (p % 64)
		}
		return
	}
}

// takeDirty ORs the pages devices wrote into bitmap and forgets them.
func (m *deviceMemory) takeDirty(bitmap []uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range min(len(bitmap), len(m.dirty)) {
		bitmap[i] |= m.dirty[i]
		m.dirty[i] = 0
	}
}

// virtioMemory returns the memory the devices are given.
func (v *VM) virtioMemory() virtio.Memory {
	if v.devMem != nil {
		return v.devMem
	}
	if !v.cfg.TrackDirtyPages {
		return v.mem
	}
	v.devMem = &deviceMemory{Memory: v.mem, dirty: make([]uint64, (v.mem.Size()/memory.PageSize+63)/64)}
	return v.devMem
}

// virtioPlan is the devices of a boot, in slot order: the root disk first,
// so that Linux calls it vda, then the other disks, the network interfaces,
// vsock and entropy.
func (c *Config) virtioPlan() []func(v *VM, slot int) error {
	drives := slices.Clone(c.Drives)
	slices.SortStableFunc(drives, func(a, b DriveConfig) int { return boolInt(b.Root) - boolInt(a.Root) })
	var plan []func(*VM, int) error
	for _, d := range drives {
		plan = append(plan, func(v *VM, slot int) error { return v.addDrive(slot, d) })
	}
	for _, n := range c.Nets {
		plan = append(plan, func(v *VM, slot int) error { return v.addNet(slot, n, nil) })
	}
	if c.Vsock != nil {
		vc := *c.Vsock
		plan = append(plan, func(v *VM, slot int) error { return v.addVsock(slot, vc) })
	}
	if c.Entropy != nil {
		ec := *c.Entropy
		plan = append(plan, func(v *VM, slot int) error { return v.addEntropy(slot, ec) })
	}
	return plan
}

// setupVirtio creates the configured virtio devices and the kernel
// command-line parameters that declare them (and the root disk). It needs the
// irqchip (for the irqfds) and runs before the kernel is loaded, which writes
// the command line into guest memory.
func (v *VM) setupVirtio() error {
	for i, add := range v.cfg.virtioPlan() {
		if err := add(v, i); err != nil {
			return err
		}
	}
	var params []string
	for _, s := range v.virtio {
		params = append(params, mmio.KernelParam(s.base, s.gsi))
	}
	if root := v.rootDrive(); root != nil && !hasParam(v.cfg.Cmdline, "root") {
		dev := "/dev/vda"
		if root.PartUUID != "" {
			dev = "PARTUUID=" + root.PartUUID
		}
		mode := "rw"
		if root.ReadOnly {
			mode = "ro"
		}
		params = append(params, "root="+dev, mode)
	}
	if len(params) > 0 {
		v.cfg.Cmdline = strings.TrimSpace(v.cfg.Cmdline + " " + strings.Join(params, " "))
	}
	return nil
}

func (v *VM) rootDrive() *snapshot.DriveState {
	for _, s := range v.virtio {
		if s.drive != nil && s.drive.Root {
			return s.drive
		}
	}
	return nil
}

// hasParam reports whether cmdline sets the kernel parameter name.
func hasParam(cmdline, name string) bool {
	for _, f := range strings.Fields(cmdline) {
		if f == "--" {
			return false
		}
		if k, _, _ := strings.Cut(f, "="); k == name {
			return true
		}
	}
	return false
}

// place puts a device's transport at slot on the MMIO bus and wires its
// notifications and interrupt into KVM.
func (v *VM) place(slot int, kind string, dev virtio.Device, drive *snapshot.DriveState, release func() error) (*virtioSlot, error) {
	if slot >= MaxVirtioDevices {
		release()
		return nil, fmt.Errorf("virtio slot %d: at most %d devices fit", slot, MaxVirtioDevices)
	}
	name := fmt.Sprintf("virtio-%s%d", kind, v.countKind(kind))
	s := &virtioSlot{kind: kind, name: name, base: virtioBase + uint64(slot)*mmio.Size, gsi: virtioGSIs[slot], drive: drive, close: release}
	role := workerRoles[kind]
	t, err := mmio.New(dev, mmio.Config{Name: name, Memory: v.virtioMemory(), IRQ: irqLine{v.vm, s.gsi}, Log: v.logger().With("device", name),
		WorkerSetup: func() error { return confineThread(role) }})
	if err != nil {
		release()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s.transport = t
	// Registered before the attach, so that Close releases it whatever
	// fails below.
	v.virtio = append(v.virtio, s)
	if err := v.mmio.Insert(name, s.base, mmio.Size, t); err != nil {
		return nil, err
	}
	if s.attach, err = t.AttachKVM(v.vm, s.base, s.gsi); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return s, nil
}

func (v *VM) countKind(kind string) int {
	n := 0
	for _, s := range v.virtio {
		if s.kind == kind {
			n++
		}
	}
	return n
}

func (v *VM) addDrive(slot int, d DriveConfig) error {
	drive := &snapshot.DriveState{ID: d.ID, Path: d.Path, Volume: d.Volume, CASStore: d.CASStore, ReadOnly: d.ReadOnly,
		Root: d.Root, PartUUID: d.PartUUID, Direct: d.Direct, RateLimit: d.RateLimit}
	dev, release, err := openDrive(drive)
	if err != nil {
		return err
	}
	_, err = v.place(slot, snapshot.VirtioBlock, dev, drive, release)
	return err
}

// openDrive opens a disk's backend and makes its device.
func openDrive(d *snapshot.DriveState) (*blk.Device, func() error, error) {
	var (
		backend blk.Backend
		release func() error
	)
	if d.Volume != "" {
		store, err := cas.OpenExisting(d.CASStore)
		if err != nil {
			return nil, nil, fmt.Errorf("drive %s: CAS store %s: %w", d.ID, d.CASStore, err)
		}
		// Opening the volume leases its base manifest for as long as it
		// is open, and locks it against a second user.
		vol, err := volume.Open(context.Background(), store, d.Volume)
		if err != nil {
			return nil, nil, fmt.Errorf("drive %s: CAS volume %s: %w", d.ID, d.Volume, err)
		}
		backend, release = vol, vol.Close
	} else {
		f, err := blk.OpenFile(d.Path, blk.FileOptions{ReadOnly: d.ReadOnly, Direct: d.Direct})
		if err != nil {
			return nil, nil, fmt.Errorf("drive %s: %w", d.ID, err)
		}
		backend, release = f, f.Close
	}
	dev, err := blk.New(blk.Config{Backend: backend, ReadOnly: d.ReadOnly, ID: d.ID, RateLimit: d.RateLimit})
	if err != nil {
		release()
		return nil, nil, fmt.Errorf("drive %s: %w", d.ID, err)
	}
	return dev, release, nil
}

func (v *VM) addNet(slot int, n NetConfig, restored *vnet.Device) error {
	dev := restored
	if dev == nil {
		cfg := n.Config
		cfg.Log = v.logger().With("device", "virtio-net", "iface", cfg.ID)
		var err error
		if dev, err = vnet.New(cfg, n.Backend); err != nil {
			return fmt.Errorf("network interface %s: %w", n.Config.ID, err)
		}
	}
	_, err := v.place(slot, snapshot.VirtioNet, dev, nil, dev.Close)
	return err
}

func (v *VM) addVsock(slot int, c VsockConfig) error {
	if c.RequestTimeout == 0 {
		c.RequestTimeout = v.cfg.VsockRequestTimeout
	}
	dev, err := vsock.New(c, vsock.WithLogger(v.logger().With("device", "virtio-vsock")))
	if err != nil {
		return fmt.Errorf("vsock: %w", err)
	}
	s, err := v.place(slot, snapshot.VirtioVsock, dev, nil, dev.Close)
	if err == nil {
		s.udsPath = dev.Config().UDSPath
	}
	return err
}

func (v *VM) addEntropy(slot int, c EntropyConfig) error {
	dev, err := rng.New(rng.Config{RateLimit: c.RateLimit})
	if err != nil {
		return fmt.Errorf("entropy: %w", err)
	}
	s, err := v.place(slot, snapshot.VirtioEntropy, dev, nil, func() error { return nil })
	if err == nil {
		s.rateLimit = c.RateLimit
	}
	return err
}

// pauseDevices stops every device's worker, so that nothing writes guest
// memory or moves a queue while the VM is paused or snapshotted.
func (v *VM) pauseDevices() {
	for _, s := range v.virtio {
		s.transport.Pause()
	}
}

// resumeDevices restarts the workers of activated devices.
func (v *VM) resumeDevices() {
	for _, s := range v.virtio {
		s.transport.Resume()
	}
}

// closeDevices stops and releases every virtio device.
func (v *VM) closeDevices() error {
	var errs []error
	for _, s := range v.virtio {
		if s.attach != nil && v.vm != nil {
			errs = append(errs, s.attach.DetachKVM())
		}
		errs = append(errs, s.transport.Close())
		errs = append(errs, s.close())
	}
	v.virtio = nil
	return errors.Join(errs...)
}

// virtioStates captures every device; the devices must be paused.
func (v *VM) virtioStates() ([]snapshot.VirtioState, error) {
	var out []snapshot.VirtioState
	for _, s := range v.virtio {
		ts, err := s.transport.State()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		st := snapshot.VirtioState{Kind: s.kind, Name: s.name, Base: s.base, GSI: s.gsi, Transport: ts, Drive: s.drive}
		switch d := s.transport.Device().(type) {
		case *blk.Device:
			b := d.State()
			st.Block = &b
		case *vnet.Device:
			n := d.State()
			st.Net = &n
		case *vsock.Device:
			vs := d.State()
			st.Vsock = &vs
		case *rng.Device:
			st.Entropy = &snapshot.EntropyState{State: d.State(), RateLimit: s.rateLimit}
		default:
			return nil, fmt.Errorf("%s: no snapshot state for %T", s.name, d)
		}
		out = append(out, st)
	}
	return out, nil
}

// VirtioOverrides change what a restored VM's devices use on this host, as
// Firecracker's PUT /snapshot/load takes them.
type VirtioOverrides struct {
	// VsockUDSPath replaces the vsock device's host socket (vsock_override).
	VsockUDSPath string
	// HostDevNames replaces, by interface ID, the TAP (or bridge) a network
	// interface uses (network_overrides).
	HostDevNames map[string]string
}

// restoreVirtio recreates the devices of a snapshot, each in its saved slot,
// and puts their transports back. Workers start when the VM resumes.
func (v *VM) restoreVirtio(states []snapshot.VirtioState, o VirtioOverrides) error {
	if len(states) > MaxVirtioDevices {
		return fmt.Errorf("%d virtio devices, at most %d fit: %w", len(states), MaxVirtioDevices, snapshot.ErrInvalid)
	}
	for i, st := range states {
		if st.Base != virtioBase+uint64(i)*mmio.Size || st.GSI != virtioGSIs[i] {
			return fmt.Errorf("virtio device %d (%s) at %#x GSI %d is not in slot %d: %w", i, st.Name, st.Base, st.GSI, i, snapshot.ErrInvalid)
		}
		var err error
		switch st.Kind {
		case snapshot.VirtioBlock:
			err = v.restoreDrive(i, st)
		case snapshot.VirtioNet:
			dev, rerr := vnet.Restore(*st.Net, vnet.RestoreOptions{HostDevName: o.HostDevNames[st.Net.ID], Log: v.logger().With("device", st.Name)})
			if rerr != nil {
				return fmt.Errorf("%s: %w", st.Name, rerr)
			}
			err = v.addNet(i, NetConfig{}, dev)
		case snapshot.VirtioVsock:
			dev, rerr := vsock.NewFromState(*st.Vsock, o.VsockUDSPath, vsock.WithLogger(v.logger().With("device", st.Name)),
				vsock.WithRequestTimeout(v.cfg.VsockRequestTimeout))
			if rerr != nil {
				return fmt.Errorf("%s: %w", st.Name, rerr)
			}
			var s *virtioSlot
			if s, err = v.place(i, snapshot.VirtioVsock, dev, nil, dev.Close); err == nil {
				s.udsPath = dev.Config().UDSPath
			}
		case snapshot.VirtioEntropy:
			dev, rerr := rng.New(rng.Config{RateLimit: st.Entropy.RateLimit})
			if rerr == nil {
				rerr = dev.Restore(st.Entropy.State)
			}
			if rerr != nil {
				return fmt.Errorf("%s: %w", st.Name, rerr)
			}
			var s *virtioSlot
			if s, err = v.place(i, snapshot.VirtioEntropy, dev, nil, func() error { return nil }); err == nil {
				s.rateLimit = st.Entropy.RateLimit
			}
		}
		if err != nil {
			return err
		}
		if err := v.virtio[i].transport.Restore(st.Transport); err != nil {
			return fmt.Errorf("%s: %w", st.Name, err)
		}
	}
	return nil
}

func (v *VM) restoreDrive(slot int, st snapshot.VirtioState) error {
	dev, release, err := openDrive(st.Drive)
	if err != nil {
		return fmt.Errorf("%s: %w", st.Name, err)
	}
	if err := dev.Restore(*st.Block); err != nil {
		release()
		return fmt.Errorf("%s: drive %s: %w", st.Name, st.Drive.ID, err)
	}
	_, err = v.place(slot, snapshot.VirtioBlock, dev, st.Drive, release)
	return err
}
