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

// TestProbeUnderQEMU boots the probe with QEMU's own PVH loader, an
// implementation independent of ours, and drives every command.
func TestProbeUnderQEMU(t *testing.T) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("/dev/kvm unavailable (%v): KVM is needed to run QEMU with -enable-kvm", err)
	}
	requireTool(t, "qemu-system-x86_64")
	path := buildProbe(t)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-M", "microvm", "-enable-kvm", "-m", "128M", "-smp", "2",
		"-kernel", path, "-nographic", "-no-reboot")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr

	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- strings.TrimSuffix(sc.Text(), "\r")
		}
	}()
	var out []string
	next := func() (string, bool) {
		select {
		case l, ok := <-lines:
			if ok {
				out = append(out, l)
			}
			return l, ok
		case <-ctx.Done():
			return "", false
		}
	}

	var readyAfter time.Duration
	for {
		l, ok := next()
		if !ok {
			t.Fatalf("QEMU ended or timed out before %q; output:\n%s\nstderr:\n%s",
				ReadyLine, strings.Join(out, "\n"), stderr.String())
		}
		if l == ReadyLine {
			readyAfter = time.Since(start)
			break
		}
	}
	t.Logf("QEMU start to %q: %v", ReadyLine, readyAfter)

	// Sent in one write: more than the UART's 16-byte FIFO, so the probe
	// must keep up by interrupt while QEMU holds the rest back.
	const script = "echo hi\ncpus\r\ntouch 64\nsum 64\nfrobnicate\ntouch 100000000\npoweroff\n"
	if _, err := io.WriteString(stdin, script); err != nil {
		t.Fatal(err)
	}
	for {
		if _, ok := next(); !ok {
			break
		}
	}
	werr := cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("QEMU did not exit within the timeout after poweroff; output:\n%s", strings.Join(out, "\n"))
	}
	if werr != nil {
		t.Errorf("QEMU: %v\nstderr:\n%s", werr, stderr.String())
	}
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
