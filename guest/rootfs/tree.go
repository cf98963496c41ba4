// Package rootfs builds Volt's guest root file systems, an initramfs (newc
// cpio, optionally gzipped) and an ext4 image, from one description of the
// tree: volt-init as /init, a static busybox with its applet links, the
// directories init mounts on, and /dev/console.
package rootfs

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"slices"
	"strings"
)

// Kind is the type of a tree entry.
type Kind int

const (
	Dir Kind = iota
	File
	Symlink
	CharDev
)

// Entry is one node of the guest tree.
type Entry struct {
	Path         string // inside the guest, without a leading slash: "bin/busybox"
	Kind         Kind
	Perm         fs.FileMode // permission bits only
	Source       string      // File: the host file holding its contents
	Target       string      // Symlink: what it points to
	Major, Minor uint32      // CharDev
}

// Tree is a guest file tree in an order where every directory comes before
// what it contains, as both cpio unpacking and staging need.
type Tree []Entry

// Options says where the inputs of a tree are.
type Options struct {
	Init    string // volt-init, static
	Busybox string // a static busybox, such as Debian's busybox-static /bin/busybox
	// Applets are busybox applet paths ("bin/sh", "usr/bin/awk"); nil means
	// ask the busybox binary, which then has to run on this host.
	Applets []string
}

// ErrNotStatic is returned for an input binary that needs a dynamic loader,
// which the guest tree does not hold.
var ErrNotStatic = errors.New("dynamically linked")

// DefaultBusybox is where Debian's busybox-static installs the binary.
const DefaultBusybox = "/bin/busybox"

// BusyboxHint tells the user how to get a usable busybox.
const BusyboxHint = "install a static busybox: apt-get install busybox-static"

// NewTree checks the inputs and lays out the tree.
func NewTree(ctx context.Context, opts Options) (Tree, error) {
	if opts.Init == "" {
		return nil, errors.New("no init binary given")
	}
	if err := checkExecutable(opts.Init); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	if opts.Busybox == "" {
		return nil, fmt.Errorf("no busybox given: %s", BusyboxHint)
	}
	if err := checkExecutable(opts.Busybox); err != nil {
		return nil, fmt.Errorf("busybox: %w (%s)", err, BusyboxHint)
	}
	applets := opts.Applets
	if applets == nil {
		var err error
		if applets, err = ListApplets(ctx, opts.Busybox); err != nil {
			return nil, err
		}
	}

	entries := map[string]Entry{}
	add := func(e Entry) {
		// Parents come first so that a missing one is implied, never
		// forgotten.
		for dir := path.Dir(e.Path); dir != "." && dir != "/"; dir = path.Dir(dir) {
			if _, ok := entries[dir]; !ok {
				entries[dir] = Entry{Path: dir, Kind: Dir, Perm: 0o755}
			}
		}
		entries[e.Path] = e
	}
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "etc"} {
		add(Entry{Path: d, Kind: Dir, Perm: 0o755})
	}
	add(Entry{Path: "root", Kind: Dir, Perm: 0o700})
	add(Entry{Path: "tmp", Kind: Dir, Perm: 0o777 | fs.ModeSticky})
	for _, a := range applets {
		a = strings.TrimPrefix(path.Clean("/"+a), "/")
		if a == "" || a == "init" || a == "linuxrc" || a == "sbin/init" || a == "bin/busybox" {
			continue // ours, or busybox's init which must not shadow volt-init
		}
		add(Entry{Path: a, Kind: Symlink, Target: "/bin/busybox", Perm: 0o777})
	}
	add(Entry{Path: "init", Kind: File, Perm: 0o755, Source: opts.Init})
	// The kernel runs /init from an initramfs but /sbin/init from a disk.
	add(Entry{Path: "sbin/init", Kind: Symlink, Target: "/init", Perm: 0o777})
	add(Entry{Path: "bin/busybox", Kind: File, Perm: 0o755, Source: opts.Busybox})
	// The kernel opens /dev/console for init's stdio before anything can
	// mount devtmpfs on /dev.
	add(Entry{Path: "dev/console", Kind: CharDev, Perm: 0o600, Major: 5, Minor: 1})

	tree := make(Tree, 0, len(entries))
	for _, e := range entries {
		tree = append(tree, e)
	}
	// A parent is a prefix of its children, so it sorts first.
	slices.SortFunc(tree, func(a, b Entry) int { return strings.Compare(a.Path, b.Path) })
	return tree, nil
}

// ListApplets asks busybox where its applets belong ("usr/bin/awk"), and
// falls back to bin/ for builds without --list-full.
func ListApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	prefix := ""
	if err != nil || len(bytes.TrimSpace(out)) == 0 {
		prefix = "bin/"
		if out, err = exec.CommandContext(ctx, busybox, "--list").Output(); err != nil {
			return nil, fmt.Errorf("list applets of %s: %w (%s)", busybox, err, BusyboxHint)
		}
	}
	var applets []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if a := strings.TrimSpace(sc.Text()); a != "" {
			applets = append(applets, prefix+a)
		}
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("list applets of %s: busybox listed none", busybox)
	}
	return applets, nil
}

// checkExecutable makes sure a guest binary is a regular executable file
// and, if it is ELF, carries no interpreter (static, or it cannot start).
func checkExecutable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", p)
	}
	if st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not executable", p)
	}
	if st.Size() > 1<<32-1 {
		return fmt.Errorf("%s: %d bytes is more than a cpio entry holds", p, st.Size())
	}
	f, err := elf.Open(p)
	if err != nil {
		return nil // a script or another format; the guest decides
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: %w", p, ErrNotStatic)
		}
	}
	return nil
}
