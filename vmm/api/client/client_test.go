package client_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/api"
	"github.com/voltvmm/volt/vmm/api/client"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
)

// serveCanned answers every request with status and body on a Unix socket,
// recording the last request line.
func serveCanned(t *testing.T, status int, body string) (sock string, last *string) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var seen string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seen = r.Method + " " + r.URL.Path + " " + string(b)
		if body != "" {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock, &seen
}

func TestClientDecodesAnswersAndFaults(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name        string
		status      int
		body        string
		call        func(*client.Client) error
		wantRequest string
		wantErr     string
	}{
		{"204", 204, "", func(c *client.Client) error { return c.Start(ctx) },
			`PUT /actions {"action_type":"InstanceStart"}`, ""},
		{"fault", 400, `{"fault_message":"vcpu_count must be between 1 and 32, got 0"}`,
			func(c *client.Client) error { return c.PutMachineConfig(ctx, types.MachineConfiguration{}) },
			`PUT /machine-config {"vcpu_count":0,"mem_size_mib":0,"smt":false,"track_dirty_pages":false}`,
			"PUT /machine-config: HTTP 400: vcpu_count must be between 1 and 32, got 0"},
		{"fault without JSON", 500, "oops", func(c *client.Client) error { return c.Pause(ctx) },
			`PATCH /vm {"state":"Paused"}`, "PATCH /vm: HTTP 500: oops"},
		{"200 decoded", 200, `{"app_name":"volt-vmm","id":"x","state":"Running","vmm_version":"1"}`,
			func(c *client.Client) error {
				info, err := c.Describe(ctx)
				if err == nil && info.State != "Running" {
					return errors.New("state not decoded: " + info.State)
				}
				return err
			}, "GET / ", ""},
		{"200 without body", 200, "", func(c *client.Client) error { _, err := c.Version(ctx); return err },
			"GET /version ", "without the expected body"},
		{"200 not JSON", 200, "{", func(c *client.Client) error { _, err := c.MachineConfig(ctx); return err },
			"GET /machine-config ", "decode answer"},
		{"drive path from id", 204, "", func(c *client.Client) error {
			return c.PutDrive(ctx, types.Drive{DriveID: "rootfs", PathOnHost: "/r", IsRootDevice: true})
		}, `PUT /drives/rootfs {"drive_id":"rootfs","is_root_device":true,"path_on_host":"/r"}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock, last := serveCanned(t, tt.status, tt.body)
			c := client.New(sock)
			defer c.Close()
			err := tt.call(c)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if *last != tt.wantRequest {
				t.Errorf("server saw %q, want %q", *last, tt.wantRequest)
			}
			var apiErr *client.APIError
			if tt.status >= 400 && (!errors.As(err, &apiErr) || apiErr.Status != tt.status) {
				t.Errorf("error %v is not an *APIError with status %d", err, tt.status)
			}
		})
	}
}

func TestWaitReadyGivesUpWithTheLastError(t *testing.T) {
	c := client.New(filepath.Join(t.TempDir(), "absent.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.WaitReady(ctx, 5*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "never answered") || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("error %v", err)
	}
}

// TestClientDrivesTheRealVMM boots the probe through the client, pauses it
// and snapshots it: the client against the server it was written for.
func TestClientDrivesTheRealVMM(t *testing.T) {
	kvmtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	probeELF, err := probe.Path(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctrl := api.NewController(api.Options{LogOutput: io.Discard, Base: vmm.Config{}})
	defer ctrl.Close()
	srv, err := api.Listen(filepath.Join(dir, "api.sock"), 0)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(ctrl.Handler(), nil)
	defer srv.Shutdown(ctx)

	c := client.New(srv.Path())
	defer c.Close()
	if info, err := c.WaitReady(ctx, time.Millisecond); err != nil || info.State != "Not started" {
		t.Fatalf("describe: %+v, %v", info, err)
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"boot source", func() error { return c.PutBootSource(ctx, types.BootSource{KernelImagePath: probeELF}) }},
		{"machine config", func() error {
			return c.PutMachineConfig(ctx, types.MachineConfiguration{VCPUCount: 1, MemSizeMib: 32})
		}},
		{"start", func() error { return c.Start(ctx) }},
		{"pause", func() error { return c.Pause(ctx) }},
		{"snapshot", func() error {
			return c.CreateSnapshot(ctx, types.SnapshotCreateParams{SnapshotPath: filepath.Join(dir, "vm.state"), MemFilePath: filepath.Join(dir, "vm.mem")})
		}},
		{"resume", func() error { return c.Resume(ctx) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	if info, err := c.Describe(ctx); err != nil || info.State != "Running" {
		t.Fatalf("after resume: %+v, %v", info, err)
	}
	mc, err := c.MachineConfig(ctx)
	if err != nil || mc.VCPUCount != 1 || mc.MemSizeMib != 32 {
		t.Fatalf("machine config %+v, %v", mc, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "vm.state")); err != nil {
		t.Fatalf("snapshot not written: %v", err)
	}
	var apiErr *client.APIError
	if err := c.Start(ctx); !errors.As(err, &apiErr) || apiErr.Status != 400 {
		t.Fatalf("second InstanceStart: %v, want a 400 APIError", err)
	}
}
