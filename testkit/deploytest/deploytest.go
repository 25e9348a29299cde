// Package deploytest has what tests of a deploy onto a test bed (and the
// demo) need: the shipped demo recipe pointed at the bed's pool and
// network, the demo base image built once per test binary, and a site's
// answer through a member's port 80.
package deploytest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/images/baseimage"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/configtest"
	"github.com/sovereign-stack/ssbuild/testkit/demopg"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
	"github.com/sovereign-stack/ssbuild/testkit/testdocker"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// BedRecipe is the shipped demo recipe, pointed at what the bed's hosts
// have (configtest.BedRecipe).
func BedRecipe(t testing.TB) *recipes.Recipe {
	t.Helper()
	r, err := recipes.Open("demo")
	if err != nil {
		t.Fatal(err)
	}
	return configtest.BedRecipe(r)
}

var (
	imageOnce sync.Once
	imageDir  string
	imageErr  error
)

// DemoImage builds the demo base image once per test binary (the rootfs
// layer is cached across runs) and returns its folder: Debian bookworm with
// Docker, the static ssbuild, the demo's Docker images (web, postgres) pre-loaded and a
// small pruned regtest datadir as the chainstate. Call Cleanup from
// TestMain to remove it.
func DemoImage(t testing.TB) string {
	t.Helper()
	Require(t)
	imageOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ssbuild-deploy-image-")
		if err != nil {
			imageErr = err
			return
		}
		imageDir = dir
		docker := testdocker.Start(t)
		testdocker.ImportBusybox(t, docker.Client, "ssbuild-demo/web:1", "demo")
		demopg.Import(t, docker.Client)
		bin := filepath.Join(dir, "ssbuild")
		if imageErr = testenv.BuildStaticSSBuild(bin); imageErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		r := BedRecipe(t)
		datadir := filepath.Join(dir, "datadir")
		blocks := filepath.Join(datadir, "regtest", "blocks")
		if imageErr = os.MkdirAll(blocks, 0o755); imageErr != nil {
			return
		}
		if imageErr = os.WriteFile(filepath.Join(blocks, "blk00000.dat"), []byte(strings.Repeat("block", 1000)), 0o644); imageErr != nil {
			return
		}
		r.Image.Chainstate = &recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: datadir}
		_, imageErr = baseimage.Build(ctx, r, baseimage.Options{OutDir: filepath.Join(dir, "out"),
			CacheDir: rootfstest.CacheDir(), Docker: docker.Client, Binary: bin, Epoch: 1_700_000_000})
	})
	if imageErr != nil {
		t.Fatalf("demo base image: %v", imageErr)
	}
	return filepath.Join(imageDir, "out")
}

// AskSite GETs / of rawURL's host from another bed host (one whose LXD
// runs: not a host a test killed), sent to port 80 of member (where the
// www instance's proxy devices listen), as DNS pointing there would, and returns the answer's status and trimmed body.
// Services may still be starting: it retries for up to 30 s until one
// answers 200.
func AskSite(ctx context.Context, bed *testbed.Bed, member, rawURL string) (status, body string, err error) {
	var at, from *testbed.Host
	for _, h := range bed.Hosts {
		if h.Name == member {
			at = h
		} else if from == nil && h.LXD() != nil { // not a host a test killed
			from = h
		}
	}
	if at == nil || from == nil {
		return "", "", fmt.Errorf("no www instance on a bed host (%q)", member)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", "", err
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return from.DialContext(ctx, network, net.JoinHostPort(at.Address.String(), "80"))
		}}}
	defer client.CloseIdleConnections()
	var last error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+u.Host+"/", nil)
		if err != nil {
			return "", "", err
		}
		resp, err := client.Do(req)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return resp.Status, strings.TrimSpace(string(b)), nil
			}
			err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
		}
		last = err
		select {
		case <-ctx.Done():
			return "", "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return "", "", fmt.Errorf("GET %s on %s port 80: %w", rawURL, member, last)
}

// Cleanup removes the image DemoImage built, if any.
func Cleanup() {
	if imageDir != "" {
		os.RemoveAll(imageDir)
	}
}

// Require skips (fails under CI) without root or the tools a deploy onto a
// bed needs.
func Require(t testing.TB) {
	t.Helper()
	rootfstest.Require(t)
	testenv.RequireTools(t, append([]string{"mksquashfs", "dockerd"}, testbed.Tools...)...)
}
