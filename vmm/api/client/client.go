// Package client is a typed Go client for a VMM's Firecracker-compatible API
// socket. The pool and voltbench drive volt-vmm through it and only through
// it, never through the VMM's internals; it works against Firecracker too.
//
// Every method takes a context for its deadline, sends one request and
// returns the decoded answer, or an *APIError carrying the status and the
// server's fault_message.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/voltvmm/volt/internal/unixhttp"
	"github.com/voltvmm/volt/vmm/api/types"
)

// maxResponse bounds what is read of an answer; the largest, GET /vm/config,
// is a few kilobytes.
const maxResponse = 1 << 20

// Client talks to one API socket. It is safe for concurrent use; requests
// share keep-alive connections.
type Client struct {
	socket string
	conn   *unixhttp.Client
}

// New returns a client for the API socket at path. Nothing is dialled until
// the first request.
func New(path string) *Client {
	return &Client{socket: path, conn: unixhttp.New(path, 2, maxResponse)}
}

// Socket is the path of the API socket.
func (c *Client) Socket() string { return c.socket }

// Close drops idle connections.
func (c *Client) Close() { c.conn.Close() }

// APIError is a non-2xx answer.
type APIError struct {
	Method, Path string
	Status       int
	FaultMessage string
}

func (e *APIError) Error() string {
	if e.FaultMessage == "" {
		return fmt.Sprintf("%s %s: HTTP %d", e.Method, e.Path, e.Status)
	}
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.Path, e.Status, e.FaultMessage)
}

// do sends body (JSON-encoded unless nil) and decodes a 200 answer into out
// (when non-nil); 204 is success without a body.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	ans, err := c.conn.Do(ctx, method, path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if !ans.OK() {
		e := &APIError{Method: method, Path: path, Status: ans.Status}
		var fault types.Error
		if json.Unmarshal(ans.Body, &fault) == nil {
			e.FaultMessage = fault.FaultMessage
		} else {
			e.FaultMessage = string(bytes.TrimSpace(ans.Body))
		}
		return e
	}
	if out == nil {
		return nil
	}
	if ans.Status == http.StatusNoContent || len(ans.Body) == 0 {
		return fmt.Errorf("%s %s: HTTP %d without the expected body", method, path, ans.Status)
	}
	if err := json.Unmarshal(ans.Body, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Describe answers GET /.
func (c *Client) Describe(ctx context.Context) (types.InstanceInfo, error) {
	var v types.InstanceInfo
	return v, c.do(ctx, http.MethodGet, "/", nil, &v)
}

// Version answers GET /version.
func (c *Client) Version(ctx context.Context) (types.FirecrackerVersion, error) {
	var v types.FirecrackerVersion
	return v, c.do(ctx, http.MethodGet, "/version", nil, &v)
}

// VMConfig answers GET /vm/config.
func (c *Client) VMConfig(ctx context.Context) (types.FullVMConfiguration, error) {
	var v types.FullVMConfiguration
	return v, c.do(ctx, http.MethodGet, "/vm/config", nil, &v)
}

// MachineConfig answers GET /machine-config.
func (c *Client) MachineConfig(ctx context.Context) (types.MachineConfiguration, error) {
	var v types.MachineConfiguration
	return v, c.do(ctx, http.MethodGet, "/machine-config", nil, &v)
}

// PutMachineConfig sends PUT /machine-config.
func (c *Client) PutMachineConfig(ctx context.Context, m types.MachineConfiguration) error {
	return c.do(ctx, http.MethodPut, "/machine-config", m, nil)
}

// PatchMachineConfig sends PATCH /machine-config.
func (c *Client) PatchMachineConfig(ctx context.Context, p types.MachineConfigurationPatch) error {
	return c.do(ctx, http.MethodPatch, "/machine-config", p, nil)
}

// PutBootSource sends PUT /boot-source.
func (c *Client) PutBootSource(ctx context.Context, b types.BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", b, nil)
}

// PutDrive sends PUT /drives/{drive_id}.
func (c *Client) PutDrive(ctx context.Context, d types.Drive) error {
	return c.do(ctx, http.MethodPut, "/drives/"+d.DriveID, d, nil)
}

// PutNetworkInterface sends PUT /network-interfaces/{iface_id}.
func (c *Client) PutNetworkInterface(ctx context.Context, n types.NetworkInterface) error {
	return c.do(ctx, http.MethodPut, "/network-interfaces/"+n.IfaceID, n, nil)
}

// PutVsock sends PUT /vsock.
func (c *Client) PutVsock(ctx context.Context, v types.Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// PutEntropy sends PUT /entropy.
func (c *Client) PutEntropy(ctx context.Context, e types.EntropyDevice) error {
	return c.do(ctx, http.MethodPut, "/entropy", e, nil)
}

// PutLogger sends PUT /logger.
func (c *Client) PutLogger(ctx context.Context, l types.Logger) error {
	return c.do(ctx, http.MethodPut, "/logger", l, nil)
}

// PutMetrics sends PUT /metrics.
func (c *Client) PutMetrics(ctx context.Context, m types.Metrics) error {
	return c.do(ctx, http.MethodPut, "/metrics", m, nil)
}

func (c *Client) action(ctx context.Context, action string) error {
	return c.do(ctx, http.MethodPut, "/actions", types.InstanceActionInfo{ActionType: action}, nil)
}

// Start sends the InstanceStart action: the VM boots.
func (c *Client) Start(ctx context.Context) error { return c.action(ctx, types.ActionInstanceStart) }

// SendCtrlAltDel sends the SendCtrlAltDel action.
func (c *Client) SendCtrlAltDel(ctx context.Context) error {
	return c.action(ctx, types.ActionSendCtrlAltDel)
}

// FlushMetrics sends the FlushMetrics action.
func (c *Client) FlushMetrics(ctx context.Context) error {
	return c.action(ctx, types.ActionFlushMetrics)
}

// Pause sends PATCH /vm {"state": "Paused"}.
func (c *Client) Pause(ctx context.Context) error {
	return c.do(ctx, http.MethodPatch, "/vm", types.VM{State: types.VMPaused}, nil)
}

// Resume sends PATCH /vm {"state": "Resumed"}.
func (c *Client) Resume(ctx context.Context) error {
	return c.do(ctx, http.MethodPatch, "/vm", types.VM{State: types.VMResumed}, nil)
}

// CreateSnapshot sends PUT /snapshot/create; the VM must be paused.
func (c *Client) CreateSnapshot(ctx context.Context, p types.SnapshotCreateParams) error {
	return c.do(ctx, http.MethodPut, "/snapshot/create", p, nil)
}

// LoadSnapshot sends PUT /snapshot/load to a fresh VMM.
func (c *Client) LoadSnapshot(ctx context.Context, p types.SnapshotLoadParams) error {
	return c.do(ctx, http.MethodPut, "/snapshot/load", p, nil)
}

// WaitReady polls GET / until the socket answers or ctx ends: a VMM started
// with --api-sock creates its socket shortly after exec.
func (c *Client) WaitReady(ctx context.Context, every time.Duration) (types.InstanceInfo, error) {
	var last error
	for {
		info, err := c.Describe(ctx)
		if err == nil {
			return info, nil
		}
		var apiErr *APIError
		if errors.As(err, &apiErr) {
			return info, err
		}
		// The attempt the deadline cut short says nothing new: report
		// why the ones before it failed.
		if last == nil || ctx.Err() == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return info, fmt.Errorf("API socket %s never answered: %w (last error: %v)", c.socket, ctx.Err(), last)
		case <-time.After(every):
		}
	}
}
