package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/testdocker"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestDemoStackEndToEnd: the demo www stack applies to a real Docker, its
// containers run, the proxy (ssbuild itself, bind-mounted) routes each site
// name to the right backend; a second Apply makes no Docker mutation (and
// Docker reports no event); changing one service recreates only it; a
// service dropped from the stack is removed.
func TestDemoStackEndToEnd(t *testing.T) {
	e := newDemoEnv(t)
	ctx := context.Background()
	st := e.render(t, "www")

	var out bytes.Buffer
	res, err := Apply(ctx, e.c, st, progress.New(&out, progress.Plain))
	if err != nil {
		t.Fatalf("%v\nprogress:\n%s", err, out.String())
	}
	want := []string{"ghost-blog-example", "ghost-demo-example", "nostr-relay-blog-example", "proxy"}
	if !slices.Equal(res.Created, want) || res.Mutations == 0 {
		t.Fatalf("first Apply: %+v; want created %v", res, want)
	}
	for _, svc := range want {
		if !strings.Contains(out.String(), "demo-regtest/www: create "+svc+": done") {
			t.Errorf("progress has no line for %s:\n%s", svc, out.String())
		}
	}
	obj, err := Inventory(ctx, e.c, st.Project)
	if err != nil {
		t.Fatal(err)
	}
	if len(obj.Containers) != 4 {
		t.Fatalf("inventory: %+v", obj)
	}
	for _, ct := range obj.Containers {
		if ct.State != "running" {
			t.Errorf("%s is %s (%s), want running", ct.Name, ct.State, ct.Status)
		}
	}
	if len(obj.Volumes) != 3 || len(obj.Networks) != 1 {
		t.Errorf("inventory volumes %v networks %v: want 3 volumes, 1 network", obj.Volumes, obj.Networks)
	}

	// The proxy routes by Host (reached over the network's bridge; the
	// published port needs iptables, which the private dockerd lacks).
	proxy := net.JoinHostPort(containerIP(t, e.c, st.ContainerName("proxy")), "80")
	for host, page := range map[string]string{
		"demo.example":       "ghost demo.example",
		"www.demo.example":   "ghost demo.example",
		"www.blog.example":   "ghost blog.example",
		"blog.example":       "ghost blog.example",
		"relay.blog.example": "nostr-relay blog.example",
	} {
		code, body := httpGet(t, proxy, host)
		if code != 200 || strings.TrimSpace(body) != page {
			t.Errorf("Host %s: %d %q; want 200 %q", host, code, body, page)
		}
	}
	if code, body := httpGet(t, proxy, "nope.example"); code != 404 || !strings.Contains(body, "nope.example") {
		t.Errorf("unknown host: %d %q; want 404 naming it", code, body)
	}

	// Docker's health checks (busybox wget; the proxy's /healthz) pass, as
	// show reports them.
	waitHealthy(t, e, st.Project, 4)

	// No change: zero mutations, and Docker saw nothing happen.
	before := containerIDs(t, e.c, st.Project)
	t0 := time.Now()
	res = e.apply(t, e.render(t, "www"))
	t1 := time.Now()
	if res.Mutations != 0 || len(res.Unchanged) != 4 || len(res.Created)+len(res.Recreated)+len(res.Removed) != 0 {
		t.Fatalf("second Apply: %+v; want 4 unchanged, 0 mutations", res)
	}
	if evs := dockerEvents(t, e.c, t0, t1); len(evs) != 0 {
		t.Fatalf("second Apply: Docker reported %d events, first %s %s; want none", len(evs), evs[0].Type, evs[0].Action)
	}

	// One service changed: only it is recreated.
	changed := e.render(t, "www")
	changed.Service("ghost-blog-example").Environment = map[string]string{"THEME": "dark"}
	res = e.apply(t, changed)
	if !slices.Equal(res.Recreated, []string{"ghost-blog-example"}) || len(res.Unchanged) != 3 {
		t.Fatalf("Apply after changing ghost-blog-example: %+v", res)
	}
	after := containerIDs(t, e.c, st.Project)
	for svc, id := range before {
		if svc == "ghost-blog-example" {
			if after[svc] == id {
				t.Errorf("%s kept its container after its config changed", svc)
			}
		} else if after[svc] != id {
			t.Errorf("%s was recreated (%s -> %s) though only ghost-blog-example changed", svc, id[:12], after[svc][:12])
		}
	}
	if code, body := httpGet(t, proxy, "blog.example"); code != 200 || strings.TrimSpace(body) != "ghost blog.example" {
		t.Errorf("after recreate: %d %q", code, body)
	}

	// A service dropped from the stack is removed; the others stay.
	dropped := e.render(t, "www")
	dropped.Services = slices.DeleteFunc(dropped.Services, func(s Service) bool { return s.Name == "nostr-relay-blog-example" })
	res = e.apply(t, dropped)
	if !slices.Equal(res.Removed, []string{"nostr-relay-blog-example"}) || len(res.Recreated) != 1 {
		// ghost-blog-example goes back to its rendered config: recreated.
		t.Fatalf("Apply without nostr-relay-blog-example: %+v", res)
	}
	if ids := containerIDs(t, e.c, st.Project); ids["nostr-relay-blog-example"] != "" || ids["proxy"] != before["proxy"] {
		t.Errorf("containers after the removal: %v", ids)
	}
}

