package stack

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/demopg"
	"github.com/sovereign-stack/ssbuild/testkit/testdocker"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// The static ssbuild the demo proxy container runs, built once per test
// binary (the demo bind-mounts it read-only, as on an instance).
var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func staticSSBuild(t testing.TB) string {
	t.Helper()
	testenv.RequireTools(t, "go")
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ssbuild-stacktest-")
		if buildErr != nil {
			return
		}
		buildErr = testenv.BuildStaticSSBuild(filepath.Join(buildDir, "ssbuild"))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "ssbuild")
}

// importDemoImage makes ssbuild-demo/web:1 as scripts/demo.sh does:
// busybox, /bin/sh, a /www page.
func importDemoImage(t testing.TB, c *client.Client) string {
	t.Helper()
	testenv.RequireTools(t, "busybox")
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	mtime := time.Unix(1700000000, 0)
	page := []byte("served by the ssbuild demo\n")
	for _, e := range []struct {
		h    tar.Header
		body []byte
	}{
		{tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bin},
		{tar.Header{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil},
		{tar.Header{Name: "www/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "www/index.html", Typeflag: tar.TypeReg, Mode: 0o644}, page},
		{tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
	} {
		e.h.ModTime, e.h.Size = mtime, int64(len(e.body))
		if err := tw.WriteHeader(&e.h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return testdocker.Import(t, c, "ssbuild-demo/web:1", &b)
}

// demoEnv is a private dockerd with the demo image and the demo recipe's
// www stack rendered with its generated secrets.
type demoEnv struct {
	docker *testdocker.Daemon
	c      *client.Client
	recipe *recipes.Recipe
	dep    recipes.Deployment
	sec    secrets.Set
	opts   Options
}

func newDemoEnv(t testing.TB) *demoEnv {
	t.Helper()
	testenv.Short(t)
	e := &demoEnv{docker: testdocker.Start(t)}
	e.c = e.docker.Client
	importDemoImage(t, e.c)
	demopg.Import(t, e.c) // the btcpay stack's database and stand-in
	e.recipe = openRecipe(t, "demo")
	e.dep = e.recipe.Deployments[0]
	names, err := SecretNames(e.dep)
	if err != nil {
		t.Fatal(err)
	}
	if e.sec, err = secrets.Ensure(t.TempDir(), e.dep.Project(), names); err != nil {
		t.Fatal(err)
	}
	e.opts = Options{BTCPayHost: "btcpay", SSBuildBinary: staticSSBuild(t)}
	return e
}

func (e *demoEnv) render(t testing.TB, role string) *Stack {
	t.Helper()
	st, err := RenderWith(e.recipe, e.dep, role, e.sec, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	// The deploy's fence check (appliance/fence) is tested with it; here
	// the Lightning stand-in may always start.
	st.Fence = func(context.Context, client.APIClient, *Stack, *Service, string) error { return nil }
	return st
}

func (e *demoEnv) apply(t testing.TB, st *Stack) Result {
	t.Helper()
	res, err := Apply(context.Background(), e.c, st, progress.Discard())
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// containerIDs maps service to container ID.
func containerIDs(t testing.TB, c client.APIClient, project string) map[string]string {
	t.Helper()
	obj, err := Inventory(context.Background(), c, project)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, ct := range obj.Containers {
		ids[ct.Service] = ct.ID
	}
	return ids
}

// containerIP is a container's address on its first network: the test
// reaches it from the host over the network's bridge.
func containerIP(t testing.TB, c client.APIClient, name string) string {
	t.Helper()
	info, err := c.ContainerInspect(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range info.NetworkSettings.Networks {
		if n.IPAddress != "" {
			return n.IPAddress
		}
	}
	t.Fatalf("%s has no IP address", name)
	return ""
}

// httpGet asks addr for / with a Host header, retrying while the server
// comes up.
func httpGet(t testing.TB, addr, host string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 3 * time.Second}
	var lastErr error
	for i := 0; i < 50; i++ {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Host = host
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				return resp.StatusCode, string(body)
			}
			lastErr = fmt.Errorf("%d %s", resp.StatusCode, body)
		} else {
			lastErr = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("GET http://%s/ (Host %s): %v", addr, host, lastErr)
	return 0, ""
}

// execIn runs a command in a container and returns its stdout.
func execIn(t testing.TB, c client.APIClient, ctr string, cmd ...string) string {
	t.Helper()
	ctx := context.Background()
	ex, err := c.ContainerExecCreate(ctx, ctr, container.ExecOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	att, err := c.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer att.Close()
	var out, errb bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &errb, att.Reader); err != nil {
		t.Fatal(err)
	}
	insp, err := c.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		t.Fatal(err)
	}
	if insp.ExitCode != 0 {
		t.Fatalf("%s in %s: exit %d: %s", strings.Join(cmd, " "), ctr, insp.ExitCode, errb.String())
	}
	return out.String()
}

// dockerEvents lists what Docker reports between two times: an Apply that
// changes nothing must leave no container, network or volume event.
func dockerEvents(t testing.TB, c client.APIClient, since, until time.Time) []events.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ts := func(x time.Time) string { return fmt.Sprintf("%d.%09d", x.Unix(), x.Nanosecond()) }
	msgs, errs := c.Events(ctx, events.ListOptions{Since: ts(since), Until: ts(until)})
	var out []events.Message
	for {
		select {
		case m := <-msgs:
			out = append(out, m)
		case err := <-errs:
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			return out
		}
	}
}
