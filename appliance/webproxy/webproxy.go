// Package webproxy is the demo stack's reverse proxy: it routes HTTP
// requests by their Host header (exact host names, port ignored) to a
// backend URL, answers 404 naming the host for a host it does not know and
// serves /healthz itself. `ssbuild proxy` runs it.
package webproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"time"
)

// Route sends requests for Host to Backend.
type Route struct {
	Host    string
	Backend *url.URL
}

// ParseRoute reads HOST=URL, e.g. www.example.com=http://ghost:2368.
func ParseRoute(s string) (Route, error) {
	host, raw, ok := strings.Cut(s, "=")
	if !ok || host == "" || raw == "" {
		return Route{}, fmt.Errorf("route %q: want HOST=URL", s)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Route{}, fmt.Errorf("route %q: backend %q is not an http(s) URL", s, raw)
	}
	return Route{Host: normalizeHost(host), Backend: u}, nil
}

// normalizeHost lowercases a host name and drops a port and a final dot.
func normalizeHost(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// Proxy is an http.Handler routing by Host.
type Proxy struct {
	routes map[string]*httputil.ReverseProxy
	hosts  []string
}

// New makes a proxy; two routes for one host are an error.
func New(routes []Route) (*Proxy, error) {
	p := &Proxy{routes: map[string]*httputil.ReverseProxy{}}
	for _, r := range routes {
		host := normalizeHost(r.Host)
		if _, dup := p.routes[host]; dup {
			return nil, fmt.Errorf("two routes for host %s", host)
		}
		backend := r.Backend
		p.routes[host] = &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(backend)
				pr.SetXForwarded()
				pr.Out.Host = pr.In.Host // the backend sees the site's name
			},
			ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
				http.Error(w, fmt.Sprintf("webproxy: backend %s of %s is not answering: %v", backend, host, err), http.StatusBadGateway)
			},
		}
		p.hosts = append(p.hosts, host)
	}
	sort.Strings(p.hosts)
	return p, nil
}

// Hosts lists the routed host names, sorted.
func (p *Proxy) Hosts() []string { return p.hosts }

// ServeHTTP routes one request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "ok: %d routes\n", len(p.routes))
		return
	}
	host := normalizeHost(r.Host)
	rp, ok := p.routes[host]
	if !ok {
		http.Error(w, fmt.Sprintf("webproxy: no site %q here", host), http.StatusNotFound)
		return
	}
	rp.ServeHTTP(w, r)
}

// Serve listens on addr and serves until ctx ends, then shuts down
// gracefully. log gets one line when it listens.
func Serve(ctx context.Context, addr string, p *Proxy, log io.Writer) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	fmt.Fprintf(log, "proxy: listening on %s for %s\n", ln.Addr(), strings.Join(p.Hosts(), ", "))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("proxy: %w", err)
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shut); err != nil {
		return fmt.Errorf("proxy: shutdown: %w", err)
	}
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("proxy: %w", err)
	}
	return nil
}
