package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/cas/volume"
)

// defaultStore is where the host's store lives; VOLT_CAS_STORE overrides it.
const defaultStore = "/var/lib/volt/cas"

func casCommand() *command {
	leaf := func(name, summary string, run func(context.Context, *env, string, []string) int) *command {
		return &command{name: name, summary: summary, run: run}
	}
	return &command{name: "cas", summary: "Stellarium, the content-addressed store of images, volumes and memory snapshots", sub: []*command{
		leaf("import", "store a file as an object and name it", casImport),
		leaf("export", "write a named object back to a file, byte for byte", casExport),
		leaf("ls", "list named objects", casList),
		leaf("du", "logical against stored bytes, and the dedup ratio", casDu),
		leaf("verify", "check objects (or the whole store) against their digests", casVerify),
		leaf("gc", "remove what no name and no live lease reaches", casGC),
		leaf("rm", "remove names (gc frees their space)", casRemove),
		leaf("clone", "give an object a second name (an instant clone)", casClone),
		leaf("commit", "store a volume's overlay as a new object and name it", casCommit),
		{name: "volume", summary: "copy-on-write volumes over objects", sub: []*command{
			leaf("create", "make a writable volume directory over an object", volumeCreate),
			leaf("info", "describe a volume directory", volumeInfo),
		}},
	}}
}

// casFlags are the flags every cas command takes.
type casFlags struct {
	fs       *pflag.FlagSet
	store    string
	json     bool
	progress bool
}

func newCasFlags(e *env, path, synopsis, about string) *casFlags {
	f := &casFlags{fs: pflag.NewFlagSet(path, pflag.ContinueOnError)}
	f.fs.SetOutput(e.stderr)
	def := defaultStore
	if v := os.Getenv("VOLT_CAS_STORE"); v != "" {
		def = v
	}
	f.fs.StringVar(&f.store, "store", def, "store directory (default from $VOLT_CAS_STORE if set)")
	f.fs.BoolVar(&f.json, "json", false, "print the result as JSON, for scripts")
	f.fs.BoolVar(&f.progress, "progress", false, "draw a progress bar on stderr even when it is not a terminal")
	f.fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: %s %s\n\n%s\n\nflags:\n", path, synopsis, about)
		f.fs.PrintDefaults()
		fmt.Fprintf(e.stderr, "\nExit status: 0 success, 1 failure, 2 bad usage.\n")
	}
	return f
}

// parse parses args; a non-negative result is the exit status to return.
func (f *casFlags) parse(e *env, path string, args []string, minArgs, maxArgs int) int {
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		return usageError(e, path, "%v", err)
	}
	n := f.fs.NArg()
	switch {
	case n < minArgs:
		return usageError(e, path, "missing arguments")
	case maxArgs >= 0 && n > maxArgs:
		return usageError(e, path, "unexpected argument %q", f.fs.Arg(maxArgs))
	}
	return -1
}

// open opens the store, which must exist: only import makes a new one.
func (f *casFlags) open(e *env, path string) (*cas.Store, int) {
	s, err := cas.OpenExisting(f.store)
	if err != nil {
		return nil, failure(e, path, err)
	}
	return s, -1
}

func (f *casFlags) showProgress(e *env) bool { return f.progress || (e.stderrTTY && !f.json) }

// checkName validates a ref name given on the command line (a usage error).
func checkName(e *env, path, name string) int {
	if err := cas.ValidateRefName(name); err != nil {
		return usageError(e, path, "%v", err)
	}
	return -1
}

// refuseExisting fails when name exists and --force was not given: replacing
// a name orphans what it named, and the next gc would remove it.
func refuseExisting(e *env, path string, s *cas.Store, name string, force bool) int {
	if force {
		return -1
	}
	d, err := s.Ref(name)
	if err == nil {
		return failure(e, path, fmt.Errorf("%q already names manifest %s; use --force to replace it", name, d.Short()))
	}
	if !errors.Is(err, cas.ErrNotFound) {
		return failure(e, path, err)
	}
	return -1
}

