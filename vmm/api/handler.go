package api

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/voltvmm/volt/vmm/api/microhttp"
	"github.com/voltvmm/volt/vmm/api/types"
)

// Handler returns the microhttp.Handler serving the Firecracker API.
func (c *Controller) Handler() microhttp.Handler { return &handler{c: c} }

type handler struct{ c *Controller }

// response is what a route produces: a status and a body to encode (nil
// for 204).
type response struct {
	status int
	body   any
}

func noContent() response { return response{status: statusNoContent} }

func ok(body any) response { return response{status: statusOK, body: body} }

func badRequest(err error) response {
	return response{status: statusBadRequest, body: types.Error{FaultMessage: err.Error()}}
}

// The statuses the API answers with, as Firecracker's swagger lists them.
const (
	statusOK                  = 200
	statusNoContent           = 204
	statusBadRequest          = 400
	statusInternalServerError = 500
)

// Fault is the body of an error answer: the swagger Error.
func Fault(msg string) []byte {
	b, err := json.Marshal(types.Error{FaultMessage: msg})
	if err != nil {
		return []byte(`{"fault_message":"internal error: cannot encode the fault"}`)
	}
	return b
}

func (h *handler) ServeAPI(ctx context.Context, r *microhttp.Request) microhttp.Response {
	start := time.Now()
	resp := h.serve(ctx, r)
	out := microhttp.Response{Status: resp.status}
	if resp.body != nil {
		b, err := json.Marshal(resp.body)
		if err != nil {
			out.Status = statusInternalServerError
			b = Fault("internal error: cannot encode the response")
		}
		out.Body = b
	}
	level := h.c.log.Info
	if out.Status >= 500 {
		level = h.c.log.Error
	}
	level("api request", "method", r.Method, "path", r.Path, "status", out.Status, "duration", time.Since(start))
	return out
}

// serve routes one request. A panic in a route is a bug in volt-vmm, not
// something a client may cause; it is answered with 500 and logged, and
// the VMM goes on.
func (h *handler) serve(ctx context.Context, r *microhttp.Request) (resp response) {
	defer func() {
		if p := recover(); p != nil {
			h.c.log.Error("api handler panic", "method", r.Method, "path", r.Path, "panic", fmt.Sprint(p))
			resp = response{status: statusInternalServerError, body: types.Error{FaultMessage: "internal error while handling the request"}}
		}
	}()
	rt, id, found := route(r.Method, r.Path)
	if !found {
		if msg, known := unsupported(r.Path); known {
			return badRequest(fmt.Errorf("%s %s: %s", r.Method, r.Path, msg))
		}
		return badRequest(fmt.Errorf("invalid request method and/or path: %s %s", r.Method, r.Path))
	}
	resp = rt.handle(ctx, h.c, id, r.Body)
	h.c.count(rt.group, rt.metric, resp.status != statusOK && resp.status != statusNoContent)
	return resp
}

// routeInfo is one method and path of the API.
type routeInfo struct {
	// group and metric name the request in the metrics file, as
	// Firecracker's put_api_requests.boot_source_count and so on.
	group, metric string
	handle        func(ctx context.Context, c *Controller, id string, body []byte) response
}

// withBody decodes the body as T and hands it to apply.
func withBody[T any](apply func(ctx context.Context, c *Controller, id string, v T) error) func(context.Context, *Controller, string, []byte) response {
	return func(ctx context.Context, c *Controller, id string, body []byte) response {
		v, err := types.Decode[T](body)
		if err != nil {
			return badRequest(err)
		}
		if err := apply(ctx, c, id, v); err != nil {
			return badRequest(err)
		}
		return noContent()
	}
}

