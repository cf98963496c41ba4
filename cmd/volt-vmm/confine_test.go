package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/internal/testbin"
	"github.com/voltvmm/volt/sandbox"
	"github.com/voltvmm/volt/vmm/api/client"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
	"github.com/voltvmm/volt/vmm/netdev/nettest"
)

// procStatus reads the fields of /proc/PID[/task/TID]/status.
func procStatus(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		m[k] = strings.TrimSpace(v)
	}
	return m
}

// TestConfinedVMMDiesOnAForbiddenCall runs volt-vmm as it always runs,
// confined, with the hidden test hooks: once confined, opening a file
// outside its Landlock rules is refused, and a system call no filter
// allows kills it with SIGSYS, named from the kernel's audit record.
func TestConfinedVMMDiesOnAForbiddenCall(t *testing.T) {
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testbin.Build(t, "./cmd/volt-vmm"), "--kernel", elf, "--memory", "32M", "--console", "none",
		"--test-open-after-confine", "/etc/hostname", "--test-seccomp-violation")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGSYS {
		t.Fatalf("volt-vmm ended with %v, want SIGSYS; stderr:\n%s", err, stderr.String())
	}
	if !regexp.MustCompile(`test: open after confinement.* path=/etc/hostname err="open /etc/hostname: permission denied"`).MatchString(stderr.String()) {
		t.Errorf("Landlock let the confined VMM open /etc/hostname, or it did not say; stderr:\n%s", stderr.String())
	}
	kill, err := sandbox.FindSeccompKill(cmd.Process.Pid, 5*time.Second)
	if errors.Is(err, sandbox.ErrNoAuditRecord) {
		t.Logf("the kernel printed no audit record for pid %d (rate-limited printk): %v", cmd.Process.Pid, err)
		return
	}
	if err != nil || kill.Name != "kexec_file_load" {
		t.Errorf("audit record %+v, %v; want kexec_file_load", kill, err)
	}
}