func casImport(ctx context.Context, e *env, path string, args []string) int {
	f := newCasFlags(e, path, "FILE --name NAME [flags]", "Stores the regular file FILE as an object and names it NAME.\nAll-zero chunks are not stored; chunks the store holds already are not written again.")
	name := f.fs.String("name", "", "name for the object (required)")
	chunkFlag := f.fs.String("chunk-size", "2M", "chunk size: a power of two from 4K to 64M (K, M suffixes)")
	kindFlag := f.fs.String("kind", "image", "what the object is: image, volume or memory")
	force := f.fs.Bool("force", false, "replace an existing object of that name")
	if rc := f.parse(e, path, args, 1, 1); rc >= 0 {
		return rc
	}
	file := f.fs.Arg(0)
	if *name == "" {
		return usageError(e, path, "--name is required")
	}
	if rc := checkName(e, path, *name); rc >= 0 {
		return rc
	}
	chunk, err := parseSize(*chunkFlag)
	if err == nil {
		err = cas.ValidateChunkSize(chunk)
	}
	if err != nil {
		return usageError(e, path, "--chunk-size %s: %v", *chunkFlag, err)
	}
	kind, err := cas.ParseKind(*kindFlag)
	if err != nil {
		return usageError(e, path, "--kind: %v", err)
	}
	st, err := os.Stat(file)
	if err != nil {
		return failure(e, path, err)
	}
	s, err := cas.Open(f.store) // the first import makes the store
	if err != nil {
		return failure(e, path, err)
	}
	if rc := refuseExisting(e, path, s, *name, *force); rc >= 0 {
		return rc
	}
	bar := newProgress(e.stderr, f.showProgress(e), st.Size(), "import")
	start := time.Now()
	ss, err := s.Begin(ctx)
	if err != nil {
		return failure(e, path, err)
	}
	defer ss.Close()
	res, err := ss.ImportFile(ctx, file, cas.ImportOptions{ChunkSize: chunk, Kind: kind, Progress: bar.set})
	bar.done()
	if err != nil {
		return failure(e, path, err)
	}
	if err := ss.SetRef(*name, res.Digest); err != nil {
		return failure(e, path, err)
	}
	if err := ss.Close(); err != nil {
		return failure(e, path, err)
	}
	secs := time.Since(start).Seconds()
	m := res.Manifest
	if f.json {
		return printJSON(e, path, map[string]any{
			"name": *name, "digest": res.Digest, "kind": m.Kind, "size": m.Size, "chunk_size": m.ChunkSize,
			"chunks": len(m.Chunks), "new_chunks": res.NewChunks, "new_bytes": res.NewBytes,
			"known_chunks": res.KnownChunks, "holes": res.Holes, "seconds": secs,
		})
	}
	fmt.Fprintf(e.stdout, "%s: %s in %d chunks of %s (%d new, %d already stored, %d holes), manifest %s, %.2fs (%s/s)\n",
		*name, formatBytes(m.Size), len(m.Chunks), formatBytes(m.ChunkSize), res.NewChunks, res.KnownChunks, res.Holes,
		res.Digest, secs, formatBytes(int64(float64(m.Size)/max(secs, 1e-9))))
	return exitOK
}

func casExport(ctx context.Context, e *env, path string, args []string) int {
	f := newCasFlags(e, path, "NAME FILE [flags]", "Writes the object NAME to FILE (\"-\": stdout), byte for byte, verifying every chunk.\nA regular FILE gets holes where the object has them; an existing FILE is replaced\nonly once the whole object is written.")
	if rc := f.parse(e, path, args, 2, 2); rc >= 0 {
		return rc
	}
	name, file := f.fs.Arg(0), f.fs.Arg(1)
	if rc := checkName(e, path, name); rc >= 0 {
		return rc
	}
	s, rc := f.open(e, path)
	if rc >= 0 {
		return rc
	}
	_, m, err := s.Resolve(ctx, name)
	if err != nil {
		return failure(e, path, err)
	}
	bar := newProgress(e.stderr, f.showProgress(e), m.Size, "export")
	if file == "-" {
		if out, ok := e.stdout.(*os.File); ok && isTerminal(out) {
			return usageError(e, path, "refusing to write an object to a terminal; redirect stdout or give a FILE")
		}
		err = s.Export(ctx, name, e.stdout, bar.set)
	} else {
		err = s.ExportFile(ctx, name, file, bar.set)
	}
	bar.done()
	if err != nil {
		return failure(e, path, err)
	}
	if f.json && file != "-" {
		return printJSON(e, path, map[string]any{"name": name, "file": file, "size": m.Size})
	}
	return exitOK
}

