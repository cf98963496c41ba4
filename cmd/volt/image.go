package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/nspawn"
	"github.com/voltvmm/volt/nspawn/image"
	"github.com/voltvmm/volt/nspawn/instance"
)

func imageCommand() *command {
	leaf := func(name, summary string, run func(context.Context, *env, string, []string) int) *command {
		return &command{name: name, summary: summary, run: run}
	}
	return &command{name: "image", summary: "workload images: ext4 file systems in the CAS, for containers and VMs alike", sub: []*command{
		leaf("import", "build (from a tar or a directory) or take (an ext4 file) an image and store it", imageImport),
		leaf("ls", "list images", imageList),
		leaf("rm", "remove images (cas gc frees what nothing else uses)", imageRemove),
		leaf("commit", "store a stopped container's or VM's writes as a new image", imageCommit),
	}}
}

func imageImport(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "NAME (--tar FILE | --dir DIR | --ext4 FILE) [flags]",
		"Stores an image: an ext4 file system in the CAS, named NAME. From a tar archive (plain\nor gzip) or a directory, the file system is built with mkfs.ext4 -d; an ext4 file is\nchecked (superblock, e2fsck -fn) and stored as it is. Chunks the store holds already\nare not stored again.")
	tarFile := f.fs.String("tar", "", "a tar archive of the root tree")
	dir := f.fs.String("dir", "", "a directory holding the root tree")
	ext4 := f.fs.String("ext4", "", "an ext4 file system image")
	sizeFlag := f.fs.String("size", "", "file system size for --tar and --dir (default: the files plus half as much, plus 32 MiB): every instance's room to write")
	chunkFlag := f.fs.String("chunk-size", "256K", "CAS chunk size: a power of two from 4K to 64M")
	force := f.fs.Bool("force", false, "replace an existing image of that name")
	pos, _, rc := f.parse(e, path, args, 1, 1, false)
	if rc >= 0 {
		return rc
	}
	name := pos[0]
	if err := image.ValidateName(name); err != nil {
		return usageError(e, path, "%v", err)
	}
	n := 0
	for _, s := range []string{*tarFile, *dir, *ext4} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return usageError(e, path, "give exactly one of --tar, --dir, --ext4")
	}
	var sizeMiB int64
	if *sizeFlag != "" {
		b, err := parseMemory(*sizeFlag)
		if err != nil || b < 1<<20 || b%(1<<20) != 0 {
			return usageError(e, path, "--size %s: want whole MiB, such as 512M or 2G", *sizeFlag)
		}
		sizeMiB = b >> 20
	}
	chunk, err := parseSize(*chunkFlag)
	if err == nil {
		err = cas.ValidateChunkSize(chunk)
	}
	if err != nil {
		return usageError(e, path, "--chunk-size %s: %v", *chunkFlag, err)
	}
	s, err := cas.Open(f.store)
	if err != nil {
		return failure(e, path, err)
	}
	start := time.Now()
	res, err := image.Import(ctx, s, name, image.Source{Tar: *tarFile, Dir: *dir, Ext4: *ext4}, image.ImportOptions{
		SizeMiB: sizeMiB, ChunkSize: chunk, Force: *force,
	})
	if err != nil {
		return failure(e, path, err)
	}
	secs := time.Since(start).Seconds()
	for _, w := range res.Warnings {
		fmt.Fprintf(e.stderr, "%s: warning: %s\n", path, w)
	}
	if f.json {
		return printJSON(e, path, map[string]any{"name": name, "warnings": res.Warnings, "digest": res.Digest, "size": res.Size, "data_bytes": res.DataBytes,
			"chunks": res.Chunks, "new_chunks": res.NewChunks, "new_bytes": res.NewBytes, "holes": res.Holes,
			"block_size": res.Superblock.BlockSize, "label": res.Superblock.Label, "seconds": secs})
	}
	fmt.Fprintf(e.stdout, "%s: ext4 of %s (%s data) in %d chunks (%d new, %s stored), manifest %s, %.2fs\n",
		name, formatBytes(res.Size), formatBytes(res.DataBytes), res.Chunks, res.NewChunks, formatBytes(res.NewBytes), res.Digest.Short(), secs)
	return exitOK
}

