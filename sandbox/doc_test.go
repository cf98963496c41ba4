package sandbox

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the generated part of docs/security.md")

const (
	docPath  = "../docs/security.md"
	docBegin = "<!-- BEGIN GENERATED: go test ./sandbox -run TestSecurityDoc -update -->"
	docEnd   = "<!-- END GENERATED -->"
)

// renderTables is the per-role system call list of docs/security.md,
// from the rule tables themselves so that the document cannot drift.
func renderTables() string {
	var b strings.Builder
	fc := map[Role]string{RoleVMM: "50", RoleAPI: "31", RoleVCPU: "27"}
	b.WriteString("| role | system calls | Firecracker (x86_64 musl) |\n|---|---|---|\n")
	for _, r := range Roles() {
		t, _ := TableFor(r)
		n := fc[r]
		if n == "" {
			n = "–"
		}
		fmt.Fprintf(&b, "| `%s` | %d | %s |\n", r, len(t.Syscalls()), n)
	}
	for _, r := range Roles() {
		t, _ := TableFor(r)
		fmt.Fprintf(&b, "\n### `%s` (%d)\n\n", r, len(t.Syscalls()))
		for _, name := range t.Syscalls() {
			rule, _ := t.Rule(name)
			if len(rule.Matches) == 0 {
				fmt.Fprintf(&b, "- `%s`\n", name)
				continue
			}
			var alts []string
			for i, m := range rule.Matches {
				var cs []string
				for _, c := range m {
					cs = append(cs, c.String())
				}
				s := strings.Join(cs, " and ")
				if i < len(rule.Names) && rule.Names[i] != "" {
					s = rule.Names[i] + " (" + s + ")"
				}
				alts = append(alts, s)
			}
			if name == "ioctl" {
				names := append([]string(nil), rule.Names...)
				fmt.Fprintf(&b, "- `ioctl`, request (arg1) one of: %s\n", strings.Join(names, ", "))
				continue
			}
			fmt.Fprintf(&b, "- `%s` only with %s\n", name, strings.Join(alts, ", or "))
		}
	}
	return b.String()
}

func TestSecurityDocListsTheRuleTables(t *testing.T) {
	b, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, docBegin), strings.Index(doc, docEnd)
	if i < 0 || j < i {
		t.Fatalf("%s has no generated section (%q ... %q)", docPath, docBegin, docEnd)
	}
	want := docBegin + "\n\n" + renderTables() + "\n" + docEnd
	got := doc[i : j+len(docEnd)]
	if got == want {
		return
	}
	if *update {
		if err := os.WriteFile(docPath, []byte(doc[:i]+want+doc[j+len(docEnd):]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("docs/security.md's system call lists differ from the rule tables: run go test ./sandbox -run TestSecurityDoc -update")
}
