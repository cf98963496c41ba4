package voltinit

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDryRunRunsWorkload starts a real process through DryRun and checks
// that init reaps it, passes volt.env, and logs instead of powering off.
func TestDryRunRunsWorkload(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("needs /bin/sh")
	}
	out := filepath.Join(t.TempDir(), "out")
	var log, console bytes.Buffer
	sys, err := NewDryRun(&log)
	if err != nil {
		t.Fatal(err)
	}
	in := &Init{
		Sys:     sys,
		Console: &console,
		Signals: NotifySignals(),
		Args:    []string{"volt.run=sh -c 'echo \"$GREETING\" > " + out + "; sleep 0.05; exit 3'", "volt.env=GREETING=hi there"},
	}
	if err := in.Run(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(console.String(), "workload exited status=3") {
		t.Errorf("console:\n%s", console.String())
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "hi there\n" {
		t.Errorf("workload wrote %q, %v", b, err)
	}
	for _, want := range []string{"mount -t proc proc /proc", "umount /proc", "reboot 0x"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("dry-run log lacks %q:\n%s", want, log.String())
		}
	}
}
