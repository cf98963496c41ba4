package vmm

import (
	"slices"
	"testing"

	"github.com/voltvmm/volt/sandbox"
	"github.com/voltvmm/volt/vmm/snapshot"
)

func TestDeviceRolesNameEachWorkerFilterOnce(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want []sandbox.Role
	}{
		{Config{}, nil},
		{Config{Drives: []DriveConfig{{ID: "a"}, {ID: "b"}}, Entropy: &EntropyConfig{}}, []sandbox.Role{sandbox.RoleBlock, sandbox.RoleRNG}},
		{Config{Nets: []NetConfig{{}}, Vsock: &VsockConfig{}}, []sandbox.Role{sandbox.RoleNet, sandbox.RoleVsock}},
	} {
		if got := deviceRoles(c.cfg.deviceKinds()...); !slices.Equal(got, c.want) {
			t.Errorf("deviceRoles(%v) = %v, want %v", c.cfg.deviceKinds(), got, c.want)
		}
	}
	if got := deviceRoles(snapshot.VirtioVsock, "no-such-kind", snapshot.VirtioVsock); !slices.Equal(got, []sandbox.Role{sandbox.RoleVsock}) {
		t.Errorf("deviceRoles with an unknown kind and a repeat = %v", got)
	}
}
