package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// MetricsServer serves /metrics over HTTP.
type MetricsServer struct {
	srv *http.Server
	ln  net.Listener
	err chan error
}

// ServeMetrics listens on hostPort (loopback unless allowRemote) and serves
// handler at /metrics.
func ServeMetrics(hostPort string, allowRemote bool, handler http.Handler) (*MetricsServer, error) {
	if err := CheckHostPort("--metrics-listen", hostPort, allowRemote); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", hostPort)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %q: %w", hostPort, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", handler)
	m := &MetricsServer{
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		ln:  ln, err: make(chan error, 1),
	}
	go func() { m.err <- m.srv.Serve(ln) }()
	return m, nil
}

// Addr is the bound address.
func (m *MetricsServer) Addr() string { return m.ln.Addr().String() }

// Shutdown stops the server, waiting for requests in flight until ctx ends.
func (m *MetricsServer) Shutdown(ctx context.Context) error {
	err := m.srv.Shutdown(ctx)
	if serr := <-m.err; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
