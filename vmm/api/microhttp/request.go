// Package microhttp is the small HTTP/1.1 server behind volt-vmm's API
// socket, as Firecracker's micro_http is behind its own: requests with a
// Content-Length body (no chunked encoding), keep-alive, and every error,
// down to a malformed request line, answered through the caller's error
// formatter so that a client always gets the API's JSON fault body. It
// replaces net/http in the VMM, which also keeps TLS, HTTP/2 and their
// megabytes of code out of every VMM process.
package microhttp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
)

// Request is one parsed request.
type Request struct {
	Method string
	// Path is the percent-decoded path of the request target; a query
	// string is dropped, as the API has no use for one.
	Path  string
	Proto string // "HTTP/1.1" or "HTTP/1.0"
	// Header maps lower-cased names to values; a repeated header keeps
	// its values joined by ", " as RFC 9110 §5.3 allows (except
	// Content-Length, whose repeats must agree).
	Header map[string]string
	Body   []byte
	// keepAlive is what the client asked for: HTTP/1.1 unless
	// "Connection: close", HTTP/1.0 only with "Connection: keep-alive".
	keepAlive bool
	// contentLength is the declared body size, -1 when absent.
	contentLength int64
}

// Limits bound what a client may send.
type Limits struct {
	// MaxHeaderBytes bounds the request line and headers together.
	MaxHeaderBytes int
	// MaxBodyBytes bounds Content-Length.
	MaxBodyBytes int64
}

// ProtocolError is a request the server cannot parse; Status says which
// answer it gets (400, 413, 431, 501, 505).
type ProtocolError struct {
	Status int
	Msg    string
}

func (e *ProtocolError) Error() string { return e.Msg }

