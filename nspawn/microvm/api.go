package microvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/voltvmm/volt/internal/unixhttp"
)

// volt-vmm serves Firecracker's API on every VM's socket (--api-sock): the
// supervisor boots the VM with InstanceStart, as a Firecracker user would,
// and the socket stays for the VM's owner (GET /, PATCH /vm Paused, ...).
// The request is spelled here rather than taken from vmm/api/types, which
// containers' packages may not import; it is Firecracker's documented
// shape.

// bootFault is the VMM's refusal to start the VM (its fault_message).
type bootFault struct{ msg string }

func (f *bootFault) Error() string { return "volt-vmm refused to start the VM: " + f.msg }

// startVM waits for volt-vmm's API to answer on sock and asks it to boot
// the VM. It returns nil once the vCPUs run, a *bootFault if the VMM
// refused, or another error if the exchange failed; while the socket does
// not exist or refuses connections it keeps trying until ctx ends.
func startVM(ctx context.Context, sock string) error {
	c := unixhttp.New(sock, 1, 64<<10)
	defer c.Close()
	body := map[string]string{"action_type": "InstanceStart"}
	for {
		a, err := c.Do(ctx, "PUT", "/actions", body)
		if err == nil {
			if a.OK() {
				return nil
			}
			return &bootFault{msg: faultMessage(a)}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("InstanceStart on %s: %w", sock, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// faultMessage reads Firecracker's {"fault_message": "..."}, or says what
// came instead.
func faultMessage(a unixhttp.Answer) string {
	var f struct {
		FaultMessage string `json:"fault_message"`
	}
	if json.Unmarshal(a.Body, &f) == nil && f.FaultMessage != "" {
		return f.FaultMessage
	}
	body := strings.TrimSpace(string(a.Body))
	if len(body) > 200 {
		body = body[:200] + "..."
	}
	return fmt.Sprintf("HTTP %d %s", a.Status, body)
}
