// Command volt-rootfs builds Volt's guest root file systems: an initramfs
// and/or an ext4 image holding volt-init and a static busybox.
//
//	volt-rootfs --init build/volt-init --initramfs build/initramfs.cpio --ext4 build/rootfs.ext4
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"

	"github.com/spf13/pflag"
	"github.com/voltvmm/volt/guest/rootfs"
	"golang.org/x/sys/unix"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "volt-rootfs: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	flags := pflag.NewFlagSet("volt-rootfs", pflag.ContinueOnError)
	var (
		initPath  = flags.String("init", "", "volt-init binary (static; build it with guest/init/build.sh)")
		busybox   = flags.String("busybox", rootfs.DefaultBusybox, "static busybox binary")
		initramfs = flags.String("initramfs", "", "write a newc initramfs here (gzip-compressed if it ends in .gz)")
		ext4      = flags.String("ext4", "", "write an ext4 image here (needs mkfs.ext4 from e2fsprogs)")
		sizeMiB   = flags.Int64("ext4-size", 0, "ext4 image size in MiB (0: contents plus headroom)")
		label     = flags.String("ext4-label", rootfs.DefaultLabel, "ext4 volume label")
	)
	flags.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: volt-rootfs --init PATH [--busybox PATH] [--initramfs OUT.cpio[.gz]] [--ext4 OUT.ext4]\n")
		flags.PrintDefaults()
	}
	if err := flags.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if flags.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flags.Args())
	}
	if *initPath == "" {
		return errors.New("--init is required: the volt-init binary (build it with guest/init/build.sh)")
	}
	if *initramfs == "" && *ext4 == "" {
		return errors.New("nothing to build: give --initramfs, --ext4 or both")
	}
	if *sizeMiB < 0 {
		return fmt.Errorf("--ext4-size %d: must not be negative", *sizeMiB)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()
	tree, err := rootfs.NewTree(ctx, rootfs.Options{Init: *initPath, Busybox: *busybox})
	if err != nil {
		return err
	}
	if *initramfs != "" {
		if err := rootfs.WriteInitramfs(*initramfs, tree, 0); err != nil {
			return err
		}
	}
	if *ext4 != "" {
		if err := rootfs.BuildExt4(ctx, *ext4, tree, rootfs.Ext4Options{SizeMiB: *sizeMiB, Label: *label}); err != nil {
			return err
		}
	}
	return nil
}
