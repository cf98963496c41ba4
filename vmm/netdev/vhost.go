package netdev

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// VhostNetPath is the kernel's in-kernel virtio-net data path.
const VhostNetPath = "/dev/vhost-net"

// VhostNetAvailable reports whether vhost-net could move this device's
// frames in the kernel, and if not, why, in words fit for a log line. Volt's
// userspace data path is complete on its own; vhost-net is an optional
// offload that is detected here and not yet used.
func VhostNetAvailable() (bool, string) {
	var st unix.Stat_t
	if err := unix.Stat(VhostNetPath, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, fmt.Sprintf("%s absent (host kernel without CONFIG_VHOST_NET, or module vhost_net not loaded): using the userspace virtio-net data path", VhostNetPath)
		}
		return false, fmt.Sprintf("%s: %v: using the userspace virtio-net data path", VhostNetPath, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return false, fmt.Sprintf("%s is not a character device: using the userspace virtio-net data path", VhostNetPath)
	}
	if err := unix.Access(VhostNetPath, unix.R_OK|unix.W_OK); err != nil {
		return false, fmt.Sprintf("%s: %v: using the userspace virtio-net data path", VhostNetPath, err)
	}
	return true, fmt.Sprintf("%s present; Volt does not drive vhost-net yet: using the userspace virtio-net data path", VhostNetPath)
}
