package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	pc "github.com/voltvmm/volt/pool/client"
)

// maxBody bounds a request body: a template spec is a few hundred bytes.
const maxBody = 64 << 10

type ctxKey int

const peerKey ctxKey = 0

// peer is the credentials of the process at the other end of an API
// connection (SO_PEERCRED), which own the leases it takes.
type peer struct {
	uid   uint32
	known bool
}

// ConnContext records the peer's credentials of a Unix connection in the
// request context (use as http.Server.ConnContext).
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return context.WithValue(ctx, peerKey, peer{})
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return context.WithValue(ctx, peerKey, peer{})
	}
	var cred *unix.Ucred
	var cerr error
	raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cerr != nil || cred == nil {
		return context.WithValue(ctx, peerKey, peer{})
	}
	return context.WithValue(ctx, peerKey, peer{uid: cred.Uid, known: true})
}

// Handler returns the HTTP API of p.
//
//	POST   /v1/leases              {template, ttl}      → 201 Lease
//	GET    /v1/leases                                   → [Lease]
//	GET    /v1/leases/{id}                              → Lease
//	DELETE /v1/leases/{id}                              → 204
//	POST   /v1/leases/{id}/renew   {ttl}                → Lease
//	POST   /v1/templates           TemplateSpec         → 201 Template
//	GET    /v1/templates                                → [Template]
//	DELETE /v1/templates/{name}                         → 204
//	PUT    /v1/templates/{name}/warm {warm}             → Template
//	GET    /v1/status                                   → Status
//	GET    /v1/vms                                      → [VMInfo]
func (p *Pool) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/leases", p.handleAcquire)
	mux.HandleFunc("GET /v1/leases", func(w http.ResponseWriter, r *http.Request) { writeJSONAnswer(w, http.StatusOK, p.Leases()) })
	mux.HandleFunc("GET /v1/leases/{id}", func(w http.ResponseWriter, r *http.Request) {
		l, err := p.Lease(r.PathValue("id"))
		answer(w, http.StatusOK, l, err)
	})
	mux.HandleFunc("DELETE /v1/leases/{id}", func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusNoContent, nil, p.Release(r.PathValue("id"), uidOf(r)))
	})
	mux.HandleFunc("POST /v1/leases/{id}/renew", func(w http.ResponseWriter, r *http.Request) {
		var req pc.RenewRequest
		if err := decodeBody(r, &req); err != nil {
			answer(w, 0, nil, err)
			return
		}
		l, err := p.Renew(r.PathValue("id"), req.TTL, uidOf(r))
		answer(w, http.StatusOK, l, err)
	})
	mux.HandleFunc("POST /v1/templates", func(w http.ResponseWriter, r *http.Request) {
		var spec pc.TemplateSpec
		if err := decodeBody(r, &spec); err != nil {
			answer(w, 0, nil, err)
			return
		}
		t, err := p.CreateTemplate(r.Context(), spec)
		answer(w, http.StatusCreated, t, err)
	})
	mux.HandleFunc("GET /v1/templates", func(w http.ResponseWriter, r *http.Request) { writeJSONAnswer(w, http.StatusOK, p.Templates()) })
	mux.HandleFunc("DELETE /v1/templates/{name}", func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusNoContent, nil, p.RemoveTemplate(r.Context(), r.PathValue("name")))
	})
	mux.HandleFunc("PUT /v1/templates/{name}/warm", func(w http.ResponseWriter, r *http.Request) {
		var req pc.WarmRequest
		if err := decodeBody(r, &req); err != nil {
			answer(w, 0, nil, err)
			return
		}
		t, err := p.SetWarm(r.PathValue("name"), req.Warm)
		answer(w, http.StatusOK, t, err)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { writeJSONAnswer(w, http.StatusOK, p.Status()) })
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) { writeJSONAnswer(w, http.StatusOK, p.VMs()) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s %s (see voltpool --help for the API)", r.Method, r.URL.Path))
	})
	return mux
}

func (p *Pool) handleAcquire(w http.ResponseWriter, r *http.Request) {
	var req pc.AcquireRequest
	if err := decodeBody(r, &req); err != nil {
		answer(w, 0, nil, err)
		return
	}
	if req.Template == "" {
		answer(w, 0, nil, errorf(ErrBadRequest, "acquire needs a template"))
		return
	}
	// An acquire finishes even if the caller hangs up mid-way: the lease
	// then ends by its TTL, rather than a half-done restore leaking.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 30*time.Second)
	defer cancel()
	l, err := p.Acquire(ctx, req.Template, req.TTL, uidOf(r))
	answer(w, http.StatusCreated, l, err)
}

func uidOf(r *http.Request) uint32 {
	if pr, ok := r.Context().Value(peerKey).(peer); ok && pr.known {
		return pr.uid
	}
	// Unknown peer (not a Unix socket): treated as an unprivileged
	// caller that owns nothing.
	return ^uint32(0)
}

// decodeBody decodes exactly one JSON object of at most maxBody bytes,
// refusing unknown fields.
func decodeBody(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return errorf(ErrBadRequest, "Content-Type %q: the API takes application/json", ct)
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return errorf(ErrBadRequest, "read body: %v", err)
	}
	if len(b) > maxBody {
		return errorf(ErrBadRequest, "body larger than %d bytes", maxBody)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errorf(ErrBadRequest, "empty body: a JSON object is expected")
		}
		return errorf(ErrBadRequest, "malformed JSON body: %v", err)
	}
	if dec.More() {
		return errorf(ErrBadRequest, "malformed JSON body: more than one JSON value")
	}
	return nil
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrExists):
		return http.StatusConflict
	case errors.Is(err, ErrGone):
		return http.StatusGone
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func answer(w http.ResponseWriter, status int, v any, err error) {
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return
	}
	writeJSONAnswer(w, status, v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSONAnswer(w, status, pc.Error{Error: msg})
}

func writeJSONAnswer(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encode answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
