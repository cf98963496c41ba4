package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/voltvmm/volt/nspawn/image"
)

// TestMain lets the test binary be volt itself when it is started with a
// volt command line: supervisors (volt container _supervise ...) are
// started from os.Executable(), which in tests is this binary, and the
// systemd test runs it inside a container as the CLI.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "cas", "image", "container", "vm":
			ctx := context.Background()
			e := &env{stdout: os.Stdout, stderr: os.Stderr}
			os.Exit(run(ctx, e, os.Args[1:]))
		}
	}
	os.Exit(m.Run())
}

func TestWorkloadUsageErrors(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	st := []string{"--state-dir", filepath.Join(dir, "state"), "--store", filepath.Join(dir, "cas")}
	for _, tc := range []struct {
		name string
		args []string
		rc   int
		want string
	}{
		{"image help", []string{"image", "--help"}, exitOK, ""},
		{"import without source", []string{"image", "import", "x"}, exitUsage, "exactly one of"},
		{"import two sources", []string{"image", "import", "x", "--dir", dir, "--ext4", fifo}, exitUsage, "exactly one of"},
		{"import bad name", []string{"image", "import", "a:b", "--dir", dir}, exitUsage, "':'"},
		{"import bad size", []string{"image", "import", "x", "--dir", dir, "--size", "1.5G"}, exitUsage, "--size"},
		{"import bad chunk", []string{"image", "import", "x", "--dir", dir, "--chunk-size", "3K"}, exitUsage, "power of two"},
		{"run without image", []string{"container", "run", "c", "--", "/bin/true"}, exitUsage, "--image is required"},
		{"run without command", []string{"container", "run", "c", "--image", "i"}, exitUsage, "no command"},
		{"run bad name", []string{"container", "run", "c_1", "--image", "i", "--", "/bin/true"}, exitUsage, "invalid instance name"},
		{"run bad network", []string{"container", "run", "c", "--image", "i", "--network", "wifi", "--", "/bin/true"}, exitUsage, "--network"},
		{"run bad bind", []string{"container", "run", "c", "--image", "i", "--bind", "relative:/x", "--", "/bin/true"}, exitUsage, "not an absolute path"},
		{"run bad bind option", []string{"container", "run", "c", "--image", "i", "--bind", "/a:/b:rx", "--", "/bin/true"}, exitUsage, "want ro or rw"},
		{"run bad memory", []string{"container", "run", "c", "--image", "i", "--memory", "lots", "--", "/bin/true"}, exitUsage, "--memory"},
		{"run tiny memory", []string{"container", "run", "c", "--image", "i", "--memory", "1M", "--", "/bin/true"}, exitUsage, "at least"},
		{"run bad cpus", []string{"container", "run", "c", "--image", "i", "--cpus", "-1", "--", "/bin/true"}, exitUsage, "--cpus"},
		{"run bad cap", []string{"container", "run", "c", "--image", "i", "--cap-add", "sys_admin", "--", "/bin/true"}, exitUsage, "--cap-add"},
		{"run bad manager", []string{"container", "run", "c", "--image", "i", "--manager", "docker", "--", "/bin/true"}, exitFailure, "want auto, systemd or supervisor"},
		{"args after dash for ls", []string{"container", "ls", "--", "x"}, exitUsage, "unexpected arguments after --"},
		{"stop without name", []string{"container", "stop"}, exitUsage, "missing arguments"},
		{"vm without kernel", []string{"vm", "run", "v", "--image", "i"}, exitUsage, "--kernel is required"},
		{"vm bad cpus", []string{"vm", "run", "v", "--image", "i", "--kernel", "/k", "--cpus", "99"}, exitUsage, "--cpus 99"},
		{"vm quote in command", []string{"vm", "run", "v", "--image", "i", "--kernel", "/k", "--", "echo", `"hi"`}, exitUsage, "double quotes"},
		{"vm flag volt sets", []string{"vm", "run", "v", "--image", "i", "--kernel", "/k", "--vmm-flag", "--memory=1G"}, exitUsage, "volt sets that one"},
		{"commit bad kind", []string{"image", "commit", "c", "img", "--kind", "pod"}, exitUsage, "--kind"},
	} {
		rc, _, errOut := volt(t, append(tc.args, st...)...)
		if rc != tc.rc || !strings.Contains(errOut, tc.want) {
			t.Errorf("%s: rc %d, stderr %q; want rc %d and %q", tc.name, rc, errOut, tc.rc, tc.want)
		}
	}
}

func TestImageCommandsOnAStore(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "motd"), []byte("hi\n"), 0o644)
	st := []string{"--state-dir", filepath.Join(dir, "state"), "--store", filepath.Join(dir, "cas")}
	if rc, out, e := volt(t, append([]string{"image", "import", "small", "--dir", tree}, st...)...); rc != exitOK || !strings.Contains(out, "small: ext4") {
		t.Fatalf("import: %d %s %s", rc, out, e)
	}
	if rc, _, e := volt(t, append([]string{"image", "import", "small", "--dir", tree}, st...)...); rc != exitFailure || !strings.Contains(e, "--force") {
		t.Errorf("import over a name: %d %s", rc, e)
	}
	rc, out, _ := volt(t, append([]string{"image", "ls", "--json"}, st...)...)
	if rc != exitOK || !strings.Contains(out, `"name": "small"`) {
		t.Errorf("ls: %d %s", rc, out)
	}
	rc, out, _ = volt(t, "cas", "ls", "--store", filepath.Join(dir, "cas"))
	if rc != exitOK || !strings.Contains(out, image.Ref("small")) {
		t.Errorf("cas ls does not show the image's ref: %s", out)
	}
	if rc, _, e := volt(t, append([]string{"image", "rm", "small", "nope"}, st...)...); rc != exitFailure || !strings.Contains(e, `unknown image "nope"`) {
		t.Errorf("rm: %d %s", rc, e)
	}
	if rc, out, _ := volt(t, append([]string{"image", "ls"}, st...)...); rc != exitOK || strings.Contains(out, "small") {
		t.Errorf("after rm: %s", out)
	}
	if rc, _, e := volt(t, append([]string{"image", "commit", "nosuch", "img"}, st...)...); rc != exitFailure || !strings.Contains(e, "no such instance") {
		t.Errorf("commit of a missing container: %d %s", rc, e)
	}
}