func protoErr(status int, format string, args ...any) *ProtocolError {
	return &ProtocolError{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// errHeaderTooLarge is returned by readLine past the header budget.
var errHeaderTooLarge = errors.New("header too large")

// readHead reads the request line and headers (not the body). io.EOF before
// the first byte means the client closed an idle connection.
func readHead(r *bufio.Reader, lim Limits) (*Request, error) {
	budget := lim.MaxHeaderBytes
	line, err := readLine(r, &budget)
	if err != nil {
		return nil, headErr(err, true)
	}
	// RFC 9112 §2.2: a server should ignore at least one empty line before
	// the request line (some clients send CRLF after a body).
	if len(line) == 0 {
		if line, err = readLine(r, &budget); err != nil {
			return nil, headErr(err, false)
		}
	}
	req := &Request{Header: map[string]string{}, contentLength: -1}
	if err := req.parseRequestLine(line); err != nil {
		return nil, err
	}
	for {
		line, err := readLine(r, &budget)
		if err != nil {
			return nil, headErr(err, false)
		}
		if len(line) == 0 {
			break
		}
		if err := req.addHeader(line); err != nil {
			return nil, err
		}
	}
	if err := req.checkFraming(lim); err != nil {
		return nil, err
	}
	return req, nil
}

func headErr(err error, first bool) error {
	switch {
	case errors.Is(err, errHeaderTooLarge):
		return protoErr(431, "the request line and headers exceed the limit")
	case first && errors.Is(err, io.EOF):
		return io.EOF
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return protoErr(400, "the connection closed in the middle of the request headers")
	}
	return err
}

// readLine returns one line without its CRLF (a bare LF is accepted, as RFC
// 9112 §2.2 allows), charging it against budget.
func readLine(r *bufio.Reader, budget *int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		*budget -= len(chunk)
		if *budget < 0 {
			return nil, errHeaderTooLarge
		}
		line = append(line, chunk...)
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if len(line) > 0 && errors.Is(err, io.EOF) {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	return bytes.TrimSuffix(line, []byte("\r")), nil
}

func (req *Request) parseRequestLine(line []byte) error {
	parts := strings.Split(string(line), " ")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return protoErr(400, "malformed request line %q: want METHOD SP PATH SP HTTP/1.1", truncate(line))
	}
	method, target, proto := parts[0], parts[1], parts[2]
	for _, c := range []byte(method) {
		if c < 'A' || c > 'Z' {
			return protoErr(400, "malformed request line: method %q is not an upper-case token", truncate([]byte(method)))
		}
	}
	switch proto {
	case "HTTP/1.1":
		req.keepAlive = true
	case "HTTP/1.0":
	default:
		if strings.HasPrefix(proto, "HTTP/") {
			return protoErr(505, "HTTP version %q is not supported: use HTTP/1.1 or HTTP/1.0", truncate([]byte(proto)))
		}
		return protoErr(400, "malformed request line %q: want METHOD SP PATH SP HTTP/1.1", truncate(line))
	}
	if !strings.HasPrefix(target, "/") {
		return protoErr(400, "request target %q is not an absolute path", truncate([]byte(target)))
	}
	path, _, _ := strings.Cut(target, "?")
	decoded, err := url.PathUnescape(path)
	if err != nil {
		return protoErr(400, "request path %q: %v", truncate([]byte(path)), err)
	}
	if strings.ContainsAny(decoded, "\x00\r\n") {
		return protoErr(400, "request path contains a control character")
	}
	req.Method, req.Path, req.Proto = method, decoded, proto
	return nil
}

func (req *Request) addHeader(line []byte) error {
	if line[0] == ' ' || line[0] == '\t' {
		return protoErr(400, "obsolete header line folding is not accepted")
	}
	name, value, ok := bytes.Cut(line, []byte(":"))
	if !ok || len(name) == 0 {
		return protoErr(400, "malformed header line %q", truncate(line))
	}
	for _, c := range name {
		if !isTokenChar(c) {
			return protoErr(400, "malformed header name %q", truncate(name))
		}
	}
	key := strings.ToLower(string(name))
	val := strings.Trim(string(value), " \t")
	if key == "content-length" {
		n, err := parseContentLength(val)
		if err != nil {
			return err
		}
		if req.contentLength >= 0 && req.contentLength != n {
			return protoErr(400, "conflicting Content-Length headers (%d and %d)", req.contentLength, n)
		}
		req.contentLength = n
	}
	if prev, ok := req.Header[key]; ok && key != "content-length" {
		val = prev + ", " + val
	}
	req.Header[key] = val
	switch key {
	case "connection":
		for _, opt := range strings.Split(strings.ToLower(val), ",") {
			switch strings.TrimSpace(opt) {
			case "close":
				req.keepAlive = false
			case "keep-alive":
				req.keepAlive = true
			}
		}
	}
	return nil
}

// parseContentLength accepts only decimal digits: strconv would take a sign.
func parseContentLength(v string) (int64, error) {
	if v == "" {
		return 0, protoErr(400, "empty Content-Length")
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, protoErr(400, "Content-Length %q is not a non-negative integer", truncate([]byte(v)))
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, protoErr(400, "Content-Length %q is out of range", truncate([]byte(v)))
	}
	return n, nil
}

func (req *Request) checkFraming(lim Limits) error {
	if te, ok := req.Header["transfer-encoding"]; ok {
		return protoErr(501, "Transfer-Encoding %q is not supported: send the body with a Content-Length", truncate([]byte(te)))
	}
	if req.contentLength > lim.MaxBodyBytes {
		return protoErr(413, "request body of %d bytes exceeds the limit of %d", req.contentLength, lim.MaxBodyBytes)
	}
	return nil
}

// expectsContinue reports an "Expect: 100-continue" (curl sends it for
// bodies over a kilobyte and waits a second for the interim answer).
func (req *Request) expectsContinue() bool {
	return strings.EqualFold(req.Header["expect"], "100-continue") && req.contentLength > 0
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// truncate keeps client-supplied text in messages short.
func truncate(b []byte) string {
	const max = 64
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
