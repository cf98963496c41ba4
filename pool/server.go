package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ServerConfig is how the daemon serves its API and metrics.
type ServerConfig struct {
	Socket        string        // the API's Unix socket (mode 0660)
	SocketGroup   string        // group that owns it ("" keeps the daemon's): its members may use the pool
	MetricsListen string        // host:port for /metrics; "" for none
	Drain         time.Duration // how long shutdown waits for leases to be released
	// Ready, if set, is called once the API accepts requests (tests).
	Ready func(p *Pool)
}

// Serve runs the daemon until ctx ends, then shuts down gracefully: new
// acquires are refused, leases get Drain to be released (the API keeps
// serving releases meanwhile), then every VMM is stopped and the socket
// removed.
//
// Under systemd, sockets passed by socket activation are used (named
// "api" and "metrics" with FileDescriptorName=, or the first one as the
// API) and readiness is sent with sd_notify; without systemd both are
// no-ops and the daemon listens itself.
func Serve(ctx context.Context, cfg Config, sc ServerConfig) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	api, metricsLn, owned, err := listeners(sc)
	if err != nil {
		return err
	}
	if owned != "" {
		defer os.Remove(owned)
	}
	defer api.Close()
	if metricsLn != nil {
		defer metricsLn.Close()
	}
	p, err := Open(ctx, cfg)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: p.Handler(), ConnContext: ConnContext, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(api) }()
	var msrv *http.Server
	if metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(p.Registry(), promhttp.HandlerOpts{EnableOpenMetrics: true}))
		msrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- msrv.Serve(metricsLn) }()
	}
	daemon.SdNotify(false, daemon.SdNotifyReady)
	cfg.Log.Info("voltpool serving", "socket", api.Addr().String(), "metrics", sc.MetricsListen, "state", cfg.StateDir)
	if sc.Ready != nil {
		sc.Ready(p)
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		serveErr = fmt.Errorf("voltpool: serve: %w", serveErr)
	}
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	cfg.Log.Info("voltpool shutting down", "drain", sc.Drain)
	shutErr := p.Shutdown(context.Background(), sc.Drain)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if msrv != nil {
		msrv.Shutdown(sctx)
	}
	return errors.Join(serveErr, shutErr)
}

// listeners returns the API and metrics listeners: socket-activated ones,
// or its own; owned is the socket path to remove on exit ("" when systemd
// owns it).
func listeners(sc ServerConfig) (api, metrics net.Listener, owned string, err error) {
	named, err := activation.ListenersWithNames()
	if err != nil {
		return nil, nil, "", fmt.Errorf("voltpool: socket activation: %w", err)
	}
	var all []net.Listener
	for name, ls := range named {
		for _, l := range ls {
			switch {
			case name == "api" && api == nil:
				api = l
			case name == "metrics" && metrics == nil:
				metrics = l
			default:
				all = append(all, l)
			}
		}
	}
	if api == nil && len(all) > 0 {
		api, all = all[0], all[1:]
	}
	for _, l := range all {
		l.Close()
	}
	if api == nil {
		if api, err = listenUnix(sc.Socket, sc.SocketGroup); err != nil {
			return nil, nil, "", err
		}
		owned = sc.Socket
	}
	if metrics == nil && sc.MetricsListen != "" {
		if metrics, err = net.Listen("tcp", sc.MetricsListen); err != nil {
			api.Close()
			if owned != "" {
				os.Remove(owned)
			}
			return nil, nil, "", fmt.Errorf("voltpool: metrics: %w", err)
		}
	}
	return api, metrics, owned, nil
}

// listenUnix listens on path with mode 0660. A stale socket (nobody
// answers) is replaced; a live one, or any other file, is an error.
func listenUnix(path, group string) (net.Listener, error) {
	gid := -1
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("voltpool: --socket-group: %w", err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("voltpool: group %s has gid %q", group, g.Gid)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("voltpool: socket directory: %w", err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("voltpool: %s exists and is not a socket: not replacing it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("voltpool: %s is served by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("voltpool: remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("voltpool: listen: %w", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		os.Remove(path)
		return nil, fmt.Errorf("voltpool: chmod socket: %w", err)
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			l.Close()
			os.Remove(path)
			return nil, fmt.Errorf("voltpool: socket group: %w", err)
		}
	}
	return l, nil
}
