package vmm_test

import (
	"bufio"
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/boot"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
)

// guestArtefact returns a file scripts/setup built into build/guest/.
func guestArtefact(t *testing.T, name string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", "build", "guest", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("guest artefact %s is missing (%v): run ./scripts/setup first", p, err)
	}
	return p
}

// bootUntil boots kernel and waits until its console prints every line in
// want (each matched as a substring, in order), then stops the VM. It
// proves the loader, the boot parameters and the UART against a real Linux.
func bootUntil(t *testing.T, kernel string, protocol boot.Protocol, cmdline string, timeout time.Duration, want ...string) {
	t.Helper()
	kvmtest.Require(t)
	outR, outW := io.Pipe()
	vm, err := vmm.New(vmm.Config{
		KernelPath: kernel, Cmdline: cmdline, Protocol: protocol,
		MemorySize: 256 << 20, CPUs: 1, Console: outW,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan vmm.Result, 1)
	go func() {
		done <- vm.Run(ctx)
		outW.Close()
	}()
	var log strings.Builder
	start := time.Now()
	sc := bufio.NewScanner(outR)
	for sc.Scan() && len(want) > 0 {
		log.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), want[0]) {
			t.Logf("%6.1fs %s", time.Since(start).Seconds(), sc.Text())
			want = want[1:]
		}
	}
	vm.Stop()
	go io.Copy(io.Discard, outR)
	r := <-done
	if len(want) > 0 {
		t.Fatalf("console never printed %q (VM stopped: %s %v); output:\n%s", want[0], r.Reason, r.Err, log.String())
	}
}

func TestOurVmlinuxPrintsBannerAndCommandLine(t *testing.T) {
	cmdline := "console=ttyS0 earlyprintk=serial,ttyS0,115200 volt.test=pvh-path"
	bootUntil(t, guestArtefact(t, "vmlinux"), boot.ProtocolPVH, cmdline, 3*time.Minute,
		"Linux version 6.1", "Command line: "+cmdline)
}

// The same kernel through the Linux 64-bit boot protocol: our bzImage's
// decompressor runs in KVM's instruction emulator here (~25 s).
func TestOurBzImagePrintsBannerAndCommandLine(t *testing.T) {
	cmdline := "console=ttyS0 earlyprintk=serial,ttyS0,115200 volt.test=bzimage-path"
	bootUntil(t, guestArtefact(t, "bzImage"), boot.ProtocolLinux64, cmdline, 5*time.Minute,
		"Linux version 6.1", "Command line: "+cmdline)
}

// Debian's own cloud kernel is the independent check of the bzImage path:
// built by someone else, compressed, with an EFI stub. On a host whose KVM
// emulates ring 0 its decompressor takes minutes (measured ~4.5 min here);
// on hardware-assisted KVM it takes well under a second.
func TestDebianCloudBzImagePrintsBannerAndCommandLine(t *testing.T) {
	cmdline := "console=ttyS0 earlyprintk=serial,ttyS0,115200 volt.test=debian-bzimage"
	bootUntil(t, guestArtefact(t, "debian-cloud-bzImage"), boot.ProtocolAuto, cmdline, 12*time.Minute,
		"Linux version 6.1", "Command line: "+cmdline)
}
