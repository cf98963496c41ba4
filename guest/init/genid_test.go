package voltinit

import (
	"errors"
	"testing"
)

func TestGenerationWatcherReseedsOnChange(t *testing.T) {
	ids := [][GenIDSize]byte{{1}, {1}, {2}, {2}, {3}}
	var reseeded [][]byte
	w := &GenerationWatcher{
		Read: func() ([GenIDSize]byte, error) {
			id := ids[0]
			ids = ids[1:]
			return id, nil
		},
		Reseed: func(id []byte) error { reseeded = append(reseeded, append([]byte(nil), id...)); return nil },
	}
	last, _ := w.Read()
	var changes []bool
	for len(ids) > 0 {
		c, err := w.Check(&last)
		if err != nil {
			t.Fatal(err)
		}
		changes = append(changes, c)
	}
	want := []bool{false, true, false, true}
	for i := range want {
		if changes[i] != want[i] {
			t.Fatalf("changes %v, want %v", changes, want)
		}
	}
	if len(reseeded) != 2 || reseeded[0][0] != 2 || reseeded[1][0] != 3 {
		t.Fatalf("reseeded with %v", reseeded)
	}
}

func TestGenerationWatcherRetriesFailedReseed(t *testing.T) {
	fail := true
	w := &GenerationWatcher{
		Read: func() ([GenIDSize]byte, error) { return [GenIDSize]byte{9}, nil },
		Reseed: func([]byte) error {
			if fail {
				return errors.New("no /dev/urandom")
			}
			return nil
		},
	}
	last := [GenIDSize]byte{1}
	if _, err := w.Check(&last); err == nil {
		t.Fatal("failed reseed not reported")
	}
	if last[0] != 1 {
		t.Fatal("baseline advanced although the reseed failed; the next check would skip it")
	}
	fail = false
	if c, err := w.Check(&last); err != nil || !c {
		t.Fatalf("retry: changed=%v err=%v", c, err)
	}
}
