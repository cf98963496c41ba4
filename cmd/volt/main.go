// Command volt is Volt's single entry point, with no daemon: cas (the
// content-addressed store), image (workload images in it), container
// (systemd-nspawn) and vm (volt-vmm); see docs/containers.md.
//
//	volt cas import FILE --name NAME [--chunk-size 2M] [--kind image]
//	volt cas export NAME FILE
//	volt cas ls | du | verify [NAME...] | gc [--dry-run] | rm NAME...
//	volt cas clone NAME NEW
//	volt cas volume create DIR --from NAME | volume info DIR
//	volt cas commit DIR --name NAME
//
// Exit status: 0 success, 1 failure (the message says what failed), 2 bad
// usage. This package holds flag parsing, wiring and output only; the work
// is in package cas and cas/volume.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// env is what a command may touch of the process, so that tests can run
// commands in-process.
type env struct {
	stdout io.Writer
	stderr io.Writer
	// stderrTTY says whether stderr is a terminal: progress bars are drawn
	// only there unless --progress asks for them.
	stderrTTY bool
}

// command is a node of the command tree: a group with subcommands, or a
// leaf with run. Groups added later (container, vm) plug in at the root.
type command struct {
	name    string
	summary string
	sub     []*command
	run     func(ctx context.Context, e *env, name string, args []string) int
}

func root() *command {
	return &command{name: "volt", summary: "Volt: microVMs and containers over one content-addressed store", sub: []*command{
		casCommand(),
		imageCommand(),
		containerCommand(),
		vmCommand(),
	}}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e := &env{stdout: os.Stdout, stderr: os.Stderr, stderrTTY: isTerminal(os.Stderr)}
	os.Exit(run(ctx, e, os.Args[1:]))
}

// run dispatches args through the command tree.
func run(ctx context.Context, e *env, args []string) int {
	c := root()
	path := c.name
	for c.run == nil {
		if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			if len(args) == 0 {
				printGroupUsage(e.stderr, path, c)
				return exitUsage
			}
			printGroupUsage(e.stdout, path, c)
			return exitOK
		}
		next := c.find(args[0])
		if next == nil {
			fmt.Fprintf(e.stderr, "%s: unknown command %q\n", path, args[0])
			printGroupUsage(e.stderr, path, c)
			return exitUsage
		}
		c, path, args = next, path+" "+next.name, args[1:]
	}
	return c.run(ctx, e, path, args)
}

func (c *command) find(name string) *command {
	for _, s := range c.sub {
		if s.name == name {
			return s
		}
	}
	return nil
}

func printGroupUsage(w io.Writer, path string, c *command) {
	fmt.Fprintf(w, "usage: %s COMMAND [ARGS]\n\n%s\n\ncommands:\n", path, c.summary)
	subs := append([]*command(nil), c.sub...)
	sort.Slice(subs, func(i, j int) bool { return subs[i].name < subs[j].name })
	width := 0
	for _, s := range subs {
		width = max(width, len(s.name))
	}
	for _, s := range subs {
		fmt.Fprintf(w, "  %-*s  %s\n", width, s.name, s.summary)
	}
	fmt.Fprintf(w, "\nRun '%s COMMAND --help' for a command's flags.\n", path)
}

// usageError prints a usage message and returns exitUsage.
func usageError(e *env, path, format string, a ...any) int {
	fmt.Fprintf(e.stderr, "%s: %s (see %s --help)\n", path, fmt.Sprintf(format, a...), path)
	return exitUsage
}

// failure prints err and returns exitFailure.
func failure(e *env, path string, err error) int {
	fmt.Fprintf(e.stderr, "%s: %s\n", path, strings.TrimSpace(err.Error()))
	return exitFailure
}
