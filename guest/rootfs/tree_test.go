package rootfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeInputs writes small executable scripts in place of volt-init and
// busybox, which NewTree accepts since they are not ELF.
func fakeInputs(t *testing.T) Options {
	t.Helper()
	dir := t.TempDir()
	init := filepath.Join(dir, "volt-init")
	bb := filepath.Join(dir, "busybox")
	if err := os.WriteFile(init, []byte("#!/bin/sh\necho init\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bb, []byte("#!/bin/sh\necho busybox\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return Options{Init: init, Busybox: bb, Applets: []string{"bin/sh", "usr/bin/awk", "sbin/init", "linuxrc", "/bin/ls", "usr/local/bin/x"}}
}

func TestNewTreeLayout(t *testing.T) {
	opts := fakeInputs(t)
	tree, err := NewTree(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]Entry{}
	for i, e := range tree {
		if _, dup := byPath[e.Path]; dup {
			t.Errorf("%s appears twice", e.Path)
		}
		byPath[e.Path] = e
		if dir := filepath.Dir(e.Path); dir != "." {
			if d, ok := byPath[dir]; !ok || d.Kind != Dir {
				t.Errorf("entry %d %s comes before its directory %s", i, e.Path, dir)
			}
		}
	}
	want := map[string]Entry{
		"init":            {Path: "init", Kind: File, Perm: 0o755, Source: opts.Init},
		"bin/busybox":     {Path: "bin/busybox", Kind: File, Perm: 0o755, Source: opts.Busybox},
		"sbin/init":       {Path: "sbin/init", Kind: Symlink, Target: "/init", Perm: 0o777},
		"bin/sh":          {Path: "bin/sh", Kind: Symlink, Target: "/bin/busybox", Perm: 0o777},
		"bin/ls":          {Path: "bin/ls", Kind: Symlink, Target: "/bin/busybox", Perm: 0o777},
		"usr/local/bin/x": {Path: "usr/local/bin/x", Kind: Symlink, Target: "/bin/busybox", Perm: 0o777},
		"usr/local/bin":   {Path: "usr/local/bin", Kind: Dir, Perm: 0o755},
		"dev/console":     {Path: "dev/console", Kind: CharDev, Perm: 0o600, Major: 5, Minor: 1},
		"root":            {Path: "root", Kind: Dir, Perm: 0o700},
		"proc":            {Path: "proc", Kind: Dir, Perm: 0o755},
		"sys":             {Path: "sys", Kind: Dir, Perm: 0o755},
		"etc":             {Path: "etc", Kind: Dir, Perm: 0o755},
		"usr/bin/awk":     {Path: "usr/bin/awk", Kind: Symlink, Target: "/bin/busybox", Perm: 0o777},
		"tmp":             {Path: "tmp", Kind: Dir, Perm: 0o777 | os.ModeSticky},
	}
	for p, w := range want {
		if got, ok := byPath[p]; !ok || got != w {
			t.Errorf("%s = %+v, want %+v", p, got, w)
		}
	}
	if _, ok := byPath["linuxrc"]; ok {
		t.Error("busybox's linuxrc would shadow volt-init")
	}
}

func TestNewTreeRejectsBadInputs(t *testing.T) {
	opts := fakeInputs(t)
	ctx := context.Background()
	missing := opts
	missing.Init = filepath.Join(t.TempDir(), "nope")
	if _, err := NewTree(ctx, missing); err == nil || !strings.Contains(err.Error(), "init: stat") {
		t.Errorf("missing init: %v", err)
	}
	noBusybox := opts
	noBusybox.Busybox = ""
	if _, err := NewTree(ctx, noBusybox); err == nil || !strings.Contains(err.Error(), "busybox-static") {
		t.Errorf("no busybox: %v", err)
	}
	notExec := opts
	notExec.Init = filepath.Join(t.TempDir(), "plain")
	os.WriteFile(notExec.Init, []byte("x"), 0o644)
	if _, err := NewTree(ctx, notExec); err == nil || !strings.Contains(err.Error(), "not executable") {
		t.Errorf("non-executable init: %v", err)
	}
	// Any dynamically linked binary of the host will do.
	if !errors.Is(checkExecutable("/bin/ls"), ErrNotStatic) {
		t.Skip("/bin/ls is not dynamically linked here")
	}
	dynamic := opts
	dynamic.Busybox = "/bin/ls"
	if _, err := NewTree(ctx, dynamic); err == nil || !errors.Is(err, ErrNotStatic) || !strings.Contains(err.Error(), "apt-get install busybox-static") {
		t.Errorf("dynamic busybox: %v", err)
	}
}

func TestListAppletsOfRealBusybox(t *testing.T) {
	if _, err := os.Stat(DefaultBusybox); err != nil {
		t.Skip("no " + DefaultBusybox + ": apt-get install busybox-static")
	}
	applets, err := ListApplets(context.Background(), DefaultBusybox)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, a := range applets {
		found[filepath.Base(a)] = true
	}
	for _, want := range []string{"sh", "ls", "mount", "cat"} {
		if !found[want] {
			t.Errorf("applet %s missing from %d applets", want, len(applets))
		}
	}
}

func TestWriteInitramfsGzip(t *testing.T) {
	tree, err := NewTree(context.Background(), fakeInputs(t))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initramfs.cpio.gz")
	if err := WriteInitramfs(out, tree, 0); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := readArchive(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(tree) {
		t.Fatalf("%d entries, tree has %d", len(entries), len(tree))
	}
	for i, e := range entries {
		if e.h.Name != tree[i].Path || e.h.UID != 0 || e.h.ModTime != 0 {
			t.Errorf("entry %d: %+v for %s", i, e.h, tree[i].Path)
		}
		switch e.h.Name {
		case "init":
			if e.h.Mode != TypeReg|0o755 || e.data != "#!/bin/sh\necho init\n" {
				t.Errorf("init: mode %o data %q", e.h.Mode, e.data)
			}
		case "dev/console":
			if e.h.Mode != TypeChar|0o600 || e.h.RDevMajor != 5 || e.h.RDevMinor != 1 {
				t.Errorf("dev/console: %+v", e.h)
			}
		case "tmp":
			if e.h.Mode != TypeDir|0o1777 {
				t.Errorf("tmp mode %o", e.h.Mode)
			}
		case "bin/sh":
			if e.h.Mode != TypeSymlink|0o777 || e.data != "/bin/busybox" {
				t.Errorf("bin/sh: mode %o data %q", e.h.Mode, e.data)
			}
		}
	}

	// The same inputs give the same bytes.
	again := filepath.Join(t.TempDir(), "again.cpio.gz")
	if err := WriteInitramfs(again, tree, 0); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Error("two builds of the same tree differ")
	}
}

func TestExt4Size(t *testing.T) {
	for _, tt := range []struct{ used, want int64 }{
		{0, 32},
		{1, 33},
		{2 << 20, 35},
		{100 << 20, 182},
	} {
		if got := Ext4Size(tt.used); got != tt.want {
			t.Errorf("Ext4Size(%d) = %d, want %d", tt.used, got, tt.want)
		}
	}
}

// TestBuildExt4PassesFsck builds an image with the real mkfs.ext4 and checks
// it with e2fsck and debugfs.
func TestBuildExt4PassesFsck(t *testing.T) {
	if _, err := findMkfs(); err != nil {
		t.Skip(err)
	}
	tree, err := NewTree(context.Background(), fakeInputs(t))
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := BuildExt4(context.Background(), img, tree, Ext4Options{}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() < 32<<20 {
		t.Errorf("image size %d", st.Size())
	}
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	debugfs := func(req string) string {
		out, err := exec.Command("debugfs", "-R", req, img).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs -R %q: %v\n%s", req, err, out)
		}
		return string(out)
	}
	ls := debugfs("ls -l /")
	for _, name := range []string{" init", " bin", " sbin", " dev", " proc", " sys", " tmp", " etc", " root"} {
		if !strings.Contains(ls, name) {
			t.Errorf("ls / lacks%s:\n%s", name, ls)
		}
	}
	if got := debugfs("cat /init"); !strings.Contains(got, "echo init") {
		t.Errorf("/init holds %q", got)
	}
	if got := debugfs("stat /bin/sh"); !strings.Contains(got, `Fast link dest: "/bin/busybox"`) {
		t.Errorf("/bin/sh:\n%s", got)
	}
	if got := debugfs("stat /tmp"); !strings.Contains(got, "Mode:  01777") {
		t.Errorf("/tmp:\n%s", got)
	}
	if os.Geteuid() == 0 {
		if got := debugfs("stat /dev/console"); !strings.Contains(got, "Type: character special") || !strings.Contains(got, "Device major/minor number: 05:01") {
			t.Errorf("/dev/console:\n%s", got)
		}
	}
	out, err := exec.Command("e2label", img).Output()
	if err != nil {
		t.Fatalf("e2label (e2fsprogs, installed by scripts/setup): %v", err)
	}
	if strings.TrimSpace(string(out)) != DefaultLabel {
		t.Errorf("label %q, want %q", out, DefaultLabel)
	}
}

func TestBuildExt4TooSmall(t *testing.T) {
	if _, err := findMkfs(); err != nil {
		t.Skip(err)
	}
	opts := fakeInputs(t)
	big := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(big, make([]byte, 3<<20), 0o755); err != nil {
		t.Fatal(err)
	}
	opts.Busybox = big
	tree, err := NewTree(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "small.ext4")
	if err := BuildExt4(context.Background(), out, tree, Ext4Options{SizeMiB: 2}); err == nil || !strings.Contains(err.Error(), "cannot hold") {
		t.Errorf("error %v, want a size error", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("failed build left %s behind", out)
	}
}