// TestStoppedServiceStarted: an unchanged container that is not running is
// started, not recreated.
func TestStoppedServiceStarted(t *testing.T) {
	e := newDemoEnv(t)
	ctx := context.Background()
	st := e.render(t, "btcpay")
	e.apply(t, st)
	// The stand-in answers once its database is up and holds its row.
	waitHealthy(t, e, st.Project, 2)
	ids := containerIDs(t, e.c, st.Project)
	secs := 5
	if err := e.c.ContainerStop(ctx, ids["btcpay"], container.StopOptions{Timeout: &secs}); err != nil {
		t.Fatal(err)
	}
	res := e.apply(t, st)
	if !slices.Equal(res.Started, []string{"btcpay"}) || res.Mutations != 1 {
		t.Fatalf("Apply with btcpay stopped: %+v; want it started with 1 mutation", res)
	}
	if got := containerIDs(t, e.c, st.Project)["btcpay"]; got != ids["btcpay"] {
		t.Errorf("btcpay recreated (%s -> %s)", ids["btcpay"], got)
	}
	code, body := httpGet(t, net.JoinHostPort(containerIP(t, e.c, st.ContainerName("btcpay")), "80"), "btcpay.demo.example")
	if code != 200 || strings.TrimSpace(body) != "btcpay demo.example" {
		t.Errorf("btcpay page: %d %q", code, body)
	}
	info, err := e.c.ContainerInspect(ctx, ids["btcpay"])
	if err != nil {
		t.Fatal(err)
	}
	if b := info.HostConfig.PortBindings["80/tcp"]; len(b) != 1 || b[0].HostPort != "80" {
		t.Errorf("btcpay port bindings %v; want 80->80/tcp", info.HostConfig.PortBindings)
	}
}

