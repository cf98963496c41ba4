package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestRestoreAndClonesFlags(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"help"}, &out, &errb); code != exitOK || !strings.Contains(out.String(), "restore") || !strings.Contains(out.String(), "clones") {
		t.Errorf("help does not list restore and clones: %q", out.String())
	}
	for _, args := range [][]string{
		{"restore", "--no-such-flag"},
		{"restore", "extra"},
		{"restore", "--touch", "-1"},
		{"clones", "-n", "0"},
		{"clones", "--touch", "-5"},
		{"clones", "extra"},
	} {
		errb.Reset()
		if code := run(context.Background(), args, &out, &errb); code != exitUsage {
			t.Errorf("%q: exit %d, want %d (%s)", args, code, exitUsage, errb.String())
		}
	}
	errb.Reset()
	if code := run(context.Background(), []string{"restore", "--help"}, &out, &errb); code != exitOK || !strings.Contains(errb.String(), "--compare-boot") {
		t.Errorf("restore --help: exit %d, %q", code, errb.String())
	}
}
