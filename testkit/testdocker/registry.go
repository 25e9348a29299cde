package testdocker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// registryConfig is a plain HTTP registry on loopback, storing in a directory;
// dockerd treats 127.0.0.0/8 registries as insecure (HTTP) by default.
const registryConfig = `version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
`

// StartRegistry starts Debian's docker-registry (distribution 2.x) on a free
// loopback port for t and returns its host:port, to push to and pull from.
// It is stopped by its PID and its storage removed when t ends.
func StartRegistry(t testing.TB) string {
	t.Helper()
	testenv.RequireTools(t, "docker-registry")
	dir := t.TempDir()
	addr, err := freePort()
	if err != nil {
		t.Fatalf("testdocker: %v", err)
	}
	config := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(registryConfig, filepath.Join(dir, "storage"), addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := spawn(filepath.Join(dir, "registry.log"), "docker-registry", "serve", config)
	if err != nil {
		t.Fatalf("testdocker: %v", err)
	}
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("testdocker: %v", err)
		}
	})
	ready := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	if err := waitFor(ready, p); err != nil {
		t.Fatalf("testdocker: registry did not start: %v", err)
	}
	return addr
}

// freePort returns a loopback address whose port was free a moment ago.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Push pushes ref (named after a StartRegistry address) from c and returns
// the repo digest the daemon then reports for it (name@sha256:...).
func Push(t testing.TB, c *client.Client, ref string) string {
	t.Helper()
	ctx := context.Background()
	// dockerd 20.10 refuses a push without an auth header; "{}" is no login.
	body, err := c.ImagePush(ctx, ref, image.PushOptions{RegistryAuth: base64.URLEncoding.EncodeToString([]byte("{}"))})
	if err != nil {
		t.Fatalf("testdocker: push %s: %v", ref, err)
	}
	defer body.Close()
	dec := json.NewDecoder(body)
	for {
		var msg struct{ Error string }
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("testdocker: push %s: %v", ref, err)
		}
		if msg.Error != "" {
			t.Fatalf("testdocker: push %s: %s", ref, msg.Error)
		}
	}
	info, err := c.ImageInspect(ctx, ref)
	if err != nil {
		t.Fatalf("testdocker: push %s: %v", ref, err)
	}
	if len(info.RepoDigests) != 1 {
		t.Fatalf("testdocker: pushed %s, repo digests %v: want one", ref, info.RepoDigests)
	}
	return info.RepoDigests[0]
}
