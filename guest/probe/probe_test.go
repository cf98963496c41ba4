package probe

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/marker"
)

func TestMarkerHeaderMatches(t *testing.T) {
	src, err := SourceDir()
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(filepath.Join(src, "marker.h"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"PORT": marker.Port}
	for _, s := range marker.All() {
		// "kernel-long-mode" -> "KERNEL_LONG_MODE"
		want[strings.ToUpper(strings.ReplaceAll(s.String(), "-", "_"))] = uint64(s)
	}
	define := regexp.MustCompile(`^#define MARKER_([A-Z0-9_]+) (0x[0-9a-fA-F]+)$`)
	got := map[string]uint64{}
	for _, line := range strings.Split(string(text), "\n") {
		if !strings.HasPrefix(line, "#define MARKER_") {
			continue
		}
		m := define.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("marker.h: line %q is not of the form \"#define MARKER_NAME 0xNN\"", line)
			continue
		}
		v, err := strconv.ParseUint(m[2], 0, 16)
		if err != nil {
			t.Errorf("marker.h: %q: %v", line, err)
			continue
		}
		got[m[1]] = v
	}
	for name, v := range want {
		g, ok := got[name]
		switch {
		case !ok:
			t.Errorf("marker.h lacks MARKER_%s (Go value %#x)", name, v)
		case g != v:
			t.Errorf("MARKER_%s = %#x in marker.h, %#x in guest/marker", name, g, v)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("marker.h defines MARKER_%s, which guest/marker does not know", name)
		}
	}
}

func TestParseBanner(t *testing.T) {
	for _, tc := range []struct {
		line      string
		cpus, mem int
		ok        bool
	}{
		{"volt-probe: booted cpus=2 mem=127", 2, 127, true},
		{"volt-probe: booted cpus=1 mem=0", 1, 0, true},
		{"volt-probe: booted cpus=2 mem=127\r", 0, 0, false},
		{"volt-probe: booted cpus= mem=1", 0, 0, false},
		{"volt-probe: ready", 0, 0, false},
	} {
		cpus, mem, ok := ParseBanner(tc.line)
		if cpus != tc.cpus || mem != tc.mem || ok != tc.ok {
			t.Errorf("ParseBanner(%q) = %d, %d, %v; want %d, %d, %v",
				tc.line, cpus, mem, ok, tc.cpus, tc.mem, tc.ok)
		}
	}
}

func FuzzParseBanner(f *testing.F) {
	f.Add("volt-probe: booted cpus=2 mem=127")
	f.Add("volt-probe: booted cpus=99999999999999999999 mem=1")
	f.Fuzz(func(t *testing.T, line string) {
		cpus, mem, ok := ParseBanner(line)
		if !ok {
			return
		}
		if got := fmt.Sprintf("volt-probe: booted cpus=%d mem=%d", cpus, mem); got != line &&
			!strings.Contains(line, "=0") {
			t.Errorf("ParseBanner(%q) = %d, %d, which prints as %q", line, cpus, mem, got)
		}
	})
}

func requireTool(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s not found in PATH: install it to build or run the probe", n)
		}
	}
}

func buildProbe(t *testing.T) string {
	t.Helper()
	if os.Getenv(EnvProbe) == "" {
		requireTool(t, "gcc", "ld")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := Path(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestProbeELFIsPVHBootable checks what every loader relies on: one
// segment at 1 MiB and a Xen PHYS32_ENTRY note naming the entry.
func TestProbeELFIsPVHBootable(t *testing.T) {
	path := buildProbe(t)
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Fatalf("got %v %v %v, want a 64-bit x86-64 executable", f.Class, f.Machine, f.Type)
	}
	var loads int
	var entry uint64
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			loads++
			if p.Paddr != LoadAddr || p.Vaddr != LoadAddr {
				t.Errorf("PT_LOAD at paddr %#x vaddr %#x, want %#x", p.Paddr, p.Vaddr, LoadAddr)
			}
			if p.Memsz > 1<<20 {
				t.Errorf("PT_LOAD memsz %d, want under 1 MiB (scratch starts at 4 MiB)", p.Memsz)
			}
		case elf.PT_NOTE:
			if p.Align != 4 {
				t.Errorf("PT_NOTE align %d; QEMU pads the note name to p_align, so it must be 4", p.Align)
			}
			data, err := io.ReadAll(p.Open())
			if err != nil {
				t.Fatal(err)
			}
			entry = xenEntry(t, data)
		}
	}
	if loads != 1 {
		t.Errorf("%d PT_LOAD segments, want 1", loads)
	}
	if entry != EntryAddr {
		t.Errorf("Xen PHYS32_ENTRY note gives %#x, want %#x", entry, EntryAddr)
	}
	if st, err := os.Stat(path); err == nil && st.Size() > 64<<10 {
		t.Errorf("probe.elf is %d bytes; keep it under 64 KiB", st.Size())
	}
}

