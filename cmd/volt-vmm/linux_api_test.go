package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/agent"
	"github.com/voltvmm/volt/internal/testbin"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
	"github.com/voltvmm/volt/vmm/netdev/nettest"
	"golang.org/x/sys/unix"
)

// Firecracker's getting-started sequence, its request bodies as its
// documentation gives them, drives volt-vmm under volt-jailer (chroot, an
// unprivileged uid, its network namespace, as Firecracker runs in
// production) booting our Linux from an ext4 root disk, with a TAP and a
// vsock device: Linux's own virtio drivers answer through every device.
// The VM is then snapshotted into the jail's --snapshot-dir, killed, and
// restored by a second jailed VMM, whose guest answers, writes a file that
// is on the disk after its power-off, and the jailer exits 0 with it.
func TestFirecrackerGettingStartedBootsLinuxJailed(t *testing.T) {
	kvmtest.Require(t)
	ns := nettest.New(t) // skips without root, /dev/net/tun or iproute2
	kernel, err := filepath.Abs(guestArtefact(t, "vmlinux"))
	if err != nil {
		t.Fatal(err)
	}
	rootImage := guestArtefact(t, "rootfs.ext4")
	debugfs := e2fsprog(t, "debugfs")
	vmmBin, jailerBin := testbin.Build(t, "./cmd/volt-vmm"), testbin.Build(t, "./cmd/volt-jailer")
	const uid = "10123"

	// The hybrid vsock's "<uds>_<port>" must fit in sun_path: a short base.
	base, err := os.MkdirTemp("", "fcj")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	disk, snapDir := filepath.Join(base, "rootfs.ext4"), filepath.Join(base, "snap")
	b, err := os.ReadFile(rootImage)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(snapDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{disk, snapDir} {
		if err := os.Chown(p, 10123, 10123); err != nil {
			t.Fatal(err)
		}
	}
	// As Firecracker's guide: the TAP exists before the VMM opens it, and
	// belongs to the VMM's uid, which has no CAP_NET_ADMIN.
	ns.IP("tuntap", "add", "vtap0", "mode", "tap", "user", uid, "group", uid)
	ns.IP("addr", "add", "10.0.0.1/24", "dev", "vtap0")
	ns.IP("link", "set", "vtap0", "up")
	jail := func(id string, binds []string, vmmArgs ...string) *jailedVMM {
		args := []string{"--id", id, "--exec-file", vmmBin, "--uid", uid, "--gid", uid,
			"--chroot-base-dir", base, "--netns", "/var/run/netns/" + ns.Name,
			"--rw-bind", disk + ":/rootfs.ext4", "--rw-bind", snapDir + ":/snap"}
		args = append(append(args, binds...), "--")
		args = append(args, "--api-sock", "/api.sock", "--snapshot-dir", "/snap")
		return startJailed(t, jailerBin, filepath.Join(base, "volt-vmm", id, "root"), append(args, vmmArgs...))
	}

	vm := jail("fc-linux", []string{"--ro-bind", kernel + ":/vmlinux"}, "--guest-profile", "nested-pvm")
	// The workload waits until the host, through the agent, tells it to
	// write a file and end; its end powers the guest off.
	bootArgs := `console=ttyS0 reboot=k panic=1 ip=10.0.0.2::10.0.0.1:255.255.255.0:fc-guest:eth0:off ` +
		`volt.run="/bin/busybox sh -c 'mkfifo /tmp/ctl && read x < /tmp/ctl && echo $x > /fc-marker && sync && echo workload-done-$x'"`
	args, _ := json.Marshal(bootArgs)
	for _, req := range []struct{ path, body string }{
		{"/boot-source", `{"kernel_image_path": "/vmlinux", "boot_args": ` + string(args) + `}`},
		{"/drives/rootfs", `{"drive_id": "rootfs", "path_on_host": "/rootfs.ext4", "is_root_device": true, "is_read_only": false}`},
		{"/machine-config", `{"vcpu_count": 1, "mem_size_mib": 256}`},
		{"/network-interfaces/eth0", `{"iface_id": "eth0", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "vtap0"}`},
		{"/vsock", `{"guest_cid": 3, "uds_path": "/v.sock"}`},
		{"/actions", `{"action_type": "InstanceStart"}`},
	} {
		vm.request(http.MethodPut, req.path, req.body)
	}
	// The agent answers once volt-init is ready: Linux's virtio-vsock
	// driver behind the hybrid socket.
	vm.waitAgent(10 * time.Minute)

	// The VMM is the jailer's child: the unprivileged uid, no
	// capabilities, seccomp filtering, its root the chroot.
	kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", vm.cmd.Process.Pid, vm.cmd.Process.Pid))
	if err != nil || len(strings.Fields(string(kids))) != 1 {
		t.Fatalf("the jailer's children: %q %v", kids, err)
	}
	vmmPID := strings.Fields(string(kids))[0]
	st := procStatus(t, filepath.Join("/proc", vmmPID, "status"))
	for k, want := range map[string]string{"Uid": uid, "CapEff": "0000000000000000", "Seccomp": "2"} {
		if got := strings.Fields(st[k]); len(got) == 0 || got[0] != want {
			t.Errorf("the jailed VMM's %s is %q, want %s", k, st[k], want)
		}
	}
	// Its root (pivoted, in a mount namespace of its own) holds what was
	// bound in and not the host's tree around the test.
	vmmRoot := filepath.Join("/proc", vmmPID, "root")
	for _, p := range []string{"vmlinux", "rootfs.ext4", "api.sock"} {
		if _, err := os.Stat(filepath.Join(vmmRoot, p)); err != nil {
			t.Errorf("the jailed VMM's root lacks /%s: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(vmmRoot, base)); err == nil {
		t.Errorf("the jailed VMM sees the host's %s", base)
	}
	// virtio-net both ways: the guest pings the host, the host the guest
	// (busybox-static, which scripts/setup installs for the guests).
	vm.guest("/bin/busybox", "ping", "-c", "1", "-W", "10", "10.0.0.1")
	if out, err := exec.Command("ip", "netns", "exec", ns.Name, "busybox", "ping", "-c", "1", "-W", "10", "10.0.0.2").CombinedOutput(); err != nil {
		t.Errorf("host → guest ping: %v\n%s", err, out)
	}
	for _, want := range []string{"virtio_blk virtio0: [vda]", "EXT4-fs (vda): mounted filesystem", "volt-init: ready "} {
		if !strings.Contains(vm.console.String(), want) {
			t.Errorf("the console lacks %q:\n%s", want, vm.console.String())
		}
	}

	// A snapshot, as Firecracker's guide takes one, into the jail's
	// --snapshot-dir; the VMM is then killed and a second jailed VMM
	// restores it, with the same disk, TAP and vsock path.
	vm.request(http.MethodPatch, "/vm", `{"state": "Paused"}`)
	vm.request(http.MethodPut, "/snapshot/create", `{"snapshot_type": "Full", "snapshot_path": "/snap/vm.state", "mem_file_path": "/snap/vm.mem"}`)
	if pid, err := strconv.Atoi(vmmPID); err == nil {
		unix.Kill(pid, unix.SIGKILL)
	}
	select {
	case <-vm.exited:
	case <-time.After(time.Minute):
		t.Fatal("the first jailed VMM did not die")
	}
	restored := jail("fc-linux-restored", nil)
	restored.request(http.MethodPut, "/snapshot/load",
		`{"snapshot_path": "/snap/vm.state", "mem_backend": {"backend_type": "File", "backend_path": "/snap/vm.mem"}, "resume_vm": true}`)
	// The restored guest answers on the new VMM's socket (after the
	// transport reset a restore sends it), and its workload ends.
	restored.waitAgent(5 * time.Minute)
	restored.guest("/bin/busybox", "sh", "-c", "echo firecracker-flow > /tmp/ctl")
	select {
	case <-restored.exited:
		if restored.waitErr != nil {
			t.Fatalf("volt-jailer: %v (want exit 0 after the restored guest's power-off)\nconsole:\n%s\nstderr:\n%s", restored.waitErr, restored.console.String(), restored.stderr.String())
		}
	case <-time.After(5 * time.Minute):
		t.Fatalf("the restored VMM did not exit after the workload ended\nconsole:\n%s", restored.console.String())
	}
	if !strings.Contains(restored.console.String(), "workload-done-firecracker-flow") {
		t.Errorf("the restored guest's console lacks its workload's last line:\n%s", restored.console.String())
	}
	out, err := exec.Command(debugfs, "-R", "cat /fc-marker", disk).Output()
	if err != nil || strings.TrimSpace(string(out)) != "firecracker-flow" {
		t.Errorf("the root disk after power-off: /fc-marker = %q, %v", out, err)
	}
}

// jailedVMM is a volt-jailer process running volt-vmm, its console and
// log captured, its API and vsock sockets in its chroot (root, as the host
// sees it).
type jailedVMM struct {
	t               *testing.T
	cmd             *exec.Cmd
	console, stderr lockedBuffer
	exited          chan struct{} // closed once the jailer is gone
	waitErr         error         // its status, once exited is closed
	api             *http.Client
	uds             string
}

func startJailed(t *testing.T, jailerBin, root string, args []string) *jailedVMM {
	t.Helper()
	j := &jailedVMM{t: t, cmd: exec.Command(jailerBin, args...), exited: make(chan struct{}), uds: filepath.Join(root, "v.sock")}
	j.cmd.Stdout, j.cmd.Stderr = &j.console, &j.stderr
	if err := j.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { j.waitErr = j.cmd.Wait(); close(j.exited) }()
	t.Cleanup(func() {
		j.cmd.Process.Kill()
		<-j.exited
	})
	sock := filepath.Join(root, "api.sock")
	waitFor(t, "the jailed VMM's API socket", func() bool {
		st, err := os.Lstat(sock)
		return err == nil && st.Mode().Type() == os.ModeSocket
	})
	j.api = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	return j
}

// request sends one API request and fails the test unless it answers 204.
func (j *jailedVMM) request(method, path, body string) {
	j.t.Helper()
	r, _ := http.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	resp, err := j.api.Do(r)
	if err != nil {
		j.t.Fatalf("%s %s: %v\n%s", method, path, err, j.stderr.String())
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		j.t.Fatalf("%s %s: %d %s\n%s", method, path, resp.StatusCode, answer, j.stderr.String())
	}
}

// waitAgent waits until the guest agent answers a ping, failing the test
// if the VMM exits first or timeout passes.
func (j *jailedVMM) waitAgent(timeout time.Duration) {
	j.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		conn, err := agent.DialHybrid(ctx, j.uds, agent.Port)
		if err == nil {
			err = agent.Ping(ctx, conn)
			conn.Close()
		}
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			j.t.Fatalf("the guest agent never answered: %v\nconsole:\n%s\nstderr:\n%s", err, j.console.String(), j.stderr.String())
		}
		select {
		case <-j.exited:
			j.t.Fatalf("the jailer exited before the agent answered: %v\nconsole:\n%s\nstderr:\n%s", j.waitErr, j.console.String(), j.stderr.String())
		case <-time.After(time.Second):
		}
	}
}

// guest runs argv in the guest through its agent; it must succeed.
func (j *jailedVMM) guest(argv ...string) string {
	j.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := agent.DialHybrid(ctx, j.uds, agent.Port)
	if err != nil {
		j.t.Fatalf("agent %q: %v", argv, err)
	}
	defer conn.Close()
	res, err := (&agent.Client{}).Run(ctx, conn, agent.Request{Args: argv})
	if err != nil || !res.Success() {
		j.t.Fatalf("guest %q: %v %v; stdout %q stderr %q", argv, err, res.Status, res.Stdout, res.Stderr)
	}
	return string(res.Stdout)
}

// e2fsprog finds an e2fsprogs tool (in /sbin, which root's PATH may lack).
func e2fsprog(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(d, name); fileExists(p) {
			return p
		}
	}
	t.Fatalf("%s is missing: scripts/setup installs e2fsprogs", name)
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