var (
	routes = map[string]routeInfo{
		"GET /": {group: "get_api_requests", metric: "instance_info", handle: func(_ context.Context, c *Controller, _ string, _ []byte) response {
			return ok(c.DescribeInstance())
		}},
		"GET /version": {group: "get_api_requests", metric: "vmm_version", handle: func(_ context.Context, c *Controller, _ string, _ []byte) response {
			return ok(c.Version())
		}},
		"GET /vm/config": {group: "get_api_requests", metric: "vm_config", handle: func(_ context.Context, c *Controller, _ string, _ []byte) response {
			return ok(c.VMConfig())
		}},
		"GET /machine-config": {group: "get_api_requests", metric: "machine_cfg", handle: func(_ context.Context, c *Controller, _ string, _ []byte) response {
			return ok(c.MachineConfig())
		}},
		"PUT /machine-config": {group: "put_api_requests", metric: "machine_cfg", handle: withBody(func(_ context.Context, c *Controller, _ string, m types.MachineConfiguration) error {
			return c.PutMachineConfig(m)
		})},
		"PATCH /machine-config": {group: "patch_api_requests", metric: "machine_cfg", handle: withBody(func(_ context.Context, c *Controller, _ string, p types.MachineConfigurationPatch) error {
			return c.PatchMachineConfig(p)
		})},
		"PUT /boot-source": {group: "put_api_requests", metric: "boot_source", handle: withBody(func(_ context.Context, c *Controller, _ string, b types.BootSource) error {
			return c.PutBootSource(b)
		})},
		"PUT /actions": {group: "put_api_requests", metric: "actions", handle: withBody(func(_ context.Context, c *Controller, _ string, a types.InstanceActionInfo) error {
			return c.Action(a)
		})},
		"PATCH /vm": {group: "patch_api_requests", metric: "vm", handle: withBody(func(_ context.Context, c *Controller, _ string, v types.VM) error {
			return c.PatchVM(v)
		})},
		"PUT /logger": {group: "put_api_requests", metric: "logger", handle: withBody(func(_ context.Context, c *Controller, _ string, l types.Logger) error {
			return c.PutLogger(l)
		})},
		"PUT /metrics": {group: "put_api_requests", metric: "metrics", handle: withBody(func(_ context.Context, c *Controller, _ string, m types.Metrics) error {
			return c.PutMetrics(m)
		})},
		"PUT /drives/": {group: "put_api_requests", metric: "drive", handle: withBody(func(_ context.Context, c *Controller, id string, d types.Drive) error {
			return c.PutDrive(id, d)
		})},
		"PUT /network-interfaces/": {group: "put_api_requests", metric: "network", handle: withBody(func(_ context.Context, c *Controller, id string, n types.NetworkInterface) error {
			return c.PutNetworkInterface(id, n)
		})},
		"PUT /vsock": {group: "put_api_requests", metric: "vsock", handle: withBody(func(_ context.Context, c *Controller, _ string, v types.Vsock) error {
			return c.PutVsock(v)
		})},
		"PUT /entropy": {group: "put_api_requests", metric: "entropy", handle: withBody(func(_ context.Context, c *Controller, _ string, e types.EntropyDevice) error {
			return c.PutEntropy(e)
		})},
		"PUT /snapshot/create": {group: "put_api_requests", metric: "snapshot_create", handle: withBody(func(ctx context.Context, c *Controller, _ string, p types.SnapshotCreateParams) error {
			return c.CreateSnapshot(ctx, p)
		})},
		"PUT /snapshot/load": {group: "put_api_requests", metric: "snapshot_load", handle: withBody(func(ctx context.Context, c *Controller, _ string, p types.SnapshotLoadParams) error {
			return c.LoadSnapshot(ctx, p)
		})},
	}
	// collections take one path segment after the prefix: the id.
	collections = []string{"/drives/", "/network-interfaces/"}
)

// route finds the route of a request and the id of a collection path.
func route(method, path string) (routeInfo, string, bool) {
	for _, prefix := range collections {
		if id, ok := strings.CutPrefix(path, prefix); ok {
			if id == "" || strings.Contains(id, "/") {
				return routeInfo{}, "", false
			}
			rt, found := routes[method+" "+prefix]
			return rt, id, found
		}
	}
	rt, found := routes[method+" "+path]
	return rt, "", found
}

// unsupported explains the swagger endpoints volt-vmm does not implement,
// so a client learns why rather than seeing a bare "invalid path".
func unsupported(path string) (string, bool) {
	for _, p := range []struct{ prefix, why string }{
		{"/balloon", "the balloon device is not supported by volt-vmm"},
		{"/mmds", "MMDS is not supported by volt-vmm"},
		{"/cpu-config", "custom CPU templates are not supported by volt-vmm; use machine-config cpu_template"},
		{"/pmem/", "virtio-pmem is not supported by volt-vmm"},
		{"/serial", "the serial console is configured with volt-vmm --console"},
		{"/hotplug/", "memory hotplug is not supported by volt-vmm"},
		{"/drives/", "only PUT is supported on /drives/{drive_id} (post-boot PATCH needs virtio-blk)"},
		{"/network-interfaces/", "only PUT is supported on /network-interfaces/{iface_id} (post-boot PATCH needs virtio-net)"},
	} {
		if strings.HasPrefix(path, p.prefix) {
			return p.why, true
		}
	}
	return "", false
}
