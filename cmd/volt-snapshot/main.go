// Command volt-snapshot inspects and merges volt-vmm snapshots offline.
//
//	volt-snapshot info STATE_FILE           verify a state file and summarise it
//	volt-snapshot merge BASE_DIR DIFF_DIR   apply a diff snapshot onto its base, in place
//
// A snapshot directory holds vm.state and vm.mem, as volt-vmm --restore
// reads them.
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/snapshot"
)

const usageText = `usage: volt-snapshot info STATE_FILE
       volt-snapshot merge BASE_DIR DIFF_DIR
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
	case args[0] == "info" && len(args) == 2:
		st, err := snapshot.ReadStateFile(args[1])
		if err != nil {
			fmt.Fprintf(stderr, "volt-snapshot: %v\n", err)
			return 1
		}
		kind := "full"
		if st.Memory.Diff {
			kind = "diff"
		}
		fmt.Fprintf(stdout, "format %d.%d, %s snapshot: %d vCPUs, %s memory, generation %s\n",
			snapshot.MajorVersion, snapshot.MinorVersion, kind, st.Machine.CPUs, vmm.FormatSize(st.Machine.MemorySize), st.Devices.GenID.ID)
		return 0
	case args[0] == "merge" && len(args) == 3:
		base, diff := args[1], args[2]
		err := snapshot.MergeDiffSnapshot(
			filepath.Join(base, "vm.state"), filepath.Join(base, "vm.mem"),
			filepath.Join(diff, "vm.state"), filepath.Join(diff, "vm.mem"))
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