// TestConfinedVMMRunsSnapshotsAndRestores boots the probe with a disk,
// vsock and entropy under every layer volt-vmm applies itself, checks the
// layers from /proc, uses each device (every worker thread under its own
// filter), snapshots where --snapshot-dir allows and is refused elsewhere,
// snapshots into a CAS store too, then restores in a second confined VMM
// that snapshots the restored VM again (file and CAS), and restores from
// the store in a third.
func TestConfinedVMMRunsSnapshotsAndRestores(t *testing.T) {
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bin := testbin.Build(t, "./cmd/volt-vmm")
	dir, snap, elsewhere, store := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, bytes.Repeat([]byte{0x5a}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	// A TAP in a namespace of the test's own, where every VMM runs: the
	// host side answers the guest's ARP request.
	ns := nettest.New(t)
	ns.IP("tuntap", "add", "vtap0", "mode", "tap")
	ns.IP("addr", "add", "10.0.0.1/24", "dev", "vtap0")
	ns.IP("link", "set", "vtap0", "up")
	inNS := func(args ...string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", ns.Name, bin}, args...)...)
	}
	sock, vsockPath := filepath.Join(dir, "api.sock"), filepath.Join(dir, "v.sock")
	cmd := inNS("--api-sock", sock, "--snapshot-dir", snap, "--snapshot-dir", store)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vmm := startAPIVMM(ctx, t, cmd, sock)
	c, stderr := vmm.api, vmm.stderr
	for _, step := range []func() error{
		func() error { return c.PutBootSource(ctx, types.BootSource{KernelImagePath: elf}) },
		func() error { return c.PutMachineConfig(ctx, types.MachineConfiguration{VCPUCount: 2, MemSizeMib: 64}) },
		func() error {
			return c.PutDrive(ctx, types.Drive{DriveID: "d0", PathOnHost: disk, IsRootDevice: false, IsReadOnly: ptr(false)})
		},
		func() error { return c.PutVsock(ctx, types.Vsock{GuestCID: 3, UDSPath: vsockPath}) },
		func() error {
			return c.PutNetworkInterface(ctx, types.NetworkInterface{IfaceID: "eth0", HostDevName: "vtap0", GuestMAC: "02:00:00:00:00:09"})
		},
		func() error { return c.PutEntropy(ctx, types.EntropyDevice{}) },
		func() error { return c.Start(ctx) },
	} {
		if err := step(); err != nil {
			t.Fatalf("%v\n%s", err, stderr.String())
		}
	}
	s := newProbeSession(t, vmm.in, vmm.out)
	s.expect(probe.ReadyLine)

	pid := cmd.Process.Pid
	st := procStatus(t, filepath.Join("/proc", strconv.Itoa(pid), "status"))
	for k, want := range map[string]string{"CapEff": "0000000000000000", "CapPrm": "0000000000000000",
		"NoNewPrivs": "1", "Seccomp": "2"} {
		if st[k] != want {
			t.Errorf("volt-vmm %s = %s, want %s", k, st[k], want)
		}
	}
	s.send("virtio")
	s.expect("virtio devices=4")
	// A guest-initiated vsock connection lands on <uds_path>_6000.
	ln, err := net.Listen("unix", vsockPath+"_6000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		if _, err := bufio.NewReader(conn).ReadString('\n'); err == nil {
			io.WriteString(conn, "pong\n")
		}
	}()
	for _, c := range []struct{ cmd, want string }{
		{"blk read 0", "blk read 0 1 hash="}, {"blk write 8 7", "blk write 8 1 ok"}, {"blk flush", "blk flush ok"},
		{"rng 64", "rng 64 got=64"}, {"vsock listen 5000", "vsock listening 5000"},
		{"vsock connect 6000 ping", "vsock reply pong"},
		{"net send arp 10.0.0.1 10.0.0.2", "net send len=42 ethertype=0x0806"}, {"net recv 0x0806", "net recv len="},
	} {
		s.send(c.cmd)
		if l := s.expect(strings.Fields(c.want)[0]); !strings.HasPrefix(l, c.want) {
			t.Errorf("%s: %q, want %q", c.cmd, l, c.want)
		}
	}
	// A host-initiated one, through the hybrid socket, echoed by the probe.
	conn, err := net.Dial("unix", vsockPath)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	io.WriteString(conn, "CONNECT 5000\nhello\n")
	if ok, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(ok, "OK ") {
		t.Errorf("CONNECT 5000: %q, %v", ok, err)
	} else if echo, err := br.ReadString('\n'); err != nil || echo != "hello\n" {
		t.Errorf("the guest echoed %q, %v", echo, err)
	}
	conn.Close()
	// Every vCPU and device worker thread stacks its role's filter on
	// the process's: /proc counts two filters on those threads.
	tasks, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	stacked := 0
	for _, task := range tasks {
		if procStatus(t, filepath.Join("/proc", strconv.Itoa(pid), "task", task.Name(), "status"))["Seccomp_filters"] == "2" {
			stacked++
		}
	}
	if stacked < 2+4 {
		t.Errorf("%d threads have their role's filter on top of the process's, want at least 6 (2 vCPUs, 4 device workers)", stacked)
	}

	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	err = c.CreateSnapshot(ctx, types.SnapshotCreateParams{SnapshotPath: filepath.Join(elsewhere, types.SnapshotStateFile), MemFilePath: filepath.Join(elsewhere, types.SnapshotMemFile)})
	if err == nil || !strings.Contains(err.Error(), "--snapshot-dir") {
		t.Errorf("a snapshot outside --snapshot-dir: %v, want a refusal naming --snapshot-dir", err)
	}
	if left, _ := os.ReadDir(elsewhere); len(left) != 0 {
		t.Errorf("the refused snapshot left %d files", len(left))
	}
	if err := c.CreateSnapshot(ctx, types.SnapshotCreateParams{SnapshotPath: filepath.Join(snap, types.SnapshotStateFile), MemFilePath: filepath.Join(snap, types.SnapshotMemFile)}); err != nil {
		t.Fatalf("snapshot into --snapshot-dir: %v\n%s", err, stderr.String())
	}
	// The same VM into a CAS store: directories made, chunks renamed in
	// from the store's ingest directory, made read-only.
	casDir := filepath.Join(snap, "cas")
	if err := os.Mkdir(casDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateSnapshot(ctx, types.SnapshotCreateParams{SnapshotPath: filepath.Join(casDir, types.SnapshotStateFile),
		MemBackend: &types.MemoryBackend{BackendType: types.MemBackendCas, BackendPath: store}}); err != nil {
		t.Fatalf("snapshot into a CAS store: %v\n%s", err, stderr.String())
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	s.send("poweroff")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("confined volt-vmm: %v\n%s", err, stderr.String())
	}

	// A confined restore that snapshots the restored VM again, to a file
	// and into the store, then a confined restore from the store.
	again, sock2 := t.TempDir(), filepath.Join(dir, "api2.sock")
	r := inNS("--restore", snap, "--api-sock", sock2, "--snapshot-dir", again, "--snapshot-dir", store)
	rin, _ := r.StdinPipe()
	rout, _ := r.StdoutPipe()
	var rerr lockedBuffer
	r.Stderr = &rerr
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Process.Kill()
	c2 := client.New(sock2)
	defer c2.Close()
	if _, err := c2.WaitReady(ctx, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	s2 := newProbeSession(t, rin, rout)
	for _, c := range []struct{ cmd, want string }{{"blk read 8", "blk read 8 1 hash="}, {"rng 16", "rng 16 got=16"},
		{"net send arp 10.0.0.1 10.0.0.2", "net send len=42"}, {"net recv 0x0806", "net recv len="}} {
		s2.send(c.cmd)
		if l := s2.expect(strings.Fields(c.want)[0]); !strings.HasPrefix(l, c.want) {
			t.Errorf("restored: %s: %q, want %q", c.cmd, l, c.want)
		}
	}
	if err := c2.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c2.CreateSnapshot(ctx, types.SnapshotCreateParams{SnapshotPath: filepath.Join(again, types.SnapshotStateFile), MemFilePath: filepath.Join(again, types.SnapshotMemFile)}); err != nil {
		t.Fatalf("snapshot of a restored VM: %v\n%s", err, rerr.String())
	}
	if err := c2.CreateSnapshot(ctx, types.SnapshotCreateParams{SnapshotPath: filepath.Join(again, "cas.state"),
		MemBackend: &types.MemoryBackend{BackendType: types.MemBackendCas, BackendPath: store}}); err != nil {
		t.Fatalf("CAS snapshot of a restored VM: %v\n%s", err, rerr.String())
	}
	if err := c2.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	s2.send("poweroff")
	if err := r.Wait(); err != nil {
		t.Fatalf("confined restore: %v\n%s", err, rerr.String())
	}

	fromCAS := inNS("--restore", casDir, "--cas-store", store)
	var cout, cerr bytes.Buffer
	fromCAS.Stdin, fromCAS.Stdout, fromCAS.Stderr = strings.NewReader("blk read 8\npoweroff\n"), &cout, &cerr
	if err := fromCAS.Run(); err != nil {
		t.Fatalf("confined restore from the CAS: %v\n%s\n%s", err, cerr.String(), cout.String())
	}
	if !strings.Contains(cout.String(), "blk read 8 1 hash=") || !strings.Contains(cout.String(), "volt-probe: poweroff") {
		t.Errorf("the VM restored from the CAS did not answer:\n%s", cout.String())
	}
}

func ptr[T any](v T) *T { return &v }

// TestConfinedVMMWritesACASVolume runs a confined volt-vmm whose disk is a
// copy-on-write CAS volume (volt cas volume create): the virtio-blk worker
// opens the base's chunks as the probe reads them and rewrites the
// volume's map on a flush, all under its thread's filter and Landlock.
func TestConfinedVMMWritesACASVolume(t *testing.T) {
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	volt, bin := testbin.Build(t, "./cmd/volt"), testbin.Build(t, "./cmd/volt-vmm")
	dir := t.TempDir()
	store, vol, img := filepath.Join(dir, "store"), filepath.Join(dir, "vol"), filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, append([]byte("base-bytes"), make([]byte, 4<<20)...), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"cas", "import", img, "--name", "img", "--store", store},
		{"cas", "volume", "create", vol, "--from", "img", "--store", store},
	} {
		if out, err := exec.Command(volt, args...).CombinedOutput(); err != nil {
			t.Fatalf("volt %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run := func(cmds string) string {
		t.Helper()
		cmd := exec.Command(bin, "--kernel", elf, "--memory", "32M", "--drive", "id=d0,volume="+vol, "--cas-store", store)
		var out, stderr bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(cmds+"poweroff\n"), &out, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("confined volt-vmm on a CAS volume: %v\n%s\n%s", err, stderr.String(), out.String())
		}
		return out.String()
	}
	out := run("blk read 0\nblk write 8 7\nblk write 4096 9 8\nblk flush\n")
	for _, want := range []string{"blk read 0 1 hash=", "head=626173652d6279746573", "blk write 8 1 ok", "blk write 4096 8 ok", "blk flush ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("first run lacks %q:\n%s", want, out)
		}
	}
	// The writes are in the volume: a second VMM reads them back.
	out = run("blk read 8\nblk read 4096\n")
	for _, want := range []string{"blk read 8 1 hash=", "head=07070707070707070707070707070707", "blk read 4096 1 hash=", "head=09090909090909090909090909090909"} {
		if !strings.Contains(out, want) {
			t.Errorf("second run lacks %q:\n%s", want, out)
		}
	}
}