func xenEntry(t *testing.T, notes []byte) uint64 {
	t.Helper()
	const xenPhys32Entry = 18
	for len(notes) >= 12 {
		namesz := binary.LittleEndian.Uint32(notes[0:])
		descsz := binary.LittleEndian.Uint32(notes[4:])
		typ := binary.LittleEndian.Uint32(notes[8:])
		nameEnd := 12 + (int(namesz)+3)&^3
		descEnd := nameEnd + (int(descsz)+3)&^3
		if descEnd > len(notes) {
			t.Fatalf("truncated note")
		}
		name := string(bytes.TrimRight(notes[12:12+namesz], "\x00"))
		desc := notes[nameEnd : nameEnd+int(descsz)]
		if name == "Xen" && typ == xenPhys32Entry {
			switch descsz {
			case 4:
				return uint64(binary.LittleEndian.Uint32(desc))
			case 8:
				return binary.LittleEndian.Uint64(desc)
			}
			t.Fatalf("Xen PHYS32_ENTRY descsz %d", descsz)
		}
		notes = notes[descEnd:]
	}
	return 0
}

// TestBuildIsDeterministic builds the probe twice, and compares both with
// the one scripts/setup built when $VOLT_PROBE names it (scripts/test sets
// it): the same sources must give the same bytes.
func TestBuildIsDeterministic(t *testing.T) {
	requireTool(t, "gcc", "ld")
	ctx := context.Background()
	var images [2][]byte
	for i := range images {
		p, err := Build(ctx, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if images[i], err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(images[0], images[1]) {
		t.Error("two builds of the probe differ")
	}
	if p := os.Getenv(EnvProbe); p != "" {
		prebuilt, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(prebuilt, images[0]) {
			t.Errorf("$%s (%s) differs from a fresh build of the same sources", EnvProbe, p)
		}
	}
}

// qemuConsole is a QEMU microvm running the probe with its serial console
// on the test's pipes.
type qemuConsole struct {
	t      *testing.T
	ctx    context.Context
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
	lines  chan string
	out    []string
}

// startQEMU boots the probe under QEMU microvm with args added and waits
// for its ready line.
func startQEMU(t *testing.T, args ...string) *qemuConsole {
	t.Helper()
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("/dev/kvm unavailable (%v): KVM is needed to run QEMU with -enable-kvm", err)
	}
	requireTool(t, "qemu-system-x86_64")
	path := buildProbe(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	q := &qemuConsole{t: t, ctx: ctx, lines: make(chan string)}
	q.cmd = exec.CommandContext(ctx, "qemu-system-x86_64", append([]string{
		"-enable-kvm", "-m", "128M", "-smp", "2",
		"-kernel", path, "-nographic", "-no-reboot"}, args...)...)
	var err error
	if q.stdin, err = q.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := q.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	q.cmd.Stderr = &q.stderr
	start := time.Now()
	if err := q.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// A failed test must not leave QEMU running: kill it and wait, here,
	// rather than leave the kill to the context (which may come after the
	// test binary exited).
	t.Cleanup(func() {
		if q.cmd.ProcessState == nil {
			q.cmd.Process.Kill()
			q.cmd.Wait()
		}
	})
	go func() {
		defer close(q.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			q.lines <- strings.TrimSuffix(sc.Text(), "\r")
		}
	}()
	for {
		l, ok := q.next()
		if !ok {
			t.Fatalf("QEMU ended or timed out before %q; output:\n%s\nstderr:\n%s",
				ReadyLine, strings.Join(q.out, "\n"), q.stderr.String())
		}
		if l == ReadyLine {
			break
		}
	}
	t.Logf("QEMU start to %q: %v", ReadyLine, time.Since(start))
	return q
}

// next returns the next console line; false once QEMU ended or timed out.
func (q *qemuConsole) next() (string, bool) {
	select {
	case l, ok := <-q.lines:
		if ok {
			q.out = append(q.out, l)
		}
		return l, ok
	case <-q.ctx.Done():
		return "", false
	}
}

// ask sends one command and returns the line that answers it.
func (q *qemuConsole) ask(cmd string) string {
	q.t.Helper()
	if _, err := io.WriteString(q.stdin, cmd+"\n"); err != nil {
		q.t.Fatal(err)
	}
	l, ok := q.next()
	if !ok {
		q.t.Fatalf("QEMU ended waiting for the answer to %q; output:\n%s\nstderr:\n%s", cmd, strings.Join(q.out, "\n"), q.stderr.String())
	}
	return l
}

// want sends cmd and fails unless the answer matches re; it returns the
// submatches.
func (q *qemuConsole) want(cmd, re string) []string {
	q.t.Helper()
	got := q.ask(cmd)
	m := regexp.MustCompile("^" + re + "$").FindStringSubmatch(got)
	if m == nil {
		q.t.Fatalf("%q answered %q, want %q", cmd, got, re)
	}
	return m
}

// wait reads the console to its end and waits for QEMU to exit.
func (q *qemuConsole) wait() {
	q.t.Helper()
	for {
		if _, ok := q.next(); !ok {
			break
		}
	}
	werr := q.cmd.Wait()
	if q.ctx.Err() != nil {
		q.t.Fatalf("QEMU did not exit within the timeout; output:\n%s", strings.Join(q.out, "\n"))
	}
	if werr != nil {
		q.t.Errorf("QEMU: %v\nstderr:\n%s", werr, q.stderr.String())
	}
}

// TestProbeUnderQEMU boots the probe with QEMU's own PVH loader, an
// implementation independent of ours, and drives every command.
func TestProbeUnderQEMU(t *testing.T) {
	q := startQEMU(t, "-M", "microvm")
	// Sent in one write: more than the UART's 16-byte FIFO, so the probe
	// must keep up by interrupt while QEMU holds the rest back.
	const script = "echo hi\ncpus\r\ntouch 64\nsum 64\nfrobnicate\ntouch 100000000\npoweroff\n"
	if _, err := io.WriteString(q.stdin, script); err != nil {
		t.Fatal(err)
	}
	q.wait()
	out := q.out
	t.Logf("probe output:\n%s", strings.Join(out, "\n"))

	if len(out) == 0 {
		t.Fatal("no output")
	}
	cpus, mem, ok := ParseBanner(out[0])
	if !ok {
		t.Fatalf("first line %q is not the boot banner", out[0])
	}
	if cpus != 2 {
		t.Errorf("banner cpus=%d, want 2 (-smp 2)", cpus)
	}
	if mem < 120 || mem > 128 {
		t.Errorf("banner mem=%d MiB, want about 128 (-m 128M)", mem)
	}
	resp := out[2:] // after banner and ready
	want := []*regexp.Regexp{
		regexp.MustCompile(`^hi$`),
		regexp.MustCompile(`^cpus 2$`),
		regexp.MustCompile(`^touched 64 sum=(0x[0-9a-f]{16})$`),
		regexp.MustCompile(`^sum 64 sum=(0x[0-9a-f]{16})$`),
		regexp.MustCompile(`^error: unknown command$`),
		regexp.MustCompile(`^error: .*past RAM`),
		regexp.MustCompile(`^` + PoweroffLine + `$`),
	}
	if len(resp) != len(want) {
		t.Fatalf("got %d response lines, want %d:\n%s", len(resp), len(want), strings.Join(resp, "\n"))
	}
	var sums []string
	for i, re := range want {
		m := re.FindStringSubmatch(resp[i])
		if m == nil {
			t.Errorf("response %d: %q does not match %v", i, resp[i], re)
			continue
		}
		if len(m) > 1 {
			sums = append(sums, m[1])
		}
	}
	if len(sums) == 2 && sums[0] != sums[1] {
		t.Errorf("touch sum %s != sum %s: memory changed between the two", sums[0], sums[1])
	}
}

// wordHash is the probe's checksum (word_hash in src/probe.c).
func wordHash(b []byte) uint64 {
	h := uint64(0xcbf29ce484222325)
	for len(b) > 0 {
		var w [8]byte
		n := copy(w[:], b)
		b = b[n:]
		h = (h ^ binary.LittleEndian.Uint64(w[:])) * 0x100000001b3
	}
	return h
}

// TestProbeVirtioUnderQEMU drives the probe's virtio driver against
// QEMU's virtio-mmio devices, a second implementation independent of
// Volt's: block, entropy and net (QEMU's user-mode network answers ARP for
// its gateway 10.0.2.2), and malformed chains, which QEMU must answer with
// DEVICE_NEEDS_RESET. QEMU microvm declares virtio-mmio devices on the
// kernel command line, as volt-vmm does, only without ACPI (with ACPI they
// are in the DSDT, which the probe does not read); its transports are
// legacy unless force-legacy is off.
func TestProbeVirtioUnderQEMU(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "disk.img")
	img := make([]byte, 1<<20)
	host := make([]byte, 512)
	for i := range host {
		host[i] = byte(i*7 + 3)
	}
	copy(img[10*512:], host)
	if err := os.WriteFile(disk, img, 0o644); err != nil {
		t.Fatal(err)
	}
	q := startQEMU(t, "-M", "microvm,acpi=off", "-global", "virtio-mmio.force-legacy=false",
		"-drive", "id=d0,file="+disk+",format=raw,if=none", "-device", "virtio-blk-device,drive=d0,serial=qemu-disk",
		"-device", "virtio-rng-device",
		"-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56")
	q.want("virtio", `virtio devices=3`)
	types := map[string]bool{}
	for range 3 {
		m := q.want("", `virtio [0-2] (block|entropy|net)@0x[0-9a-f]{8} irq [0-9]+ features=0x[0-9a-f]{10}`)
		types[m[1]] = true
	}
	if len(types) != 3 {
		t.Fatalf("QEMU's devices found: %v", types)
	}
	q.want("blk info", `blk sectors=2048 ro=0 flush=1`)
	q.want("blk id", `blk id qemu-disk`)
	m := q.want("blk read 10", `blk read 10 1 hash=0x([0-9a-f]{16}) head=([0-9a-f]{32})`)
	if want := fmt.Sprintf("%016x", wordHash(host)); m[1] != want || m[2] != fmt.Sprintf("%x", host[:16]) {
		t.Errorf("sector 10 read as hash %s head %s; the host wrote hash %s head %x", m[1], m[2], want, host[:16])
	}
	q.want("blk write 20 165 2", `blk write 20 2 ok`)
	q.want("blk flush", `blk flush ok`)
	q.want("blk read 2048", `error: blk read 2048: status IOERR`)
	m = q.want("rng 4096", `rng 4096 got=4096 hash=0x[0-9a-f]{16} distinct=([0-9]+)`)
	if d, _ := strconv.Atoi(m[1]); d < 240 {
		t.Errorf("4096 bytes from QEMU's entropy device hold %d distinct values", d)
	}
	q.want("net mac", `net mac 52:54:00:12:34:56`)
	q.want("net send arp 10.0.2.2 10.0.2.15", `net send len=42 ethertype=0x0806 src=52:54:00:12:34:56`)
	q.want("net recv 0x0806", `net recv len=[0-9]+ ethertype=0x0806 src=52:55:0a:00:02:02 dst=52:54:00:12:34:56 hash=0x[0-9a-f]{16}`)
	for _, dev := range []string{"block", "entropy", "net"} {
		for _, kind := range []string{"loop", "outside", "order", "indirect", "head", "idx"} {
			status := `0x4f needs_reset=1`
			if kind == "outside" && dev != "block" {
				// QEMU 7.2's entropy and net devices leave a buffer
				// outside RAM unanswered instead of breaking the
				// device; the driver's reset takes it back either way.
				status = `0x(0f needs_reset=0|4f needs_reset=1)`
			}
			q.want("virtio evil "+dev+" "+kind, `virtio evil `+dev+` `+kind+` status=`+status+` reinit=ok`)
		}
	}
	// Every device works again after its resets.
	q.want("blk read 20", `blk read 20 1 hash=0x[0-9a-f]{16} head=(a5){16}`)
	q.want("rng 16", `rng 16 got=16 .*`)
	q.want("net send arp 10.0.2.2 10.0.2.15", `net send len=42 .*`)
	q.want("net recv 0x0806", `net recv len=[0-9]+ ethertype=0x0806 src=52:55:0a:00:02:02 .*`)
	q.want("poweroff", PoweroffLine)
	q.wait()
	got, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[20*512:22*512], bytes.Repeat([]byte{0xa5}, 1024)) || !bytes.Equal(got[22*512:23*512], make([]byte, 512)) {
		t.Error("the guest's write of sectors 20-21 is not on the disk image as written")
	}
}