// TestLightningStartsOnlyAfterTheFence: the stack's Lightning node is
// created but never started without a fence check or when the check
// refuses (the error says why), has no restart policy, and starts once the
// check lets it; a running node is checked again at every Apply and
// stopped when the check refuses it.
func TestLightningStartsOnlyAfterTheFence(t *testing.T) {
	e := newDemoEnv(t)
	ctx := context.Background()
	st := e.render(t, "btcpay")
	ctr := st.ContainerName("lightning")
	isRunning := func() bool {
		info, err := e.c.ContainerInspect(ctx, ctr)
		if err != nil {
			t.Fatal(err)
		}
		if info.HostConfig.RestartPolicy.Name != container.RestartPolicyDisabled {
			t.Errorf("the Lightning node's restart policy is %q; want none", info.HostConfig.RestartPolicy.Name)
		}
		return info.State.Running
	}
	st.Fence = nil
	if _, err := Apply(ctx, e.c, st, progress.Discard()); err == nil || !strings.Contains(err.Error(), "no fence check was given: not started") {
		t.Fatalf("Apply without a fence check: %v", err)
	}
	if isRunning() {
		t.Fatal("the node runs without a fence check")
	}
	// The other services were applied all the same.
	if info, err := e.c.ContainerInspect(ctx, st.ContainerName("btcpay-db")); err != nil || !info.State.Running {
		t.Fatalf("btcpay-db does not run after the Lightning node was kept down (%v)", err)
	}
	st.Fence = func(context.Context, client.APIClient, *Stack, *Service, string) error {
		return errors.New("this copy holds generation 1, the current is 2")
	}
	if _, err := Apply(ctx, e.c, st, progress.Discard()); err == nil || !strings.Contains(err.Error(), "this copy holds generation 1") {
		t.Fatalf("Apply with a refusing fence: %v", err)
	}
	if isRunning() {
		t.Fatal("the node runs though the fence refused it")
	}
	checked := ""
	st.Fence = func(_ context.Context, _ client.APIClient, _ *Stack, svc *Service, _ string) error {
		checked = svc.Name
		return nil
	}
	res := e.apply(t, st)
	if checked != "lightning" || !slices.Contains(res.Started, "lightning") || !isRunning() {
		t.Fatalf("Apply with the fence letting it: checked %q, %+v; want lightning started", checked, res)
	}
	// A running node is checked at every Apply, with no change when it
	// holds the current generation ...
	checked = ""
	if res := e.apply(t, st); checked != "lightning" || res.Mutations != 0 {
		t.Fatalf("Apply with the node running: checked %q, %d mutations; want it checked and nothing changed", checked, res.Mutations)
	}
	// ... left running when the check cannot tell (the state unreachable) ...
	st.Fence = func(context.Context, client.APIClient, *Stack, *Service, string) error {
		return errors.New("the registry is not reachable")
	}
	if _, err := Apply(ctx, e.c, st, progress.Discard()); err == nil || !strings.Contains(err.Error(), "not reachable") || !isRunning() {
		t.Fatalf("Apply with the state unreachable: %v, running %v; want an error and the node left running", err, isRunning())
	}
	// ... and stopped when it is not the current copy (one started behind
	// ssbuild's back).
	st.Fence = func(context.Context, client.APIClient, *Stack, *Service, string) error {
		return fmt.Errorf("this copy holds generation 1, the current is 2: %w", ErrFenced)
	}
	if _, err := Apply(ctx, e.c, st, progress.Discard()); err == nil || !strings.Contains(err.Error(), "not the Lightning node's current copy; stopped") {
		t.Fatalf("Apply with a running node the fence refuses: %v; want it stopped", err)
	}
	if isRunning() {
		t.Fatal("the refused node still runs")
	}
}

