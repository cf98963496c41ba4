package api

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/ratelimit"
	vnet "github.com/voltvmm/volt/vmm/virtio/net"
)

// The device endpoints store the request bodies (GET /vm/config returns
// them as given) and the VM configuration derived from them; a PUT with an
// ID already configured replaces that device, as in Firecracker.

// rateLimit converts a Firecracker rate limiter (refill_time in ms) into
// the device's token buckets.
func rateLimit(field string, r *types.RateLimiter) (ratelimit.Config, error) {
	var c ratelimit.Config
	if r == nil {
		return c, nil
	}
	bucket := func(name string, b *types.TokenBucket) (ratelimit.BucketConfig, error) {
		if b == nil {
			return ratelimit.BucketConfig{}, nil
		}
		var burst int64
		if b.OneTimeBurst != nil {
			burst = *b.OneTimeBurst
		}
		bc, err := vnet.FirecrackerBucket(b.Size, burst, b.RefillTime)
		if err != nil {
			return bc, fmt.Errorf("%s.%s: %w", field, name, err)
		}
		return bc, nil
	}
	var err error
	if c.Ops, err = bucket("ops", r.Ops); err != nil {
		return c, err
	}
	if c.Bytes, err = bucket("bandwidth", r.Bandwidth); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// checkDiskPath accepts a regular file or a block device, without opening
// it (a FIFO would block an open).
func checkDiskPath(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("path_on_host: %w", err)
	}
	if !st.Mode().IsRegular() && (st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0) {
		return fmt.Errorf("path_on_host %s is neither a regular file nor a block device", path)
	}
	return nil
}

func driveConfig(d types.Drive) (vmm.DriveConfig, error) {
	if d.Socket != "" {
		return vmm.DriveConfig{}, errors.New("socket: vhost-user drives are not supported by volt-vmm; give path_on_host")
	}
	if err := checkDiskPath(d.PathOnHost); err != nil {
		return vmm.DriveConfig{}, err
	}
	rl, err := rateLimit("rate_limiter", d.RateLimiter)
	if err != nil {
		return vmm.DriveConfig{}, err
	}
	return vmm.DriveConfig{
		ID: d.DriveID, Path: d.PathOnHost, ReadOnly: d.IsReadOnly != nil && *d.IsReadOnly,
		Root: d.IsRootDevice, PartUUID: d.PartUUID, RateLimit: rl,
	}, nil
}

func netConfig(n types.NetworkInterface) (vmm.NetConfig, error) {
	c := vmm.NetConfig{
		Config:  vnet.Config{ID: n.IfaceID},
		Backend: vnet.BackendConfig{Kind: vnet.BackendTap, Name: n.HostDevName},
	}
	var err error
	if n.GuestMAC != "" {
		if c.Config.MAC, err = vnet.ParseMAC(n.GuestMAC); err != nil {
			return c, fmt.Errorf("guest_mac: %w", err)
		}
	}
	if n.MTU != nil {
		c.Config.MTU = uint16(*n.MTU)
	}
	if c.Config.RxRateLimit, err = rateLimit("rx_rate_limiter", n.RxRateLimiter); err != nil {
		return c, err
	}
	if c.Config.TxRateLimit, err = rateLimit("tx_rate_limiter", n.TxRateLimiter); err != nil {
		return c, err
	}
	if err := c.Config.Validate(); err != nil {
		return c, err
	}
	return c, c.Backend.Validate()
}

// replaceByID puts v in list in the place of the element with the same id,
// or at the end.
func replaceByID[T any](list []T, v T, id func(T) string) []T {
	if i := slices.IndexFunc(list, func(x T) bool { return id(x) == id(v) }); i >= 0 {
		list[i] = v
		return list
	}
	return append(list, v)
}

// PutDrive answers PUT /drives/{id}.
func (c *Controller) PutDrive(pathID string, d types.Drive) error {
	if err := d.Validate(pathID); err != nil {
		return err
	}
	dc, err := driveConfig(d)
	if err != nil {
		return err
	}
	if err := c.begin(OpPutDrive); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if d.IsRootDevice {
		for _, other := range c.drives {
			if other.IsRootDevice && other.DriveID != d.DriveID {
				return fmt.Errorf("drive %q is already the root device; only one can be", other.DriveID)
			}
		}
	}
	c.drives = replaceByID(c.drives, d, func(x types.Drive) string { return x.DriveID })
	c.cfg.Drives = replaceByID(c.cfg.Drives, dc, func(x vmm.DriveConfig) string { return x.ID })
	c.configured = true
	return nil
}

// PutNetworkInterface answers PUT /network-interfaces/{id}.
func (c *Controller) PutNetworkInterface(pathID string, n types.NetworkInterface) error {
	if err := n.Validate(pathID); err != nil {
		return err
	}
	nc, err := netConfig(n)
	if err != nil {
		return err
	}
	if err := c.begin(OpPutNetworkInterface); err != nil {
		return err
	}
	defer c.mu.Unlock()
	c.nets = replaceByID(c.nets, n, func(x types.NetworkInterface) string { return x.IfaceID })
	c.cfg.Nets = replaceByID(c.cfg.Nets, nc, func(x vmm.NetConfig) string { return x.Config.ID })
	c.configured = true
	return nil
}

// PutVsock answers PUT /vsock.
func (c *Controller) PutVsock(v types.Vsock) error {
	if err := v.Validate(); err != nil {
		return err
	}
	vc := vmm.VsockConfig{GuestCID: uint64(v.GuestCID), UDSPath: v.UDSPath}
	if err := vc.Validate(); err != nil {
		return err
	}
	if err := c.begin(OpPutVsock); err != nil {
		return err
	}
	defer c.mu.Unlock()
	c.vsock = &v
	c.cfg.Vsock = &vc
	c.configured = true
	return nil
}

// PutEntropy answers PUT /entropy.
func (c *Controller) PutEntropy(e types.EntropyDevice) error {
	if err := e.Validate(); err != nil {
		return err
	}
	rl, err := rateLimit("rate_limiter", e.RateLimiter)
	if err != nil {
		return err
	}
	if err := c.begin(OpPutEntropy); err != nil {
		return err
	}
	defer c.mu.Unlock()
	c.entropy = &e
	c.cfg.Entropy = &vmm.EntropyConfig{RateLimit: rl}
	c.configured = true
	return nil
}
