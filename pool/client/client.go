package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/voltvmm/volt/internal/unixhttp"
)

// DefaultSocket is where voltpool serves its API unless told otherwise.
const DefaultSocket = "/run/volt/pool.sock"

const maxAnswer = 8 << 20

// Client talks to one voltpool daemon. It is safe for concurrent use.
type Client struct {
	conn *unixhttp.Client
}

// New returns a client of the daemon at socket. Nothing is dialled until
// the first request.
func New(socket string) *Client {
	return &Client{conn: unixhttp.New(socket, 128, maxAnswer)}
}

// Close drops idle connections.
func (c *Client) Close() { c.conn.Close() }

// APIError is an answer other than 2xx.
type APIError struct {
	Method, Path string
	Status       int
	Message      string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), e.Message)
}

// StatusOf returns the HTTP status of an *APIError in err's chain, or 0.
func StatusOf(err error) int {
	var e *APIError
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	ans, err := c.conn.Do(ctx, method, path, body)
	if err != nil {
		return fmt.Errorf("voltpool %s %s: %w", method, path, err)
	}
	if !ans.OK() {
		e := &APIError{Method: method, Path: path, Status: ans.Status}
		var b Error
		if json.Unmarshal(ans.Body, &b) == nil && b.Error != "" {
			e.Message = b.Error
		} else {
			e.Message = string(bytes.TrimSpace(ans.Body))
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(ans.Body, out); err != nil {
		return fmt.Errorf("voltpool %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Acquire asks for a running VM of template, leased for ttl (0: the
// daemon's default).
func (c *Client) Acquire(ctx context.Context, template string, ttl time.Duration) (Lease, error) {
	req := AcquireRequest{Template: template}
	if ttl != 0 {
		req.TTL = ttl.String()
	}
	var l Lease
	return l, c.do(ctx, http.MethodPost, "/v1/leases", req, &l)
}

// Release ends a lease: its VMM is stopped.
func (c *Client) Release(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/leases/"+url.PathEscape(id), nil, nil)
}

// Renew extends a lease to end ttl from now.
func (c *Client) Renew(ctx context.Context, id string, ttl time.Duration) (Lease, error) {
	var l Lease
	return l, c.do(ctx, http.MethodPost, "/v1/leases/"+url.PathEscape(id)+"/renew", RenewRequest{TTL: ttl.String()}, &l)
}

// Lease returns one live lease.
func (c *Client) Lease(ctx context.Context, id string) (Lease, error) {
	var l Lease
	return l, c.do(ctx, http.MethodGet, "/v1/leases/"+url.PathEscape(id), nil, &l)
}

// Leases lists the live leases.
func (c *Client) Leases(ctx context.Context) ([]Lease, error) {
	var ls []Lease
	return ls, c.do(ctx, http.MethodGet, "/v1/leases", nil, &ls)
}

// CreateTemplate boots (or adopts) a template; it answers once the
// template's snapshot is stored, which for a boot can take as long as the
// guest needs to be ready.
func (c *Client) CreateTemplate(ctx context.Context, spec TemplateSpec) (Template, error) {
	var t Template
	return t, c.do(ctx, http.MethodPost, "/v1/templates", spec, &t)
}

// Templates lists the templates.
func (c *Client) Templates(ctx context.Context) ([]Template, error) {
	var ts []Template
	return ts, c.do(ctx, http.MethodGet, "/v1/templates", nil, &ts)
}

// RemoveTemplate removes a template, its warm VMMs and its snapshot;
// leased VMs of it run on until released.
func (c *Client) RemoveTemplate(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/templates/"+url.PathEscape(name), nil, nil)
}

// SetWarm changes how many VMMs of a template are kept warm.
func (c *Client) SetWarm(ctx context.Context, name string, warm int) (Template, error) {
	var t Template
	return t, c.do(ctx, http.MethodPut, "/v1/templates/"+url.PathEscape(name)+"/warm", WarmRequest{Warm: warm}, &t)
}

// Status returns the per-template counts.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// VMs lists every VMM the pool owns, for diagnostics and memory figures.
func (c *Client) VMs(ctx context.Context) ([]VMInfo, error) {
	var vs []VMInfo
	return vs, c.do(ctx, http.MethodGet, "/v1/vms", nil, &vs)
}
