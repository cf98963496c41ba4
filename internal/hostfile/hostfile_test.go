package hostfile

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// specialFiles makes one of each kind of file in a temporary directory.
func specialFiles(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	if err := os.WriteFile(p("regular"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(p("fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"link-to-regular": "regular", "link-to-fifo": "fifo", "dangling": "absent"} {
		if err := os.Symlink(target, p(link)); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("unix", p("socket"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return map[string]string{
		"regular": p("regular"), "fifo": p("fifo"), "dir": p("dir"), "socket": p("socket"),
		"link-to-regular": p("link-to-regular"), "link-to-fifo": p("link-to-fifo"), "dangling": p("dangling"),
		"chardev": "/dev/null", "absent": p("absent"), "absent-dir": p("no/such/file"),
	}
}

func TestOpenRefusesEverythingButRegularFiles(t *testing.T) {
	files := specialFiles(t)
	tests := []struct{ name, wantErr string }{
		{"regular", ""},
		{"link-to-regular", ""},
		{"fifo", "is a named pipe (FIFO)"},
		{"link-to-fifo", "is a named pipe (FIFO)"},
		{"chardev", "is a character device"},
		{"dir", "is a directory"},
		{"socket", "no such device or address"}, // open(2) on a socket fails itself
		{"dangling", "no such file or directory"},
		{"absent", "no such file or directory"},
	}
	for _, tt := range tests {
		for _, rw := range []bool{false, true} {
			t.Run(tt.name, func(t *testing.T) {
				done := make(chan error, 1)
				go func() {
					var f *os.File
					var err error
					if rw {
						f, err = OpenReadWrite("kernel", files[tt.name])
					} else {
						f, err = Open("kernel", files[tt.name])
					}
					if err == nil {
						// The file must be usable in blocking mode.
						b := make([]byte, 4)
						if _, rerr := f.Read(b); rerr != nil || string(b) != "data" {
							err = errors.New("read back failed")
						}
						f.Close()
					}
					done <- err
				}()
				var err error
				select {
				case err = <-done:
				case <-time.After(5 * time.Second):
					t.Fatal("open blocked")
				}
				switch {
				case tt.wantErr == "" && err != nil:
					t.Fatalf("unexpected error: %v", err)
				case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				case tt.wantErr != "" && !strings.HasPrefix(err.Error(), "kernel "+files[tt.name]):
					t.Fatalf("error %q does not start by naming the file", err)
				}
				if strings.HasPrefix(tt.wantErr, "is a") && !errors.Is(err, ErrNotRegular) {
					t.Errorf("error %v does not wrap ErrNotRegular", err)
				}
			})
		}
	}
}

func TestCheckRegular(t *testing.T) {
	files := specialFiles(t)
	for name, wantErr := range map[string]string{
		"regular": "", "link-to-regular": "", "fifo": "is a named pipe (FIFO)", "chardev": "is a character device",
		"dir": "is a directory", "socket": "is a socket", "absent": "no such file",
	} {
		err := CheckRegular("initrd", files[name])
		if (wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: error %v, want %q", name, err, wantErr)
		}
	}
}

func TestCheckCreateTargetNeverAcceptsAPathItWouldReplaceWrongly(t *testing.T) {
	files := specialFiles(t)
	for name, wantErr := range map[string]string{
		"regular":         "",
		"absent":          "",
		"link-to-regular": "is a symbolic link; refusing to replace it",
		"dangling":        "is a symbolic link",
		"fifo":            "is a named pipe (FIFO); refusing",
		"chardev":         "is a character device; refusing",
		"dir":             "is a directory; refusing",
		"socket":          "is a socket; refusing",
		"absent-dir":      "no such file or directory",
	} {
		err := CheckCreateTarget("mem_file_path", files[name])
		if (wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: error %v, want %q", name, err, wantErr)
		}
	}
	if err := CheckCreateTarget("x", ""); err == nil {
		t.Error("empty path accepted")
	}
}
