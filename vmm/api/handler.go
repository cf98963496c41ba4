package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/voltvmm/volt/vmm/api/types"
)

// Handler returns the http.Handler serving the Firecracker API.
func (c *Controller) Handler() http.Handler { return &handler{c: c} }

type handler struct{ c *Controller }

// response is what a route produces: a status and a body to encode (nil
// for 204).
type response struct {
	status int
	body   any
}

func noContent() response { return response{status: http.StatusNoContent} }

func ok(body any) response { return response{status: http.StatusOK, body: body} }

func badRequest(err error) response {
	return response{status: http.StatusBadRequest, body: types.Error{FaultMessage: err.Error()}}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	resp := h.serve(w, r)
	w.Header().Set("Server", AppName)
	if resp.body == nil {
		w.WriteHeader(resp.status)
	} else {
		b, err := json.Marshal(resp.body)
		if err != nil {
			resp = response{status: http.StatusInternalServerError}
			b = []byte(`{"fault_message":"internal error: cannot encode the response"}`)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		w.WriteHeader(resp.status)
		w.Write(b)
	}
	level := h.c.log.Info
	if resp.status >= 500 {
		level = h.c.log.Error
	}
	level("api request", "method", r.Method, "path", r.URL.Path, "status", resp.status, "duration", time.Since(start))
}

// serve routes one request. A panic in a route is a bug in volt-vmm, not
// something a client may cause; it is answered with 500 and logged, and
// the VMM goes on.
func (h *handler) serve(w http.ResponseWriter, r *http.Request) (resp response) {
	defer func() {
		if p := recover(); p != nil {
			h.c.log.Error("api handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(p))
			resp = response{status: http.StatusInternalServerError, body: types.Error{FaultMessage: "internal error while handling the request"}}
		}
	}()
	rt, id, found := route(r.Method, r.URL.Path)
	if !found {
		if msg, known := unsupported(r.URL.Path); known {
			return badRequest(fmt.Errorf("%s %s: %s", r.Method, r.URL.Path, msg))
		}
		return badRequest(fmt.Errorf("invalid request method and/or path: %s %s", r.Method, r.URL.Path))
	}
	var body []byte
	if rt.hasBody {
		var err error
		if body, err = readBody(w, r); err != nil {
			h.c.count(rt.group, rt.metric, true)
			return badRequest(err)
		}
	}
	resp = rt.handle(h.c, r, id, body)
	h.c.count(rt.group, rt.metric, resp.status != http.StatusOK && resp.status != http.StatusNoContent)
	return resp
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > types.MaxBodySize {
		return nil, fmt.Errorf("request body of %d bytes exceeds the limit of %d", r.ContentLength, types.MaxBodySize)
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, types.MaxBodySize))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, fmt.Errorf("request body exceeds the limit of %d bytes", types.MaxBodySize)
	}
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	return b, nil
}

// routeInfo is one method and path of the API.
type routeInfo struct {
	hasBody bool
	// group and metric name the request in the metrics file, as
	// Firecracker's put_api_requests.boot_source_count and so on.
	group, metric string
	handle        func(c *Controller, r *http.Request, id string, body []byte) response
}

// withBody decodes the body as T and hands it to apply.
func withBody[T any](apply func(c *Controller, r *http.Request, id string, v T) error) func(*Controller, *http.Request, string, []byte) response {
	return func(c *Controller, r *http.Request, id string, body []byte) response {
		v, err := types.Decode[T](body)
		if err != nil {
			return badRequest(err)
		}
		if err := apply(c, r, id, v); err != nil {
			return badRequest(err)
		}
		return noContent()
	}
}

var (
	routes = map[string]routeInfo{
		"GET /": {group: "get_api_requests", metric: "instance_info", handle: func(c *Controller, _ *http.Request, _ string, _ []byte) response {
			return ok(c.DescribeInstance())
		}},
		"GET /version": {group: "get_api_requests", metric: "vmm_version", handle: func(c *Controller, _ *http.Request, _ string, _ []byte) response {
			return ok(c.Version())
		}},
		"GET /vm/config": {group: "get_api_requests", metric: "vm_config", handle: func(c *Controller, _ *http.Request, _ string, _ []byte) response {
			return ok(c.VMConfig())
		}},
		"GET /machine-config": {group: "get_api_requests", metric: "machine_cfg", handle: func(c *Controller, _ *http.Request, _ string, _ []byte) response {
			return ok(c.MachineConfig())
		}},
		"PUT /machine-config": {hasBody: true, group: "put_api_requests", metric: "machine_cfg", handle: withBody(func(c *Controller, _ *http.Request, _ string, m types.MachineConfiguration) error {
			return c.PutMachineConfig(m)
		})},
		"PATCH /machine-config": {hasBody: true, group: "patch_api_requests", metric: "machine_cfg", handle: withBody(func(c *Controller, _ *http.Request, _ string, p types.MachineConfigurationPatch) error {
			return c.PatchMachineConfig(p)
		})},
		"PUT /boot-source": {hasBody: true, group: "put_api_requests", metric: "boot_source", handle: withBody(func(c *Controller, _ *http.Request, _ string, b types.BootSource) error {
			return c.PutBootSource(b)
		})},
		"PUT /actions": {hasBody: true, group: "put_api_requests", metric: "actions", handle: withBody(func(c *Controller, _ *http.Request, _ string, a types.InstanceActionInfo) error {
			return c.Action(a)
		})},
		"PATCH /vm": {hasBody: true, group: "patch_api_requests", metric: "vm", handle: withBody(func(c *Controller, _ *http.Request, _ string, v types.VM) error {
			return c.PatchVM(v)
		})},
		"PUT /logger": {hasBody: true, group: "put_api_requests", metric: "logger", handle: withBody(func(c *Controller, _ *http.Request, _ string, l types.Logger) error {
			return c.PutLogger(l)
		})},
		"PUT /metrics": {hasBody: true, group: "put_api_requests", metric: "metrics", handle: withBody(func(c *Controller, _ *http.Request, _ string, m types.Metrics) error {
			return c.PutMetrics(m)
		})},
		"PUT /drives/": {hasBody: true, group: "put_api_requests", metric: "drive", handle: withBody(func(c *Controller, _ *http.Request, id string, d types.Drive) error {
			return c.PutDrive(id, d)
		})},
		"PUT /network-interfaces/": {hasBody: true, group: "put_api_requests", metric: "network", handle: withBody(func(c *Controller, _ *http.Request, id string, n types.NetworkInterface) error {
			return c.PutNetworkInterface(id, n)
		})},
		"PUT /vsock": {hasBody: true, group: "put_api_requests", metric: "vsock", handle: withBody(func(c *Controller, _ *http.Request, _ string, v types.Vsock) error {
			return c.PutVsock(v)
		})},
		"PUT /entropy": {hasBody: true, group: "put_api_requests", metric: "entropy", handle: withBody(func(c *Controller, _ *http.Request, _ string, e types.EntropyDevice) error {
			return c.PutEntropy(e)
		})},
		"PUT /snapshot/create": {hasBody: true, group: "put_api_requests", metric: "snapshot_create", handle: withBody(func(c *Controller, r *http.Request, _ string, p types.SnapshotCreateParams) error {
			return c.CreateSnapshot(r.Context(), p)
		})},
		"PUT /snapshot/load": {hasBody: true, group: "put_api_requests", metric: "snapshot_load", handle: withBody(func(c *Controller, r *http.Request, _ string, p types.SnapshotLoadParams) error {
			return c.LoadSnapshot(r.Context(), p)
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
