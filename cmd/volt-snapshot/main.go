// Command volt-snapshot inspects and merges volt-vmm snapshots offline.
//
//	volt-snapshot info STATE_FILE [MEM_FILE]   verify a state file (and its memory file) and summarise it
//	volt-snapshot merge BASE_DIR DIFF_DIR      apply a diff snapshot onto its base, in place
//	volt-snapshot import DIR STORE [REF]       move DIR's memory into a CAS store (the state then names its manifest)
//
// A snapshot directory holds vm.state and vm.mem, as volt-vmm --restore
// reads them.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/internal/hostfile"
	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/snapshot"
)

const usageText = `usage: volt-snapshot info STATE_FILE [MEM_FILE]
       volt-snapshot merge BASE_DIR DIFF_DIR
       volt-snapshot import DIR STORE [REF]
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	switch {
	case args[0] == "info" && (len(args) == 2 || len(args) == 3):
		if err := info(stdout, args[1:]); err != nil {
			fmt.Fprintf(stderr, "volt-snapshot: %v\n", err)
			return 1
		}
		return 0
	case args[0] == "import" && (len(args) == 3 || len(args) == 4):
		dir, storeDir, ref := args[1], args[2], ""
		if len(args) == 4 {
			ref = args[3]
		}
		store, err := cas.Open(storeDir)
		if err != nil {
			fmt.Fprintf(stderr, "volt-snapshot: import: CAS store %s: %v\n", storeDir, err)
			return 1
		}
		d, err := snapshot.ImportMemory(context.Background(), store, filepath.Join(dir, types.SnapshotStateFile), filepath.Join(dir, types.SnapshotMemFile), ref, 0)
		if err != nil {
			fmt.Fprintf(stderr, "volt-snapshot: import: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "memory of %s is manifest %s in %s; restore with mem_backend {\"backend_type\": \"Cas\", \"backend_path\": %q}\n", dir, d, storeDir, storeDir)
		return 0
	case args[0] == "merge" && len(args) == 3:
		base, diff := args[1], args[2]
		err := snapshot.Merge(snapshot.MergeParams{
			BaseState: filepath.Join(base, types.SnapshotStateFile), BaseMem: filepath.Join(base, types.SnapshotMemFile),
			DiffState: filepath.Join(diff, types.SnapshotStateFile), DiffMem: filepath.Join(diff, types.SnapshotMemFile),
		})
		if err != nil {
			fmt.Fprintf(stderr, "volt-snapshot: merge: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "merged %s onto %s\n", diff, base)
		return 0
	}
	fmt.Fprint(stderr, usageText)
	return 2
}

// info prints what a state file holds and, given its memory file, whether
// the two are a pair.
func info(stdout io.Writer, paths []string) error {
	st, err := snapshot.ReadStateFile(paths[0])
	if err != nil {
		return err
	}
	kind := "full"
	if st.Memory.Diff {
		kind = "diff"
	}
	fmt.Fprintf(stdout, "format %s, %s snapshot: %d vCPUs, %s memory, memory ID %s, generation %s\n",
		st.Format, kind, st.Machine.CPUs, vmm.FormatSize(st.Machine.MemorySize), st.Memory.ID, st.Devices.GenID.ID)
	if st.Memory.Manifest != "" {
		fmt.Fprintf(stdout, "memory in a CAS store: manifest %s\n", st.Memory.Manifest)
	}
	if st.Memory.Diff {
		fmt.Fprintf(stdout, "diff against memory %s\n", st.Memory.BaseID)
	}
	if len(paths) < 2 {
		return nil
	}
	f, err := hostfile.Open("memory file", paths[1])
	if err != nil {
		return err
	}
	defer f.Close()
	t, err := snapshot.ReadTrailer(f)
	if err != nil {
		return err
	}
	state := "complete"
	if t.Merging {
		state = "merge in progress from " + t.MergeFrom.String()
	}
	fmt.Fprintf(stdout, "memory file: %s, %s of RAM, ID %s, %s\n", t.Kind, vmm.FormatSize(t.Size), t.ID, state)
	if t.ID != st.Memory.ID {
		return fmt.Errorf("%s and %s are not a pair: %w", paths[0], paths[1], snapshot.ErrWrongMemory)
	}
	return nil
}