// TestConfinedVMMServesItsAPIOnFilteredThreads: once the VM runs, the API
// server's threads (the accept loop, one per open connection) carry the
// api filter on top of the process's, each connection's thread ends with
// it, a refused request is logged from such a thread, and the API's work
// (pause, resume) still runs; at --seccomp-level 0 no thread has a filter.
func TestConfinedVMMServesItsAPIOnFilteredThreads(t *testing.T) {
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bin := testbin.Build(t, "./cmd/volt-vmm")
	for _, level := range []string{"2", "0"} {
		t.Run("seccomp-level-"+level, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "api.sock")
			cmd := exec.Command(bin, "--api-sock", sock, "--seccomp-level", level)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			vmm := startAPIVMM(ctx, t, cmd, sock)
			c, stderr := vmm.api, vmm.stderr
			s := vmm.bootProbe(ctx, t, elf)
			c.Close() // its idle connections end, and their threads
			pid := cmd.Process.Pid
			// filters counts the VMM's threads by their number of
			// filters. KVM's own kernel task in the process
			// (kvm-nx-lpage-recovery, started by the first KVM_RUN on the
			// vCPU's thread) inherits that thread's filters: not counted.
			filters := func() map[string]int {
				n := map[string]int{}
				tasks, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
				for _, task := range tasks {
					dir := filepath.Join("/proc", strconv.Itoa(pid), "task", task.Name())
					comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
					b, err := os.ReadFile(filepath.Join(dir, "status"))
					if err != nil || strings.HasPrefix(string(comm), "kvm-") {
						continue // the thread just ended, or KVM's
					}
					for _, l := range strings.Split(string(b), "\n") {
						if v, ok := strings.CutPrefix(l, "Seccomp_filters:"); ok {
							n[strings.TrimSpace(v)]++
						}
					}
				}
				return n
			}
			// The vCPU's thread and the accept loop's carry two filters,
			// and, with n connections open, n more threads.
			want := func(what string, n int) {
				t.Helper()
				wantStacked := 2 + n
				if level == "0" {
					wantStacked = 0
				}
				var got map[string]int
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
					if got = filters(); got["2"] == wantStacked && (level == "0") == (got["1"] == 0) && got["3"] == 0 {
						return
					}
				}
				t.Fatalf("%s: threads by number of seccomp filters %v, want %d with two (the vCPU's, the accept loop's, %d connections')", what, got, wantStacked, n)
			}
			want("no connection open", 0)
			var conns []net.Conn
			for i := range 3 {
				conn, err := net.Dial("unix", sock)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				// A request, and the keep-alive connection stays open.
				io.WriteString(conn, "GET / HTTP/1.1\r\n\r\n")
				if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != "HTTP/1.1 200 OK\r\n" {
					t.Fatalf("GET / on connection %d: %q, %v\n%s", i, line, err, stderr.String())
				}
				conns = append(conns, conn)
			}
			want("three connections open", 3)
			// A refused request is logged from its connection's thread.
			got := exchangeRaw(t, sock, "GARBAGE\r\n\r\n")
			if !strings.HasPrefix(got, "HTTP/1.1 400 Bad Request\r\n") {
				t.Errorf("a malformed request: %q", got)
			}
			for _, conn := range conns {
				conn.Close()
			}
			want("the connections closed", 0)
			// The work requests ask for runs off those threads.
			if err := c.Pause(ctx); err != nil {
				t.Fatalf("pause: %v\n%s", err, stderr.String())
			}
			if err := c.Resume(ctx); err != nil {
				t.Fatalf("resume: %v\n%s", err, stderr.String())
			}
			if _, err := c.WaitReady(ctx, time.Millisecond); err != nil {
				t.Fatal(err)
			}
			s.send("poweroff")
			if err := cmd.Wait(); err != nil {
				t.Fatalf("volt-vmm: %v\n%s", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), "api request refused") {
				t.Errorf("the refused request was not logged:\n%s", stderr.String())
			}
		})
	}
}

// exchangeRaw sends raw on a new connection to sock and returns what the
// server answers until it closes the connection.
func exchangeRaw(t *testing.T, sock, raw string) string {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, raw)
	b, _ := io.ReadAll(conn)
	return string(b)
}
