package sandbox

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestLandlockDeniesWhatIsOutsideItsRules(t *testing.T) {
	if LandlockABI() == 0 {
		t.Skip("this kernel has no Landlock (not in /sys/kernel/security/lsm): Landlock is best effort and does nothing here")
	}
	dir := t.TempDir()
	for _, f := range []string{"kernel", "drive", "outside"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "snap"), 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(victimBinary(t), "landlock", "-", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("landlock victim: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	for _, c := range []struct{ what, want string }{
		{"read kernel", "allowed"},
		{"write kernel", "denied: open " + filepath.Join(dir, "kernel") + ": permission denied"},
		{"write drive", "allowed"},
		{"create in snapshot dir", "allowed"},
		{"rename in snapshot dir", "allowed"},
		{"read outside", "denied: open " + filepath.Join(dir, "outside") + ": permission denied"},
		{"create outside", "denied"},
		{"read /etc/hostname", "denied"},
	} {
		line := c.what + ": " + c.want
		if !strings.Contains(string(out), line) {
			t.Errorf("want %q", line)
		}
	}
	if !strings.Contains(string(out), "landlock: enforced") {
		t.Errorf("no status line saying Landlock is enforced")
	}
}

func TestLandlockRefusesRelativeAndMissingPaths(t *testing.T) {
	for _, p := range []Paths{
		{ReadOnly: []string{"kernel"}},
		{Dirs: []string{""}},
		{ReadWrite: []string{"/nonexistent/volt-drive"}},
	} {
		if _, err := Landlock(p); err == nil {
			t.Errorf("Landlock(%+v) succeeded", p)
		}
	}
}

func TestDropCapabilitiesLeavesNoneOnAnyThread(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: there are capabilities to drop only as root")
	}
	out, err := exec.Command(victimBinary(t), "caps", "-", t.TempDir()).CombinedOutput()
	if err != nil {
		t.Fatalf("caps victim: %v\n%s", err, out)
	}
	threads, children := 0, 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			switch f[0] {
			case "CapInh:", "CapPrm:", "CapEff:", "CapAmb:":
				if f[1] != "0000000000000000" {
					t.Errorf("%s %s after DropCapabilities", f[0], f[1])
				}
			case "NoNewPrivs:":
				if f[1] != "1" {
					t.Errorf("NoNewPrivs %s", f[1])
				}
			}
		}
		if len(f) == 3 && f[0] == "child" {
			children++
			if f[2] != "0000000000000000" {
				t.Errorf("a program execed after DropCapabilities has %s %s", f[1], f[2])
			}
		}
		if len(f) == 4 && f[0] == "task" {
			threads++
			if f[2] != "NoNewPrivs:" && f[3] != "0000000000000000" || f[2] == "NoNewPrivs:" && f[3] != "1" {
				t.Errorf("thread %s: %s %s", f[1], f[2], f[3])
			}
		}
	}
	if threads < 6 {
		t.Errorf("saw %d per-thread lines, want every thread's (at least 2 threads × 3 lines)\n%s", threads, out)
	}
	if children != 4 {
		t.Errorf("saw %d lines of the execed program's capabilities, want 4\n%s", children, out)
	}
}
