// Package unixhttp is the client side of JSON over HTTP/1.1 on a Unix
// socket, which the VMM's API client and the pool's client share: a
// transport that dials one socket whatever the URL says, and one request
// whose answer is read whole, up to a bound.
package unixhttp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Client sends requests to one Unix socket. It is safe for concurrent use;
// requests share keep-alive connections.
type Client struct {
	socket string
	limit  int64
	http   *http.Client
}

// New returns a client of socket that keeps up to maxIdle idle
// connections and reads at most limit bytes of an answer. Nothing is
// dialled until the first request.
func New(socket string, maxIdle int, limit int64) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:        maxIdle,
		MaxIdleConnsPerHost: maxIdle,
		IdleConnTimeout:     30 * time.Second,
		// Answers are small JSON documents on a local socket.
		DisableCompression: true,
	}
	return &Client{socket: socket, limit: limit, http: &http.Client{Transport: tr}}
}

// Socket is the socket's path.
func (c *Client) Socket() string { return c.socket }

// Close drops idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Answer is a response, its body read whole.
type Answer struct {
	Status int
	Body   []byte
}

// OK reports a 2xx status.
func (a Answer) OK() bool { return a.Status >= 200 && a.Status <= 299 }

// Do sends body (JSON-encoded unless nil) as method on path and reads the
// answer. Errors name what failed but not the request, which the caller's
// wrapping names.
func (c *Client) Do(ctx context.Context, method, path string, body any) (Answer, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return Answer{}, fmt.Errorf("encode body: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	// The host part is not used (the dialler ignores it), but HTTP/1.1
	// needs one.
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return Answer{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return Answer{}, fmt.Errorf("socket %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.limit+1))
	if err != nil {
		return Answer{}, fmt.Errorf("read answer: %w", err)
	}
	if int64(len(data)) > c.limit {
		return Answer{}, fmt.Errorf("answer larger than %d bytes", c.limit)
	}
	return Answer{Status: resp.StatusCode, Body: data}, nil
}
