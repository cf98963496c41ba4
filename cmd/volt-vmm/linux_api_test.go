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
	const uid, id = "10123", "fc-linux"

	// The hybrid vsock's "<uds>_<port>" must fit in sun_path: a short base.
	base, err := os.MkdirTemp("", "fcj")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	disk := filepath.Join(base, "rootfs.ext4")
	b, err := os.ReadFile(rootImage)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(disk, 10123, 10123); err != nil {
		t.Fatal(err)
	}
	snapDir := filepath.Join(base, "snap")
	if err := os.Mkdir(snapDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(snapDir, 10123, 10123); err != nil {
		t.Fatal(err)
	}
	// The chroot as the host sees it: the API and vsock sockets are there.
	root := filepath.Join(base, "volt-vmm", id, "root")
	sock, uds := filepath.Join(root, "api.sock"), filepath.Join(root, "v.sock")

	// As Firecracker's guide: the TAP exists before the VMM opens it, and
	// belongs to the VMM's uid, which has no CAP_NET_ADMIN.
	ns.IP("tuntap", "add", "vtap0", "mode", "tap", "user", uid, "group", uid)
	ns.IP("addr", "add", "10.0.0.1/24", "dev", "vtap0")
	ns.IP("link", "set", "vtap0", "up")

	cmd := exec.Command(jailerBin, "--id", id, "--exec-file", vmmBin, "--uid", uid, "--gid", uid,
		"--chroot-base-dir", base, "--netns", "/var/run/netns/"+ns.Name,
		"--ro-bind", kernel+":/vmlinux", "--rw-bind", disk+":/rootfs.ext4", "--rw-bind", snapDir+":/snap",
		"--", "--api-sock", "/api.sock", "--guest-profile", "nested-pvm", "--snapshot-dir", "/snap")
	var console, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &console, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// exited is closed once the jailer is gone; waitErr is then its status.
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	waitFor(t, "the API socket", func() bool {
		st, err := os.Lstat(sock)
		return err == nil && st.Mode().Type() == os.ModeSocket
	})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
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
		r, _ := http.NewRequest(http.MethodPut, "http://localhost"+req.path, strings.NewReader(req.body))
		r.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(r)
		if err != nil {
			t.Fatalf("PUT %s: %v", req.path, err)
		}
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("PUT %s: %d %s\n%s", req.path, resp.StatusCode, answer, stderr.String())
		}
	}

	// The agent answers once volt-init is ready: Linux's virtio-vsock
	// driver behind the hybrid socket.
	deadline := time.Now().Add(10 * time.Minute)
	var last error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		conn, err := agent.DialHybrid(ctx, uds, agent.Port)
		if err == nil {
			err = agent.Ping(ctx, conn)
			conn.Close()
		}
		cancel()
		if err == nil {
			break
		}
		last = err
		if time.Now().After(deadline) {
			t.Fatalf("the guest agent never answered: %v\nconsole:\n%s\nstderr:\n%s", last, console.String(), stderr.String())
		}
		select {
		case <-exited:
			t.Fatalf("the jailer exited before the agent answered: %v\nconsole:\n%s\nstderr:\n%s", waitErr, console.String(), stderr.String())
		case <-time.After(time.Second):
		}
	}
	// The VMM is the jailer's child: the unprivileged uid, no
	// capabilities, seccomp filtering, its root the chroot.
	kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
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
	guest := func(argv ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		conn, err := agent.DialHybrid(ctx, uds, agent.Port)
		if err != nil {
			t.Fatalf("agent %q: %v", argv, err)
		}
		defer conn.Close()
		res, err := (&agent.Client{}).Run(ctx, conn, agent.Request{Args: argv})
		if err != nil || !res.Success() {
			t.Fatalf("guest %q: %v %v; stdout %q stderr %q", argv, err, res.Status, res.Stdout, res.Stderr)
		}
		return string(res.Stdout)
	}
	// virtio-net both ways: the guest pings the host, the host the guest
	// (busybox-static, which scripts/setup installs for the guests).
	guest("/bin/busybox", "ping", "-c", "1", "-W", "10", "10.0.0.1")
	if out, err := exec.Command("ip", "netns", "exec", ns.Name, "busybox", "ping", "-c", "1", "-W", "10", "10.0.0.2").CombinedOutput(); err != nil {
		t.Errorf("host → guest ping: %v\n%s", err, out)
	}
	for _, want := range []string{"virtio_blk virtio0: [vda]", "EXT4-fs (vda): mounted filesystem", "volt-init: ready "} {
		if !strings.Contains(console.String(), want) {
			t.Errorf("the console lacks %q:\n%s", want, console.String())
		}
	}

	// A snapshot, as Firecracker's guide takes one, into the jail's
	// --snapshot-dir; the VMM is then killed and a second jailed VMM
	// restores it, with the same disk, TAP and vsock path.
	for _, req := range []struct{ method, path, body string }{
		{http.MethodPatch, "/vm", `{"state": "Paused"}`},
		{http.MethodPut, "/snapshot/create", `{"snapshot_type": "Full", "snapshot_path": "/snap/vm.state", "mem_file_path": "/snap/vm.mem"}`},
	} {
		apiRequest(t, hc, req.method, req.path, req.body, stderr.String)
	}
	if pid, err := strconv.Atoi(vmmPID); err == nil {
		unix.Kill(pid, unix.SIGKILL)
	}
	select {
	case <-exited:
	case <-time.After(time.Minute):
		t.Fatal("the first jailed VMM did not die")
	}
	const id2 = "fc-linux-restored"
	root2 := filepath.Join(base, "volt-vmm", id2, "root")
	sock2, uds2 := filepath.Join(root2, "api.sock"), filepath.Join(root2, "v.sock")
	cmd2 := exec.Command(jailerBin, "--id", id2, "--exec-file", vmmBin, "--uid", uid, "--gid", uid,
		"--chroot-base-dir", base, "--netns", "/var/run/netns/"+ns.Name,
		"--rw-bind", disk+":/rootfs.ext4", "--rw-bind", snapDir+":/snap",
		"--", "--api-sock", "/api.sock", "--snapshot-dir", "/snap")
	var console2, stderr2 lockedBuffer
	cmd2.Stdout, cmd2.Stderr = &console2, &stderr2
	if err := cmd2.Start(); err != nil {
		t.Fatal(err)
	}
	exited2 := make(chan struct{})
	var waitErr2 error
	go func() { waitErr2 = cmd2.Wait(); close(exited2) }()
	defer func() {
		cmd2.Process.Kill()
		<-exited2
	}()
	waitFor(t, "the restoring VMM's API socket", func() bool {
		st, err := os.Lstat(sock2)
		return err == nil && st.Mode().Type() == os.ModeSocket
	})
	hc2 := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock2)
	}}}
	apiRequest(t, hc2, http.MethodPut, "/snapshot/load",
		`{"snapshot_path": "/snap/vm.state", "mem_backend": {"backend_type": "File", "backend_path": "/snap/vm.mem"}, "resume_vm": true}`, stderr2.String)
	// The restored guest answers on the new VMM's socket (after the
	// transport reset a restore sends it), and its workload ends.
	uds = uds2
	deadline = time.Now().Add(5 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		conn, err := agent.DialHybrid(ctx, uds2, agent.Port)
		if err == nil {
			err = agent.Ping(ctx, conn)
			conn.Close()
		}
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restored guest's agent never answered: %v\nstderr:\n%s", err, stderr2.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	guest("/bin/busybox", "sh", "-c", "echo firecracker-flow > /tmp/ctl")
	select {
	case <-exited2:
		if waitErr2 != nil {
			t.Fatalf("volt-jailer: %v (want exit 0 after the restored guest's power-off)\nconsole:\n%s\nstderr:\n%s", waitErr2, console2.String(), stderr2.String())
		}
	case <-time.After(5 * time.Minute):
		t.Fatalf("the restored VMM did not exit after the workload ended\nconsole:\n%s", console2.String())
	}
	if !strings.Contains(console2.String(), "workload-done-firecracker-flow") {
		t.Errorf("the restored guest's console lacks its workload's last line:\n%s", console2.String())
	}
	out, err := exec.Command(debugfs, "-R", "cat /fc-marker", disk).Output()
	if err != nil || strings.TrimSpace(string(out)) != "firecracker-flow" {
		t.Errorf("the root disk after power-off: /fc-marker = %q, %v", out, err)
	}
}

// apiRequest sends one API request and fails the test unless it answers 204.
func apiRequest(t *testing.T, hc *http.Client, method, path, body string, log func() string) {
	t.Helper()
	r, _ := http.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(r)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", method, path, err, log())
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("%s %s: %d %s\n%s", method, path, resp.StatusCode, answer, log())
	}
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