func imageList(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "[flags]", "Lists the images in the store.")
	if _, _, rc := f.parse(e, path, args, 0, 0, false); rc >= 0 {
		return rc
	}
	s, err := cas.OpenExisting(f.store)
	if err != nil {
		return failure(e, path, err)
	}
	infos, err := image.List(ctx, s)
	if err != nil {
		return failure(e, path, err)
	}
	if f.json {
		if infos == nil {
			infos = []image.Info{}
		}
		return printJSON(e, path, infos)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tDATA\tCHUNK\tMANIFEST")
	bad := 0
	for _, in := range infos {
		if in.Error != "" {
			bad++
			fmt.Fprintf(tw, "%s\t-\t-\t-\tDAMAGED: %s\n", in.Name, in.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", in.Name, formatBytes(in.Size), formatBytes(in.DataBytes), formatBytes(in.ChunkSize), in.Digest.Short())
	}
	tw.Flush()
	if bad > 0 {
		return failure(e, path, fmt.Errorf("%d damaged; run volt cas verify", bad))
	}
	return exitOK
}

func imageRemove(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "NAME... [flags]", "Removes images. Instances made from them keep their data; cas gc frees the rest.")
	pos, _, rc := f.parse(e, path, args, 1, -1, false)
	if rc >= 0 {
		return rc
	}
	for _, n := range pos {
		if err := image.ValidateName(n); err != nil {
			return usageError(e, path, "%v", err)
		}
	}
	s, err := cas.OpenExisting(f.store)
	if err != nil {
		return failure(e, path, err)
	}
	status := exitOK
	for _, n := range pos {
		if err := image.Remove(s, n); err != nil {
			status = failure(e, path, err)
		}
	}
	return status
}

func imageCommit(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "INSTANCE IMAGE [--kind container|vm] [flags]",
		"Stores a stopped instance's disk (its image with everything it wrote) as image IMAGE.\nOnly the chunks the instance changed are hashed and stored again; the instance goes on\nfrom the new image with an empty overlay.")
	kind := f.fs.String("kind", "container", "what INSTANCE is: container or vm")
	force := f.fs.Bool("force", false, "replace an existing image of that name")
	pos, _, rc := f.parse(e, path, args, 2, 2, false)
	if rc >= 0 {
		return rc
	}
	var k instance.Kind
	switch *kind {
	case "container":
		k = instance.Container
	case "vm":
		k = instance.VM
	default:
		return usageError(e, path, "--kind %q: want container or vm", *kind)
	}
	d, err := instance.NewDir(f.stateDir, k, pos[0])
	if err != nil {
		return usageError(e, path, "%v", err)
	}
	if err := image.ValidateName(pos[1]); err != nil {
		return usageError(e, path, "%v", err)
	}
	m, rc := f.openManager(ctx, e, path, false)
	if rc >= 0 {
		return rc
	}
	defer m.Close()
	start := time.Now()
	res, err := nspawn.CommitInstance(ctx, d, f.store, m, pos[1], *force)
	if err != nil {
		return failure(e, path, err)
	}
	if f.json {
		return printJSON(e, path, map[string]any{"image": pos[1], "digest": res.Digest, "size": res.Manifest.Size,
			"changed_chunks": res.ChangedChunks, "new_chunks": res.NewChunks, "seconds": time.Since(start).Seconds()})
	}
	fmt.Fprintf(e.stdout, "%s: manifest %s from %s %s: %d of %d chunks changed (%d new)\n", pos[1], res.Digest.Short(), k, pos[0], res.ChangedChunks, len(res.Manifest.Chunks), res.NewChunks)
	return exitOK
}
