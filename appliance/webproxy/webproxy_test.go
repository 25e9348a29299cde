package webproxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func backend(t *testing.T, name string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s host=%s path=%s xff=%s", name, r.Host, r.URL.Path, r.Header.Get("X-Forwarded-Host"))
	}))
	t.Cleanup(s.Close)
	return s
}

func get(t *testing.T, h http.Handler, host, path string) (int, string) {
	t.Helper()
	req := httptest.NewRequest("GET", "http://"+host+path, nil)
	req.Host = host
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w.Code, w.Body.String()
}

func mustRoute(t *testing.T, s string) Route {
	t.Helper()
	r, err := ParseRoute(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRoutesByHost: each site name reaches its own backend, which sees the
// original Host; unknown hosts get a 404 naming them; /healthz answers.
func TestRoutesByHost(t *testing.T) {
	ghost, relay := backend(t, "ghost"), backend(t, "relay")
	p, err := New([]Route{
		mustRoute(t, "www.blog.example="+ghost.URL),
		mustRoute(t, "blog.example="+ghost.URL),
		mustRoute(t, "Relay.Blog.Example="+relay.URL),
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		host, path string
		code       int
		want       string
	}{
		{"www.blog.example", "/post/1", 200, "ghost host=www.blog.example path=/post/1 xff=www.blog.example"},
		{"blog.example:8080", "/", 200, "ghost host=blog.example:8080"},
		{"relay.blog.example.", "/", 200, "relay host=relay.blog.example."},
		{"RELAY.blog.example", "/", 200, "relay "},
		{"git.blog.example", "/", 404, `no site "git.blog.example" here`},
		{"anything", "/healthz", 200, "ok: 3 routes"},
	}
	for _, c := range cases {
		code, body := get(t, p, c.host, c.path)
		if code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("GET %s%s: %d %q; want %d containing %q", c.host, c.path, code, body, c.code, c.want)
		}
	}
}

// TestBackendDown: a backend that does not answer is a 502 naming it.
func TestBackendDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p, err := New([]Route{mustRoute(t, "a.example=http://"+addr)})
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, p, "a.example", "/")
	if code != http.StatusBadGateway || !strings.Contains(body, addr) {
		t.Fatalf("got %d %q; want 502 naming %s", code, body, addr)
	}
}

func TestParseRouteErrors(t *testing.T) {
	for _, s := range []string{"", "a.example", "=http://x", "a.example=ftp://x", "a.example=nohost"} {
		if _, err := ParseRoute(s); err == nil {
			t.Errorf("ParseRoute(%q): no error", s)
		}
	}
	if _, err := New([]Route{mustRoute(t, "a=http://x"), mustRoute(t, "A=http://y")}); err == nil {
		t.Error("two routes for one host: no error")
	}
}

// TestServe: a real listener serves and shuts down when the context ends.
func TestServe(t *testing.T) {
	b := backend(t, "site")
	p, err := New([]Route{mustRoute(t, "s.example="+b.URL)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var log strings.Builder
	go func() { done <- Serve(ctx, addr, p, &log) }()
	var resp *http.Response
	for i := 0; i < 50; i++ {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Host = "s.example"
		if resp, err = http.DefaultClient.Do(req); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(body), "site host=s.example") {
		t.Fatalf("body %q", body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}