func casList(ctx context.Context, e *env, path string, args []string) int {
	f := newCasFlags(e, path, "[flags]", "Lists named objects.")
	if rc := f.parse(e, path, args, 0, 0); rc >= 0 {
		return rc
	}
	s, rc := f.open(e, path)
	if rc >= 0 {
		return rc
	}
	objs, err := s.List(ctx)
	if err != nil {
		return failure(e, path, err)
	}
	if f.json {
		return printJSON(e, path, objs)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tSIZE\tDATA\tCHUNK\tCHUNKS\tMANIFEST")
	bad := 0
	for _, o := range objs {
		if o.Error != "" {
			bad++
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\tDAMAGED: %s\n", o.Name, o.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", o.Name, o.Kind, formatBytes(o.Size), formatBytes(o.DataBytes), formatBytes(o.ChunkSize), o.Chunks, o.Digest.Short())
	}
	tw.Flush()
	if bad > 0 {
		return failure(e, path, fmt.Errorf("%d damaged; run volt cas verify", bad))
	}
	return exitOK
}

func casDu(ctx context.Context, e *env, path string, args []string) int {
	f := newCasFlags(e, path, "[flags]", "Shows the store's space: logical bytes of all named objects against the bytes stored.")
	if rc := f.parse(e, path, args, 0, 0); rc >= 0 {
		return rc
	}
	s, rc := f.open(e, path)
	if rc >= 0 {
		return rc
	}
	u, err := s.Usage(ctx)
	if err != nil {
		return failure(e, path, err)
	}
	if f.json {
		return printJSON(e, path, u)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tDATA\tUNIQUE")
	for _, o := range u.Objects {
		if o.Error != "" {
			fmt.Fprintf(tw, "%s\t-\t-\tDAMAGED: %s\n", o.Name, o.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", o.Name, formatBytes(o.Size), formatBytes(o.DataBytes), formatBytes(o.UniqueBytes))
	}
	tw.Flush()
	fmt.Fprintf(e.stdout, "\nlogical    %12s  %d objects as flat files\n", formatBytes(u.LogicalBytes), len(u.Objects))
	fmt.Fprintf(e.stdout, "data       %12s  without holes\n", formatBytes(u.DataBytes))
	fmt.Fprintf(e.stdout, "referenced %12s  unique chunks the names reach\n", formatBytes(u.ReferencedBytes))
	fmt.Fprintf(e.stdout, "stored     %12s  %d chunk files (%s unreferenced: gc frees it unless leased)\n", formatBytes(u.StoredBytes), u.StoredChunks, formatBytes(u.UnreferencedBytes))
	fmt.Fprintf(e.stdout, "manifests  %12s  %d files\n", formatBytes(u.ManifestBytes), u.Manifests)
	fmt.Fprintf(e.stdout, "on disk    %12s  allocated\n", formatBytes(u.DiskBytes))
	fmt.Fprintf(e.stdout, "dedup ratio %.2fx (data / referenced), overall %.2fx (logical / stored)\n", u.DedupRatio, u.Ratio)
	return exitOK
}

func casVerify(ctx context.Context, e *env, path string, args []string) int {
	f := newCasFlags(e, path, "[NAME...] [flags]", "Checks the named objects, or with no NAME the whole store (every name, manifest and\nchunk file), against their digests. Exits 1 if anything is wrong.")
	if rc := f.parse(e, path, args, 0, -1); rc >= 0 {
		return rc
	}
	for _, n := range f.fs.Args() {
		if rc := checkName(e, path, n); rc >= 0 {
			return rc
		}
	}
	s, rc := f.open(e, path)
	if rc >= 0 {
		return rc
	}
	var bar *progress
	show := f.showProgress(e)
	rep, err := s.Verify(ctx, cas.VerifyOptions{Names: f.fs.Args(), Progress: func(done, total int64) {
		if bar == nil {
			bar = newProgress(e.stderr, show, total, "verify")
		}
		bar.set(done)
	}})
	if bar != nil {
		bar.done()
	}
	if err != nil {
		return failure(e, path, err)
	}
	if f.json {
		if rc := printJSON(e, path, rep); rc != exitOK {
			return rc
		}
	} else {
		for _, p := range rep.Problems {
			fmt.Fprintln(e.stdout, p.String())
		}
		fmt.Fprintf(e.stdout, "%d objects, %d chunks, %s checked: %d problems\n", rep.Objects, rep.Chunks, formatBytes(rep.Bytes), len(rep.Problems))
	}
	if !rep.OK() {
		return exitFailure
	}
	return exitOK
}

func casGC(ctx context.Context, e *env, path string, args []string) int {
	f := newCasFlags(e, path, "[flags]", "Removes every manifest and chunk that no name and no live lease reaches, dead leases,\nand temp files of writers that died. Waits while imports run.")
	dry := f.fs.Bool("dry-run", false, "count what would be removed, remove nothing")
	if rc := f.parse(e, path, args, 0, 0); rc >= 0 {
		return rc
	}
	s, rc := f.open(e, path)
	if rc >= 0 {
		return rc
	}
	res, err := s.GC(ctx, cas.GCOptions{DryRun: *dry})
	if err != nil {
		return failure(e, path, err)
	}
	if f.json {
		return printJSON(e, path, res)
	}
	verb := "removed"
	if *dry {
		verb = "would remove"
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(e.stderr, "%s: warning: %s\n", path, w)
	}
	fmt.Fprintf(e.stdout, "%s %d chunks (%s) and %d manifests; kept %d chunks and %d manifests for %d names and %d live leases",
		verb, res.ChunksRemoved, formatBytes(res.BytesRemoved), res.ManifestsRemoved, res.ChunksKept, res.ManifestsKept, res.Refs, res.LiveLeases)
	if res.ExpiredLeases > 0 {
		fmt.Fprintf(e.stdout, " (%d expired leases ignored)", res.ExpiredLeases)
	}
	fmt.Fprintf(e.stdout, "; %d dead leases, %d stale temp files\n", res.DeadLeases, res.TempFilesRemoved)
	return exitOK
}

func casRemove(ctx context.Context, e *env, path string, args []string) int {
	f := newCasFlags(e, path, "NAME... [flags]", "Removes names. The objects stay until gc finds nothing else reaching them.")
	if rc := f.parse(e, path, args, 1, -1); rc >= 0 {
		return rc
	}
	for _, n := range f.fs.Args() {
		if rc := checkName(e, path, n); rc >= 0 {
			return rc
		}
	}
	s, rc := f.open(e, path)
	if rc >= 0 {
		return rc
	}
	status := exitOK
	for _, n := range f.fs.Args() {
		if err := s.RemoveRef(n); err != nil {
			status = failure(e, path, err)
		}
	}
	return status
}

func casClone(ctx context.Context, e *env, path string, args []string) int {
	f := newCasFlags(e, path, "NAME NEW [flags]", "Names the object NAME also NEW: an instant clone, sharing every chunk.")
	force := f.fs.Bool("force", false, "replace an existing object named NEW")
	if rc := f.parse(e, path, args, 2, 2); rc >= 0 {
		return rc
	}
	src, dst := f.fs.Arg(0), f.fs.Arg(1)
	for _, n := range []string{src, dst} {
		if rc := checkName(e, path, n); rc >= 0 {
			return rc
		}
	}
	s, rc := f.open(e, path)
	if rc >= 0 {
		return rc
	}
	if rc := refuseExisting(e, path, s, dst, *force); rc >= 0 {
		return rc
	}
	ss, err := s.Begin(ctx)
	if err != nil {
		return failure(e, path, err)
	}
	defer ss.Close()
	d, err := s.Ref(src)
	if err != nil {
		return failure(e, path, err)
	}
	if err := ss.SetRef(dst, d); err != nil {
		return failure(e, path, err)
	}
	if f.json {
		return printJSON(e, path, map[string]any{"name": dst, "digest": d, "from": src})
	}
	fmt.Fprintf(e.stdout, "%s: manifest %s, as %s\n", dst, d.Short(), src)
	return exitOK
}

func casCommit(ctx context.Context, e *env, path string, args []string) int {
	f := newCasFlags(e, path, "DIR --name NAME [flags]", "Stores the volume in DIR (its base with its overlay) as a new object named NAME, and\nrebases the volume onto it with an empty overlay. Only chunks the overlay touched are\nhashed again. The volume must not be open elsewhere (a running VM commits through its API).")
	name := f.fs.String("name", "", "name for the committed object (required)")
	force := f.fs.Bool("force", false, "replace an existing object of that name")
	if rc := f.parse(e, path, args, 1, 1); rc >= 0 {
		return rc
	}
	if *name == "" {
		return usageError(e, path, "--name is required")
	}
	if rc := checkName(e, path, *name); rc >= 0 {
		return rc
	}
	s, rc := f.open(e, path)
	if rc >= 0 {
		return rc
	}
	if rc := refuseExisting(e, path, s, *name, *force); rc >= 0 {
		return rc
	}
	start := time.Now()
	v, err := volume.Open(ctx, s, f.fs.Arg(0))
	if err != nil {
		return failure(e, path, err)
	}
	res, err := v.Commit(ctx, *name)
	if cerr := v.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return failure(e, path, err)
	}
	if f.json {
		return printJSON(e, path, map[string]any{"name": *name, "digest": res.Digest, "size": res.Manifest.Size,
			"changed_chunks": res.ChangedChunks, "new_chunks": res.NewChunks, "seconds": time.Since(start).Seconds()})
	}
	fmt.Fprintf(e.stdout, "%s: manifest %s, %d of %d chunks changed (%d new)\n", *name, res.Digest, res.ChangedChunks, len(res.Manifest.Chunks), res.NewChunks)
	return exitOK
}

func volumeCreate(ctx context.Context, e *env, path string, args []string) int {
	f := newCasFlags(e, path, "DIR --from NAME [flags]", "Makes DIR a writable copy-on-write volume over the object NAME. Keep NAME while the\nvolume exists: a volume that is not open is protected from gc only by that name.")
	from := f.fs.String("from", "", "the object the volume starts as (required)")
	blockFlag := f.fs.String("block-size", "4K", "copy-on-write granularity: a power of two from 4K to the object's chunk size")
	if rc := f.parse(e, path, args, 1, 1); rc >= 0 {
		return rc
	}
	if *from == "" {
		return usageError(e, path, "--from is required")
	}
	if rc := checkName(e, path, *from); rc >= 0 {
		return rc
	}
	bs, err := parseSize(*blockFlag)
	if err != nil {
		return usageError(e, path, "--block-size %s: %v", *blockFlag, err)
	}
	s, rc := f.open(e, path)
	if rc >= 0 {
		return rc
	}
	d, m, err := s.Resolve(ctx, *from)
	if err != nil {
		return failure(e, path, err)
	}
	if err := volume.Create(ctx, s, f.fs.Arg(0), d, volume.Options{BlockSize: min(bs, m.ChunkSize)}); err != nil {
		return failure(e, path, err)
	}
	if f.json {
		return printJSON(e, path, map[string]any{"dir": f.fs.Arg(0), "base": d, "size": m.Size})
	}
	fmt.Fprintf(e.stdout, "%s: volume of %s over %s (manifest %s)\n", f.fs.Arg(0), formatBytes(m.Size), *from, d.Short())
	return exitOK
}

func volumeInfo(ctx context.Context, e *env, path string, args []string) int {
	f := newCasFlags(e, path, "DIR [flags]", "Describes the volume in DIR.")
	if rc := f.parse(e, path, args, 1, 1); rc >= 0 {
		return rc
	}
	info, err := volume.ReadInfo(f.fs.Arg(0))
	if err != nil {
		return failure(e, path, err)
	}
	if f.json {
		return printJSON(e, path, info)
	}
	inUse := ""
	if info.InUse {
		inUse = ", open by a process now"
	}
	fmt.Fprintf(e.stdout, "%s: %s over manifest %s; %d blocks of %s written (%s on disk)%s\n",
		info.Dir, formatBytes(info.Size), info.Base, info.WrittenBlocks, formatBytes(info.BlockSize), formatBytes(info.OverlayOnDisk), inUse)
	return exitOK
}

// parseSize parses a byte count with an optional binary suffix: 4096, 64K,
// 64KiB, 2M, 2MiB, 1G.
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(s), "IB"), "B")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult, t = 1<<10, t[:len(t)-1]
		case 'M':
			mult, t = 1<<20, t[:len(t)-1]
		case 'G':
			mult, t = 1<<30, t[:len(t)-1]
		}
	}
	if t == "" || len(t) > 12 {
		return 0, fmt.Errorf("not a size (want a number with an optional K, M or G suffix)")
	}
	var n int64
	for _, c := range t {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("not a size (want a number with an optional K, M or G suffix)")
		}
		n = 10*n + int64(c-'0')
	}
	return n * mult, nil
}