// TestDownKeepsVolumes: Down removes the containers and networks but keeps
// the volumes; a later Apply reuses them with the data intact; Down with
// purge removes them.
func TestDownKeepsVolumes(t *testing.T) {
	e := newDemoEnv(t)
	ctx := context.Background()
	st := e.render(t, "www")
	e.apply(t, st)
	ctr := st.ContainerName("ghost-demo-example")
	execIn(t, e.c, ctr, "/bin/busybox", "sh", "-c", "echo 'my first post' > /data/post.txt")

	res, err := Down(ctx, e.c, st.Project, false, progress.Discard())
	if err != nil {
		t.Fatal(err)
	}
	obj, err := Inventory(ctx, e.c, st.Project)
	if err != nil {
		t.Fatal(err)
	}
	if len(obj.Containers) != 0 || len(obj.Networks) != 0 || len(obj.Volumes) != 3 {
		t.Fatalf("after Down: %+v (removed %v); want no containers or networks, 3 volumes", obj, res.Removed)
	}

	res = e.apply(t, st)
	if len(res.Created) != 4 {
		t.Fatalf("Apply after Down: %+v", res)
	}
	if got := execIn(t, e.c, ctr, "/bin/busybox", "cat", "/data/post.txt"); got != "my first post\n" {
		t.Fatalf("data after Down and Apply: %q; want the file written before", got)
	}

	if _, err := Down(ctx, e.c, st.Project, true, progress.Discard()); err != nil {
		t.Fatal(err)
	}
	if obj, err = Inventory(ctx, e.c, st.Project); err != nil {
		t.Fatal(err)
	}
	if len(obj.Containers)+len(obj.Networks)+len(obj.Volumes) != 0 {
		t.Fatalf("after Down --purge: %+v; want nothing left", obj)
	}
	res = e.apply(t, st)
	if out := execIn(t, e.c, ctr, "/bin/busybox", "ls", "/data"); out != "" {
		t.Errorf("after purge and Apply, /data holds %q; want a fresh, empty volume", out)
	}
}

// TestMissingImage: an image that was not pre-loaded is an error naming it,
// and nothing is created.
func TestMissingImage(t *testing.T) {
	testenv.Short(t)
	d := testdocker.Start(t)
	e := &demoEnv{c: d.Client, recipe: openRecipe(t, "demo")}
	e.dep = e.recipe.Deployments[0]
	st, err := RenderWith(e.recipe, e.dep, "btcpay", goldenSecrets(t, e.dep), DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Apply(context.Background(), e.c, st, progress.Discard())
	if err == nil || !strings.Contains(err.Error(), "image ssbuild-demo/postgres:15") || !strings.Contains(err.Error(), "btcpay") {
		t.Fatalf("Apply without the image: %v; want an error naming ssbuild-demo/postgres:15", err)
	}
	if res.Mutations != 0 {
		t.Errorf("%d mutations before failing; want 0", res.Mutations)
	}
}

// TestSecretsNotInOutput: secret values used by a stack appear in no
// progress line and no error, even when Docker's own message quotes them.
func TestSecretsNotInOutput(t *testing.T) {
	e := newDemoEnv(t)
	src := []byte(`networks:
  n: {}
services:
  db:
    image: ssbuild-demo/web
    command: [/bin/busybox, httpd, -f, -p, "80", -h, /www]
    init: true
    environment:
      PASSWORD: "{{secret "db-password"}}"
    networks:
      n: {}
  broken:
    image: ssbuild-demo/web
    volumes:
      - "/nonexistent/{{secret "db-password"}}:/x"
    networks:
      n: {}
`)
	sec := mustEnsure(t, e.dep.Project(), "db-password")
	value, _ := sec.Get("db-password")
	st, err := RenderSource("test.yaml", src, e.recipe, e.dep, "www", sec, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep := progress.New(&out, progress.Plain)
	_, err = Apply(context.Background(), e.c, st, rep)
	if err == nil {
		t.Fatal("Apply with a missing bind source: no error")
	}
	if strings.Contains(err.Error(), value) || strings.Contains(out.String(), value) {
		t.Fatalf("secret value leaked:\nerror: %v\nprogress:\n%s", err, out.String())
	}
	if !strings.Contains(err.Error(), "<secret db-password>") {
		t.Errorf("error %q: want the secret's place marked <secret db-password>", err)
	}
	var jsonOut bytes.Buffer
	if _, err := Down(context.Background(), e.c, st.Project, true, progress.New(&jsonOut, progress.JSON)); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(jsonOut.String(), value) {
		t.Fatal("secret value in Down's progress")
	}
	for _, s := range []string{st.String(), st.GoString(), st.Service("db").String()} {
		if strings.Contains(s, value) {
			t.Fatalf("secret value printed by %q", s)
		}
	}
	// A render error that quotes the value (a type error) is redacted too.
	bad := []byte("services:\n  x:\n    image: ssbuild-demo/web\n    init: \"{{secret \"db-password\"}}\"\n")
	_, err = RenderSource("bad.yaml", bad, e.recipe, e.dep, "www", sec, e.opts)
	if err == nil || strings.Contains(err.Error(), value) || !strings.Contains(err.Error(), "bad.yaml:4:") {
		t.Fatalf("render error %v: want bad.yaml:4 without the secret", err)
	}
}

func mustEnsure(t testing.TB, deployment string, names ...string) secrets.Set {
	t.Helper()
	sec, err := secrets.Ensure(t.TempDir(), deployment, names)
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

// TestNetworkChange: a network whose settings change is replaced, and the
// services on it are recreated on the new one.
func TestNetworkChange(t *testing.T) {
	e := newDemoEnv(t)
	ctx := context.Background()
	st := e.render(t, "btcpay")
	e.apply(t, st)
	before := containerIDs(t, e.c, st.Project)["btcpay"]
	st.Networks[0].Internal = true
	res := e.apply(t, st)
	if !slices.Equal(res.Recreated, []string{"btcpay", "btcpay-db", "lightning"}) {
		t.Fatalf("Apply with the network made internal: %+v; want both services on it recreated", res)
	}
	n, err := e.c.NetworkInspect(ctx, st.NetworkName("btcpay"), network.InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !n.Internal {
		t.Error("network not internal after Apply")
	}
	after := containerIDs(t, e.c, st.Project)["btcpay"]
	if after == before {
		t.Error("btcpay kept its container")
	}
	info, err := e.c.ContainerInspect(ctx, after)
	if err != nil {
		t.Fatal(err)
	}
	if ep := info.NetworkSettings.Networks[st.NetworkName("btcpay")]; ep == nil || ep.NetworkID != n.ID {
		t.Errorf("btcpay not on the new network: %v", info.NetworkSettings.Networks)
	}
	if res := e.apply(t, st); res.Mutations != 0 {
		t.Errorf("third Apply: %+v; want no mutations", res)
	}
}

// TestImagePin: an image whose ID is not the recipe's pin is refused before
// anything is created; the right pin (the image ID of a locally made image)
// applies.
func TestImagePin(t *testing.T) {
	e := newDemoEnv(t)
	st := e.render(t, "btcpay")
	info, err := e.c.ImageInspect(context.Background(), "ssbuild-demo/postgres:15")
	if err != nil {
		t.Fatal(err)
	}
	pin := func(digest string) { // the recipe pins the image of both PostgreSQL services
		for i := range st.Services {
			if strings.HasPrefix(st.Services[i].Image, "ssbuild-demo/postgres:") {
				st.Services[i].ImageDigest = digest
			}
		}
	}
	pin("sha256:" + strings.Repeat("0", 64))
	res, err := Apply(context.Background(), e.c, st, progress.Discard())
	if err == nil || !strings.Contains(err.Error(), "not the digest sha256:000") || res.Mutations != 0 {
		t.Fatalf("Apply with a wrong pin: %v (%d mutations); want a refusal naming the pin, no mutation", err, res.Mutations)
	}
	pin(info.ID)
	if res := e.apply(t, st); len(res.Created) != 3 {
		t.Fatalf("Apply with the right pin: %+v; want its 3 services created", res)
	}
}

// waitHealthy waits until n containers of the project report healthy.
func waitHealthy(t *testing.T, e *demoEnv, project string, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		obj, err := Inventory(context.Background(), e.c, project)
		if err != nil {
			t.Fatal(err)
		}
		healthy := 0
		var states []string
		for _, ct := range obj.Containers {
			if ct.Health == "healthy" {
				healthy++
			}
			states = append(states, ct.Service+"="+ct.State+"/"+ct.Health)
		}
		if healthy == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60s %d of %d containers healthy: %v", healthy, n, states)
		}
		time.Sleep(time.Second)
	}
}
