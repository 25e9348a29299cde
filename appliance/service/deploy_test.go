package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/cluster"
	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/lxdexec"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/appliance/service"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/configtest"
	"github.com/sovereign-stack/ssbuild/testkit/deploytest"
	"github.com/sovereign-stack/ssbuild/testkit/servicetest"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// asServiceEnv makes the test binary a host's service: the registry's
// dqlite opens its sockets from C threads, which only a process inside the
// host's network namespace puts there, so each host's service.Run is a
// process of its own in its host, as its systemd unit would start it.
const asServiceEnv = "SSBUILD_TEST_SERVICE_CONFIG"

func TestMain(m *testing.M) {
	if path := os.Getenv(asServiceEnv); path != "" {
		os.Exit(runService(path))
	}
	code := m.Run()
	deploytest.Cleanup()
	os.Exit(code)
}

// runService is `ssbuild appliance run --config path` in short: service.Run
// until SIGTERM, progress lines on stderr.
func runService(path string) int {
	a, err := config.Load(path)
	if err == nil {
		var secret []byte
		secret, err = config.ReadSecret(a.SecretFile)
		var c lxd.InstanceServer
		if err == nil {
			c, err = lxd.ConnectLXDUnix(filepath.Join(os.Getenv("LXD_DIR"), "unix.socket"), nil)
		}
		if err == nil {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
			defer stop()
			err = service.Run(ctx, service.Options{Host: cluster.Host{Config: a, Secret: secret, LXD: c, LXDDir: os.Getenv("LXD_DIR"),
				Progress: progress.New(os.Stderr, progress.Plain)}, DeployBackoff: 2 * time.Second,
				// The test asks for its replica pass; a periodic one
				// would freeze instances while others are measured.
				ReplicaInterval: time.Hour})
			if ctx.Err() != nil {
				err = nil
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestFirstBootDeploysDemo is issue 6's first boot end to end on three
// bed hosts (a fourth joins later): each host's own service forms the
// cluster and the registry,
// and the initiator, whose appliance.yaml has a deploy section as the
// installer writes it, deploys the demo recipe by itself. While its recipe
// file is missing, status shows the failed deploy as the host's last error
// and the service retries; once it is there, a user sees "deployed" in
// status and the sites answering on the www member's port 80; a fourth
// host from a later recipe revision joins while the site keeps answering;
// a restarted service deploys again with 0 mutations. Between, the cluster
// secret is rotated with the deployment's secrets in the registry: they
// still open, unchanged, on every member, restarted ones included.
func TestFirstBootDeploysDemo(t *testing.T) {
	img := deploytest.DemoImage(t)
	// host4 is added later by a new recipe revision: host1-3's configs
	// list three hosts, host4's four.
	bed := testbed.New(t, testbed.Options{Hosts: 4})
	hosts, secret := configtest.ForBed(t, bed)
	for _, h := range hosts[:3] {
		h.Config.Cluster.Members = h.Config.Cluster.Members[:3]
		data, err := config.Marshal(h.Config)
		if err == nil {
			err = os.WriteFile(h.Path, data, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()

	// The recipe file the installer writes to /etc/ssbuild/recipe.yaml: the
	// demo recipe with the bed's pool and network (deploy reads only
	// cluster.storage and cluster.networks from the cluster section; the
	// members it places instances on are LXD's, so the recipe's hosts
	// demo1-3 can stay as shipped while the bed's are host1-3).
	//
	// Issue 14's loss is the initiator's: btcpay (the database, the member
	// the failover below loses) is pinned to host1, the initiator, and www
	// to host2, so the sites answer through a survivor. The recipe names
	// its hosts as the bed does, so placement can name them.
	rec := deploytest.BedRecipe(t)
	rec.Installer.Hosts = slices.Clone(rec.Installer.Hosts)
	for i := range rec.Installer.Hosts {
		rec.Installer.Hosts[i].Name = hosts[i].Bed.Name
	}
	if rec.Cluster.Initiator != "" {
		rec.Cluster.Initiator = hosts[0].Bed.Name
	}
	rec.Deployments = slices.Clone(rec.Deployments)
	rec.Deployments[0].Instances.BTCPay.Host = hosts[0].Bed.Name
	rec.Deployments[0].Instances.WWW.Host = hosts[1].Bed.Name
	recipeFile, err := servicetest.WithDeploy(hosts, rec, img)
	if err != nil {
		t.Fatal(err)
	}
	// As the installer writes them, the joiners have a deploy section too,
	// without the base image (the initiator carries it).
	for _, h := range hosts[1:3] {
		h.Config.Deploy = &config.Deploy{Recipe: recipeFile}
		data, err := config.Marshal(h.Config)
		if err == nil {
			err = os.WriteFile(h.Path, data, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	init := hosts[0]
	project := deploytest.BedRecipe(t).Deployments[0].Project()
	// Upgrade in place: the initiator holds the secrets file an older
	// ssbuild's first-boot deploy wrote; the registry takes it over.
	older := olderSecretsFile(t, init, project)

	// The recipe file is missing at first: the deploy fails, status says
	// why, and the service retries (and serves the registry meanwhile).
	if err := os.Rename(recipeFile, recipeFile+".later"); err != nil {
		t.Fatal(err)
	}
	// So is the base image: once the recipe is there, the deploy starts
	// its revision and fails, which any member's status shows from the
	// registry.
	if err := os.Rename(img, img+".later"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Rename(img+".later", img) })

	log := &serviceLog{t: t}
	services := make([]*servicetest.Process, len(hosts))
	for i, h := range hosts {
		services[i] = &servicetest.Process{Host: h, Line: log.add,
			Command: func(ctx context.Context, h configtest.Host) *exec.Cmd {
				cmd := h.Bed.Command(ctx, os.Args[0])
				cmd.Env = append(cmd.Env, asServiceEnv+"="+h.Path)
				return cmd
			}}
	}
	t.Cleanup(func() {
		for _, s := range services {
			if err := s.Stop(); err != nil {
				t.Error(err)
			}
		}
		if strings.Contains(log.String(), string(secret)) {
			t.Error("the cluster secret appears in the services' output")
		}
	})
	began := time.Now()
	for _, s := range services[:3] {
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	failing := waitStatus(t, ctx, init, 10*time.Minute, "serving with the failed deploy as its last error", func(hs service.HostStatus) bool {
		return hs.Source == service.FromRegistry && hs.Step == string(service.StepServing) &&
			strings.Contains(hs.LastError, "deploy (attempt") && strings.Contains(hs.LastError, recipeFile)
	})
	t.Logf("status with the recipe file missing: %s, last error %q", failing.Step, failing.LastError)
	if err := os.Rename(recipeFile+".later", recipeFile); err != nil {
		t.Fatal(err)
	}
	failed := waitRegistryStatus(t, ctx, hosts[2], 5*time.Minute, "the deploy's revision failed on host1, with its error", func(r *service.Report) bool {
		for _, d := range r.Registry.Deployments {
			if d.Deployment == project && d.State == registry.RevisionFailed && d.Member == init.Bed.Name && strings.Contains(d.Error, "base image") {
				return true
			}
		}
		return false
	})
	if !strings.Contains(failed, "Deployments (from the registry):\n  "+project+"  revision 1  failed on host1") || !strings.Contains(failed, "last error: base image") {
		t.Errorf("host3's status does not show the initiator's failed deploy:\n%s", failed)
	}
	fixed := time.Now()
	if err := os.Rename(img+".later", img); err != nil {
		t.Fatal(err)
	}
	st := waitDeployed(t, ctx, init, began, 20*time.Minute)
	t.Logf("figure: services started to the initiator's status deployed: %s, %s of it after the base image came (%s)",
		time.Since(began).Round(time.Second), time.Since(fixed).Round(time.Second), st.Detail)
	if st.LastError != "" {
		t.Errorf("deployed, but the last error is still %q", st.LastError)
	}

	r := service.Status(ctx, init.Config, init.Bed.LXD(), nil)
	var text strings.Builder
	if err := r.Write(&text, time.Now()); err != nil {
		t.Fatal(err)
	}
	t.Logf("status:\n%s", text.String())
	for _, want := range []string{"host1  deployed", "Hosts (from the registry)"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("status lacks %q", want)
		}
	}
	// The joiners, once the lease is theirs, find the recipe deployed by
	// host1 since they started and deploy nothing.
	for _, h := range hosts[1:3] {
		hs := waitStatus(t, ctx, h, 3*time.Minute, "deployed by host1", func(hs service.HostStatus) bool {
			return hs.Step == string(service.StepDeployed) && strings.Contains(hs.Detail, project+" revision 1 by host1")
		})
		t.Logf("%s: %s (%s)", h.Bed.Name, hs.Step, hs.Detail)
	}
	for _, h := range hosts[1:3] {
		if strings.Contains(log.String(), h.Bed.Name+": deploying ") {
			t.Errorf("%s deployed too, not only the lease holder host1", h.Bed.Name)
		}
	}

	www := wwwMember(t, bed, project)
	for host, want := range map[string]string{
		"demo.example": "ghost demo.example", "www.blog.example": "ghost blog.example",
		"relay.blog.example":  "nostr-relay blog.example",
		"btcpay.demo.example": "btcpay demo.example", // the btcpay instance, through the www proxy
	} {
		if got := askSite(t, ctx, bed, www, host); got != want {
			t.Errorf("port 80 of %s for %s answered %q, want %q", www.Name, host, got, want)
		}
	}
	set := checkSecretsInRegistry(t, ctx, hosts[:3], project, older)
	for _, n := range set.Names() {
		if v, _ := set.Get(n); strings.Contains(log.String(), v) {
			t.Errorf("the deployment's secret %s appears in the service's output", n)
		}
	}

	// `ssbuild cluster rotate-secret` with the deployment's secrets in the
	// registry: every member takes the new secret, and the secrets still
	// open, the same set, on every running member. host4, not a member
	// yet, gets the new secret in its file as a new stick would; the
	// restarts below open the data key with the new secret.
	before := map[string][]byte{}
	for _, h := range hosts[:3] {
		b, err := os.ReadFile(h.Config.SecretFile)
		if err != nil {
			t.Fatal(err)
		}
		before[h.Bed.Name] = b
	}
	newSecretFile := filepath.Join(t.TempDir(), "new.secret")
	rotated := time.Now()
	rotate := hosts[1].Bed.Command(ctx, filepath.Join(filepath.Dir(img), "ssbuild"), "cluster", "rotate-secret",
		"--config", hosts[1].Path, "--out", newSecretFile)
	var rotateErr bytes.Buffer
	rotate.Stderr = &rotateErr
	rotateOut, err := rotate.Output()
	log.add(string(rotateOut) + rotateErr.String())
	if err != nil || !strings.Contains(string(rotateOut), "1 older wrappings removed") {
		t.Errorf("cluster rotate-secret with sealed deployment secrets: %v\n%s%s", err, rotateOut, rotateErr.String())
	}
	t.Logf("figure: cluster rotate-secret on 3 members with the deployment's secrets: %s", time.Since(rotated).Round(time.Millisecond))
	newSecret, err := config.ReadSecret(newSecretFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts[:3] {
		if b, err := config.ReadSecret(h.Config.SecretFile); err != nil || !bytes.Equal(b, newSecret) || bytes.Equal(b, before[h.Bed.Name]) {
			t.Errorf("%s does not hold the new cluster secret after the rotation (%v)", h.Bed.Name, err)
		}
	}
	if err := os.Remove(hosts[3].Config.SecretFile); err != nil {
		t.Fatal(err)
	}
	if err := config.WriteSecret(hosts[3].Config.SecretFile, newSecret); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if strings.Contains(log.String(), string(newSecret)) {
			t.Error("the new cluster secret appears in the output of the services or ssbuild")
		}
	})
	if again := checkSecretsInRegistry(t, ctx, hosts[:3], project, older); again.Digest() != set.Digest() {
		t.Error("the deployment's secrets changed with the cluster secret rotation")
	}

	// A manual `ssbuild deploy` on another member uses the same secrets:
	// every service stays as it is (0 mutations), and the revision records
	// that member.
	manual := time.Now()
	other := hosts[1]
	// Its --state-dir holds the second set an older `ssbuild deploy` made
	// (the bug this fixes): it is handed to the registry, whose values win,
	// and removed.
	cliState := t.TempDir()
	if _, err := secrets.Ensure(cliState, project, set.Names()); err != nil {
		t.Fatal(err)
	}
	out := runCLI(t, ctx, other, img, log, "deploy", "--json", "--config", other.Path, "--recipe", recipeFile, "--image", img, "--state-dir", cliState)
	var rep deploy.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("ssbuild deploy --json: %v\n%s", err, out)
	}
	t.Logf("figure: ssbuild deploy on %s after the first boot's: %s, %d mutations", other.Bed.Name, time.Since(manual).Round(time.Second), rep.Mutations)
	if rep.Mutations != 0 {
		t.Errorf("ssbuild deploy on %s made %d mutations (another set of secrets?): %+v", other.Bed.Name, rep.Mutations, rep.Instances)
	}
	if _, err := os.Stat(secrets.File(cliState, project)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the older `ssbuild deploy` secrets file is still there (%v)", err)
	}
	if again := checkSecretsInRegistry(t, ctx, hosts[:3], project, older); again.Digest() != set.Digest() {
		t.Error("ssbuild deploy changed the deployment's secrets")
	}
	revs, err := (&deploystate.Client{Socket: filepath.Join(other.Config.StateDir, service.SocketName)}).History(ctx, project)
	if err != nil {
		t.Fatal(err)
	}
	if len(revs) != 1 || revs[0].State != registry.RevisionDeployed || revs[0].Member != other.Bed.Name || revs[0].Error != "" || revs[0].EndedAt.Before(manual) {
		t.Errorf("revisions after ssbuild deploy: %+v; want revision 1 deployed by %s", revs, other.Bed.Name)
	}

	// A fourth host from a later recipe revision joins while the sites
	// keep answering (asked every half second meanwhile).
	stopAsking := keepAsking(ctx, bed, www, "demo.example", "ghost demo.example")
	added := time.Now()
	if err := services[3].Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, ctx, hosts[3], 5*time.Minute, "host4 serving", func(hs service.HostStatus) bool {
		return hs.Source == service.FromRegistry && hs.Step == string(service.StepServing) && hs.Updated.After(added)
	})
	t.Logf("figure: host4's service start to serving, sites answering meanwhile: %s", time.Since(added).Round(time.Second))
	time.Sleep(2 * time.Second)
	if failed := stopAsking(); len(failed) > 0 {
		t.Errorf("demo.example failed %d times while host4 joined: %v", len(failed), failed)
	}
	if m, _, err := init.Bed.LXD().GetClusterMember("host4"); err != nil || m.Status != "Online" {
		t.Errorf("host4 is not an online member: %+v, %v", m, err)
	}

	// systemctl restart: the service reconciles again, changing nothing
	// (host4 is a member now: instances stay where they are).
	if err := services[0].Stop(); err != nil {
		t.Error(err)
	}
	restarted := time.Now()
	if err := services[0].Start(ctx); err != nil {
		t.Fatal(err)
	}
	st = waitDeployed(t, ctx, init, restarted, 10*time.Minute)
	t.Logf("figure: restarted initiator to deployed again: %s (%s)", time.Since(restarted).Round(time.Second), st.Detail)
	if !strings.Contains(st.Detail, " 0 mutations") {
		t.Errorf("the re-deploy after a restart: %q, want 0 mutations", st.Detail)
	}
	if got := askSite(t, ctx, bed, www, "demo.example"); got != "ghost demo.example" {
		t.Errorf("after the restart demo.example answered %q", got)
	}
	rebootBTCPay(t, ctx, init, services[0], project)

	// A following revision can use host4: it lists host4 and enables the
	// clams instance with host: host4. `ssbuild deploy` on host4 itself
	// creates it there; www and btcpay stay on their members and the site
	// keeps answering meanwhile.
	t.Run("a following revision places its new instance on host4", func(t *testing.T) {
		before := instanceMembers(t, init.Bed, project)
		rec, err := recipes.Load(recipeFile)
		if err != nil {
			t.Fatal(err)
		}
		rec.Installer.Hosts = append(rec.Installer.Hosts, recipes.Host{Name: "host4", MAC: "02:5e:00:00:01:04", Address: "10.99.0.14/24"})
		clams := rec.Deployments[0].Instances.BTCPay
		clams.Host = "host4"
		rec.Deployments[0].Instances.Clams = clams
		data, err := recipes.Marshal(rec)
		if err == nil {
			err = os.WriteFile(recipeFile, data, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
		stopAsking := keepAsking(ctx, bed, www, "demo.example", "ghost demo.example")
		placed := time.Now()
		out := runCLI(t, ctx, hosts[3], img, log, "deploy", "--json", "--config", hosts[3].Path, "--recipe", recipeFile, "--image", img, "--state-dir", cliState)
		t.Logf("figure: ssbuild deploy on host4 of the revision adding clams on host4: %s", time.Since(placed).Round(time.Second))
		if failed := stopAsking(); len(failed) > 0 {
			t.Errorf("demo.example failed %d times during the deploy: %v", len(failed), failed)
		}
		var rep deploy.Report
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("ssbuild deploy --json: %v\n%s", err, out)
		}
		after := instanceMembers(t, init.Bed, project)
		if after["clams"] != "host4 Running" {
			t.Errorf("clams is %q, want running on host4 (instances %v)", after["clams"], after)
		}
		for name, where := range before {
			if after[name] != where {
				t.Errorf("%s moved or stopped: %q before, %q after", name, where, after[name])
			}
		}
		for _, in := range rep.Instances {
			if in.Name != "clams" && (in.Created || len(in.Services.Created)+len(in.Services.Recreated) > 0) {
				t.Errorf("the deploy changed %s: %+v", in.Name, in)
			}
		}
		if got := askSite(t, ctx, bed, www, "btcpay.demo.example"); got != "btcpay demo.example" {
			t.Errorf("btcpay.demo.example answered %q after the deploy", got)
		}
	})

	// Continuous protection (issue 16): a replica pass (the one the
	// replica lease's holder runs every backup.snapshots.minutes, asked
	// for now) copies each instance's volumes to another member; then the
	// member running btcpay and its database is lost whole (its service,
	// its LXD daemon, its network), and host replace on a survivor brings
	// btcpay up there from the replica. A row written before the pass is
	// back; one written after it is the data lost.
	dead, survivors := failover(t, ctx, bed, hosts, services, project, img, log)
	www = wwwMember(t, bed, project)
	if got := askSite(t, ctx, bed, www, "btcpay.demo.example"); got != "btcpay demo.example" {
		t.Errorf("btcpay.demo.example answered %q after the failover", got)
	}
	recoverNode(t, ctx, survivors[0], project, recipeFile, img, log)

	// The initiator lost, the owner changes the recipe (gitea added to
	// demo.example) and deploys it with `ssbuild deploy` on a survivor: it
	// deploys with the same secrets, not waiting for the lost member; btcpay
	// keeps its password, and the registry records revision 3 by that
	// member.
	rec, err = recipes.Load(recipeFile)
	if err != nil {
		t.Fatal(err)
	}
	rec.Deployments[0].Sites[0].Services = append(rec.Deployments[0].Sites[0].Services, "gitea")
	data, err := recipes.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	changedFile := filepath.Join(filepath.Dir(recipeFile), "changed.yaml")
	if err := os.WriteFile(changedFile, data, 0o644); err != nil {
		t.Fatal(err)
	}
	// A survivor the first recipe listed (host4 came later).
	si := 2
	if hosts[si].Bed == dead.Bed {
		si = 1
	}
	survivor, survivorService := hosts[si], services[si]
	changed := time.Now()
	out = runCLI(t, ctx, survivor, img, log, "deploy", "--json", "--config", survivor.Path, "--recipe", changedFile, "--image", img, "--state-dir", cliState)
	rep = deploy.Report{}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("ssbuild deploy --json: %v\n%s", err, out)
	}
	t.Logf("figure: ssbuild deploy of the changed recipe on the survivor %s, %s lost: %s, %d mutations",
		survivor.Bed.Name, dead.Bed.Name, time.Since(changed).Round(time.Second), rep.Mutations)
	if rep.Mutations == 0 {
		t.Errorf("ssbuild deploy of the changed recipe on %s changed nothing: %+v", survivor.Bed.Name, rep.Instances)
	}
	if got := askSite(t, ctx, bed, www, "git.demo.example"); got != "gitea demo.example" {
		t.Errorf("git.demo.example answered %q after the survivor's deploy", got)
	}
	// The survivor's service restarts (a reboot): its own recipe file is
	// the older revision its stick carried, yet it reconciles to the
	// cluster's current recipe, changing nothing; gitea stays.
	if err := survivorService.Stop(); err != nil {
		t.Error(err)
	}
	restarted = time.Now()
	if err := survivorService.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st = waitDeployed(t, ctx, survivor, restarted, 10*time.Minute)
	t.Logf("figure: the survivor's service restarted, its file an older revision, to deployed: %s (%s)", time.Since(restarted).Round(time.Second), st.Detail)
	if !strings.Contains(st.Detail, " 0 mutations") || !strings.Contains(log.String(), survivor.Bed.Name+": deploying the cluster's current recipe") {
		t.Errorf("the restarted survivor did not reconcile to the cluster's current recipe with 0 mutations: %q", st.Detail)
	}
	if got := askSite(t, ctx, bed, www, "git.demo.example"); got != "gitea demo.example" {
		t.Errorf("git.demo.example answered %q after the survivor's restart: did it deploy its older file?", got)
	}
	if again := checkSecretsInRegistry(t, ctx, survivors, project, older); again.Digest() != set.Digest() {
		t.Error("the survivor's deploy changed the deployment's secrets")
	}
	out = runCLI(t, ctx, survivor, img, log, "show", "--history", "--json", "--config", survivor.Path, "--recipe", recipeFile, "--state-dir", cliState)
	var shown deploy.State
	if err := json.Unmarshal([]byte(out), &shown); err != nil {
		t.Fatalf("ssbuild show --history --json: %v\n%s", err, out)
	}
	// Revision 1's last deploy is the initiator's restart, or host
	// replace's on the member that ran it; revision 2 (clams on host4) is
	// host4's, or host replace's (the same recipe then), which failed on
	// the Lightning node it fenced (recovered since).
	replacer := survivors[0]
	fencedByReplace := func(r deploy.RevisionState) bool {
		return r.State == registry.RevisionFailed && r.Member == replacer.Bed.Name && strings.Contains(r.Error, "Lightning node "+project+"-lightning not started")
	}
	if h := shown.Deployments[0].History; len(h) != 3 || h[0].State != registry.RevisionDeployed ||
		(h[0].Member != init.Bed.Name && h[0].Member != replacer.Bed.Name) ||
		(h[1].State != registry.RevisionDeployed && !fencedByReplace(h[1])) || h[1].Member == "" || h[1].Member == dead.Bed.Name || !strings.Contains(h[1].Recipe, "host: host4") ||
		h[2].State != registry.RevisionDeployed || h[2].Member != survivor.Bed.Name || h[2].RecipeDigest == h[1].RecipeDigest ||
		!strings.Contains(h[2].Recipe, "gitea") {
		t.Errorf("show --history: %+v; want revision 1 by %s or %s, 2 (clams on host4) by a member still up (failed only on the fenced Lightning node when by host replace) and 3 (with gitea) by %s, all deployed", h, init.Bed.Name, replacer.Bed.Name, survivor.Bed.Name)
	}
	t.Logf("ssbuild show --history on %s:\n%s", survivor.Bed.Name,
		runCLI(t, ctx, survivor, img, log, "show", "--history", "--config", survivor.Path, "--recipe", recipeFile, "--state-dir", cliState))

	for _, n := range set.Names() {
		if v, _ := set.Get(n); strings.Contains(log.String(), v) {
			t.Errorf("the deployment's secret %s appears in the output of the services or ssbuild", n)
		}
	}

	// down --purge through the registry removes its secrets there.
	runCLI(t, ctx, survivor, img, log, "down", project, "--purge", "--yes", "--config", survivor.Path, "--recipe", recipeFile, "--state-dir", cliState)
	if has, err := (&deploystate.Client{Socket: filepath.Join(survivor.Config.StateDir, service.SocketName)}).Has(ctx, project); has || err != nil {
		t.Errorf("after down --purge the registry still has the secrets of %s (%v)", project, err)
	}
}

// keepAsking asks port 80 of the www member for site every half second
// until the returned stop, which says every failure and wrong answer.
func keepAsking(ctx context.Context, bed *testbed.Bed, www *testbed.Host, site, want string) (stop func() []string) {
	asking, cancel := context.WithCancel(ctx)
	failures := make(chan []string, 1)
	go func() {
		var failed []string
		for asking.Err() == nil {
			if body, err := askOnce(asking, bed, www, site); err != nil && asking.Err() == nil {
				failed = append(failed, err.Error())
			} else if err == nil && body != want {
				failed = append(failed, "answered "+body)
			}
			time.Sleep(500 * time.Millisecond)
		}
		failures <- failed
	}()
	return func() []string {
		cancel()
		return <-failures
	}
}

// instanceMembers is "member status" per instance of the project.
func instanceMembers(t *testing.T, h *testbed.Host, project string) map[string]string {
	t.Helper()
	ins, err := h.LXD().UseProject(project).GetInstances(api.InstanceTypeAny)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, in := range ins {
		out[in.Name] = in.Location + " " + in.Status
	}
	return out
}

// runCLI runs the ssbuild binary the demo image was built with (static,
// from this source) inside a bed host, as its owner would, and returns
// its standard output; its standard error goes to the log (leak check).
func runCLI(t *testing.T, ctx context.Context, h configtest.Host, img string, log *serviceLog, args ...string) string {
	t.Helper()
	bin := filepath.Join(filepath.Dir(img), "ssbuild")
	cmd := h.Bed.Command(ctx, bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		log.add(h.Bed.Name + ": ssbuild " + args[0] + ": " + line)
	}
	log.add(string(out))
	if err != nil {
		t.Fatalf("%s: ssbuild %s: %v", h.Bed.Name, strings.Join(args, " "), err)
	}
	return string(out)
}

// waitRegistryStatus polls the host's status until ok says the registry's
// view is what is wanted, and returns the status as text.
func waitRegistryStatus(t *testing.T, ctx context.Context, h configtest.Host, timeout time.Duration, what string, ok func(*service.Report) bool) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := service.Status(ctx, h.Config, h.Bed.LXD(), nil)
		if r.Registry != nil && ok(r) {
			var b strings.Builder
			if err := r.Write(&b, time.Now()); err != nil {
				t.Fatal(err)
			}
			return b.String()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not %s within %s; registry: %+v, %s", h.Bed.Name, what, timeout, r.Registry, r.RegistryError)
		}
		time.Sleep(time.Second)
	}
}

// olderSecretsFile writes the deployment's secrets file as an older
// ssbuild's first-boot deploy did (<stateDir>/deploy, 0600) and returns it.
func olderSecretsFile(t *testing.T, h configtest.Host, project string) secrets.Set {
	t.Helper()
	names, err := stack.SecretNames(deploytest.BedRecipe(t).Deployments[0])
	if err != nil {
		t.Fatal(err)
	}
	set, err := secrets.Ensure(filepath.Join(h.Config.StateDir, service.DeployStateDir), project, names)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// checkSecretsInRegistry: every member's service answers the same set,
// the older file's, which is gone; the running btcpay service has its
// value; no registry node's files hold a value in clear. Sets are compared
// by digest, never printed.
func checkSecretsInRegistry(t *testing.T, ctx context.Context, hosts []configtest.Host, project string, older secrets.Set) secrets.Set {
	t.Helper()
	var set secrets.Set
	for _, h := range hosts {
		c := &deploystate.Client{Socket: filepath.Join(h.Config.StateDir, service.SocketName)}
		got, err := c.Ensure(ctx, project, nil)
		if err != nil {
			t.Fatalf("%s: the deployment's secrets: %v", h.Bed.Name, err)
		}
		if got.Digest() != older.Digest() {
			t.Errorf("%s: the registry's secrets of %s are not the older file's (%d and %d values)", h.Bed.Name, project, got.Len(), older.Len())
		}
		set = got
	}
	file := secrets.File(filepath.Join(hosts[0].Config.StateDir, service.DeployStateDir), project)
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the older secrets file %s is still there (%v)", file, err)
	}
	want, _ := set.Get("btcpay-admin")
	pc := hosts[0].Bed.LXD().UseProject(project)
	out, _, code, err := lxdexec.Run(pc, "btcpay", "docker", "exec", project+"-btcpay", "/bin/sh", "-c", "echo \"$ADMIN_PASSWORD\"")
	if err != nil || code != 0 || strings.TrimSpace(out) != want {
		t.Errorf("the btcpay service's ADMIN_PASSWORD is not the registry's btcpay-admin (exec: code %d, %v)", code, err)
	}
	for _, h := range hosts {
		dir := filepath.Join(h.Config.StateDir, service.RegistryDir)
		err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, n := range set.Names() {
				if v, _ := set.Get(n); bytes.Contains(data, []byte(v)) {
					t.Errorf("%s: the registry file %s holds the secret %s in clear", h.Bed.Name, path, n)
				}
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s: search the registry's files: %v", h.Bed.Name, err)
		}
	}
	return set
}

func waitDeployed(t *testing.T, ctx context.Context, h configtest.Host, since time.Time, timeout time.Duration) service.HostStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := servicetest.WaitDeployed(ctx, h, since)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitStatus polls the host's status until ok says it is what is wanted.
func waitStatus(t *testing.T, ctx context.Context, h configtest.Host, timeout time.Duration, what string, ok func(service.HostStatus) bool) service.HostStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last service.HostStatus
	for {
		for _, hs := range service.Status(ctx, h.Config, h.Bed.LXD(), nil).Hosts {
			if hs.Name == h.Bed.Name {
				if ok(hs) {
					return hs
				}
				last = hs
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not %s within %s; last: %+v", h.Bed.Name, what, timeout, last)
		}
		time.Sleep(time.Second)
	}
}

// wwwMember is the bed host the deployment's www instance runs on.
func wwwMember(t *testing.T, bed *testbed.Bed, project string) *testbed.Host {
	t.Helper()
	var in *api.Instance
	err := fmt.Errorf("no bed host's LXD answers")
	for _, h := range bed.Hosts {
		if c := h.LXD(); c != nil { // not a host the test killed
			if in, _, err = c.UseProject(project).GetInstance("www"); err == nil {
				break
			}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range bed.Hosts {
		if h.Name == in.Location {
			return h
		}
	}
	t.Fatalf("www runs on %q, not a bed host", in.Location)
	return nil
}

// askSite is the body of site's answer on port 80 of the www member.
func askSite(t *testing.T, ctx context.Context, bed *testbed.Bed, at *testbed.Host, site string) string {
	t.Helper()
	_, body, err := deploytest.AskSite(ctx, bed, at.Name, "http://"+site+"/")
	if err != nil {
		t.Error(err)
	}
	return body
}

// askOnce asks port 80 of member at for site once (2 s), from another
// bed host: a failure is not retried, so a blip shows.
func askOnce(ctx context.Context, bed *testbed.Bed, at *testbed.Host, site string) (string, error) {
	from := bed.Hosts[0]
	if from == at {
		from = bed.Hosts[1]
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return from.DialContext(ctx, network, net.JoinHostPort(at.Address.String(), "80"))
		}}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+site+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return strings.TrimSpace(string(b)), nil
}

// serviceLog keeps every line the services printed (for the leak checks)
// and shows them in the test log.
type serviceLog struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (l *serviceLog) add(line string) {
	l.t.Logf("%s", line)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(line + "\n")
}

func (l *serviceLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// failover is issue 16's host loss: rows written before and after a
// replica pass, the member running btcpay (the database) lost whole, then
// `ssbuild host replace` on a survivor, which says the replica's age and
// brings btcpay up on a survivor from it. It returns the lost host and the
// survivors (the first one's LXD answers), and logs the figures.
func failover(t *testing.T, ctx context.Context, bed *testbed.Bed, hosts []configtest.Host, services []*servicetest.Process,
	project, img string, log *serviceLog) (dead configtest.Host, survivors []configtest.Host) {
	t.Helper()
	in, _, err := hosts[0].Bed.LXD().UseProject(project).GetInstance("btcpay")
	if err != nil {
		t.Fatal(err)
	}
	deadIndex := slices.IndexFunc(hosts, func(h configtest.Host) bool { return h.Bed.Name == in.Location })
	if deadIndex < 0 {
		t.Fatalf("btcpay runs on %q, not a bed host", in.Location)
	}
	dead = hosts[deadIndex]
	for _, h := range hosts {
		if h.Bed != dead.Bed {
			survivors = append(survivors, h)
		}
	}
	at := survivors[0]
	psql := func(sql string) string {
		t.Helper()
		out, errOut, code, err := lxdexec.Run(at.Bed.LXD().UseProject(project), "btcpay", "docker", "exec", project+"-btcpay",
			"psql", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql)
		if err != nil || code != 0 {
			t.Fatalf("psql %q in btcpay: code %d, %v: %s", sql, code, err, errOut)
		}
		return out
	}
	psql("INSERT INTO pages (body) VALUES ('written before the replica') ON CONFLICT DO NOTHING")

	// The pass runs on whichever member takes the replica lease.
	passed := time.Now()
	reps, err := service.ReplicateNow(ctx, at.Config)
	if err != nil {
		t.Fatalf("replica pass on %s: %v", at.Bed.Name, err)
	}
	t.Logf("figure: replica pass of %d instances: %s", len(reps), time.Since(passed).Round(100*time.Millisecond))
	for _, r := range reps {
		t.Logf("figure: replica of %s/%s (%s) from %s on %s: %s, frozen %s", r.Project, r.Instance, strings.Join(r.Volumes, ", "),
			r.From, r.To, r.Took.Round(100*time.Millisecond), r.Frozen.Round(time.Millisecond))
	}
	// A second pass sends only what changed.
	again := time.Now()
	if reps, err = service.ReplicateNow(ctx, at.Config); err != nil {
		t.Fatalf("second replica pass: %v", err)
	}
	t.Logf("figure: second replica pass (refresh): %s", time.Since(again).Round(100*time.Millisecond))
	var replicaAt time.Time
	for _, r := range reps {
		if r.Instance == "btcpay" && r.Project == project {
			replicaAt = r.At
			if r.To == dead.Bed.Name || r.From != dead.Bed.Name {
				t.Errorf("btcpay's replica: from %s to %s, want from %s to another member", r.From, r.To, dead.Bed.Name)
			}
		}
	}
	if replicaAt.IsZero() {
		t.Fatalf("no replica of btcpay in the pass: %+v", reps)
	}
	psql("INSERT INTO pages (body) VALUES ('written after the replica') ON CONFLICT DO NOTHING")

	// The registry survives the loss of any one member only with three
	// voters (with one, as when a joiner's promotion was cut short, losing
	// that member loses the registry).
	waitRegistryStatus(t, ctx, at, 2*time.Minute, "three registry voters", func(r *service.Report) bool {
		voters := 0
		for _, m := range r.Registry.Members {
			if m.Role == "voter" {
				voters++
			}
		}
		return voters == 3
	})
	// The member is lost whole: its service, its LXD, its network.
	services[deadIndex].Kill()
	if err := dead.Bed.KillLXD(); err != nil {
		t.Fatal(err)
	}
	if err := dead.Bed.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	t.Logf("%s lost (service, LXD and network) %s after btcpay's replica", dead.Bed.Name, killed.Sub(replicaAt).Round(time.Millisecond))
	for {
		m, _, err := at.Bed.LXD().GetClusterMember(dead.Bed.Name)
		if err == nil && m.Status != "Online" {
			break
		}
		if time.Since(killed) > 3*time.Minute {
			t.Fatalf("%s still online in LXD 3 minutes after it was lost (%v)", dead.Bed.Name, err)
		}
		time.Sleep(time.Second)
	}
	offline := time.Since(killed)
	// Without --yes: what each lost instance comes back with, nothing changed.
	dry := runCLI(t, ctx, at, img, log, "host", "replace", dead.Bed.Name, "--config", at.Path)
	if !strings.Contains(dry, project+"/btcpay: replica of its volumes on ") || !strings.Contains(dry, "what it wrote since then is lost") {
		t.Errorf("host replace without --yes does not say btcpay's replica and its age:\n%s", dry)
	}
	replaced := time.Now()
	out := runCLI(t, ctx, at, img, log, "host", "replace", dead.Bed.Name, "--yes", "--config", at.Path)
	if !strings.Contains(out, project+"/btcpay: up on ") {
		t.Errorf("host replace --yes did not bring btcpay up:\n%s", out)
	}
	if !strings.Contains(out, project+"/btcpay: its Lightning node stays down") || !strings.Contains(out, "ssbuild lightning recover "+project+" btcpay --yes") {
		t.Errorf("host replace --yes does not say that btcpay's Lightning node, from a periodic copy, stays down until recovered:\n%s", out)
	}
	nin, _, err := at.Bed.LXD().UseProject(project).GetInstance("btcpay")
	if err != nil || nin.Location == dead.Bed.Name {
		t.Fatalf("btcpay after host replace: %v on %q", err, nin.Location)
	}
	answered := time.Now()
	if _, body, err := deploytest.AskSite(ctx, bed, wwwMember(t, bed, project).Name, "http://btcpay.demo.example/"); err != nil || body != "btcpay demo.example" {
		t.Errorf("btcpay.demo.example after the failover: %q, %v", body, err)
	}
	since := time.Since(killed)
	t.Logf("figure: %s lost → LXD sees it offline %s → host replace --yes %s → btcpay.demo.example answers from %s: %s after the loss (goal 10 min)",
		dead.Bed.Name, offline.Round(time.Second), answered.Sub(replaced).Round(time.Second), nin.Location, since.Round(time.Second))
	if since > 10*time.Minute {
		t.Errorf("the site answered %s after the member was lost, more than 10 minutes", since.Round(time.Second))
	}
	// Docker restarts the database from the replica's state (PostgreSQL
	// recovers as after a power cut); it may still be starting.
	var rows string
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(2 * time.Second) {
		out, errOut, code, err := lxdexec.Run(at.Bed.LXD().UseProject(project), "btcpay", "docker", "exec", project+"-btcpay",
			"psql", "-tA", "-c", "SELECT body FROM pages ORDER BY id")
		if err == nil && code == 0 {
			rows = out
			break
		}
		if time.Now().After(deadline) {
			ps, _, _, _ := lxdexec.Run(at.Bed.LXD().UseProject(project), "btcpay", "docker", "ps", "-a")
			logs, logsErr, _, _ := lxdexec.Run(at.Bed.LXD().UseProject(project), "btcpay", "docker", "logs", "--tail", "20", project+"-btcpay-db")
			t.Fatalf("the restored database does not answer: code %d, %v: %s\ndocker ps -a:\n%s\nbtcpay-db's log:\n%s%s", code, err, errOut, ps, logs, logsErr)
		}
	}
	t.Logf("figure: the restored database answers %s after the loss", time.Since(killed).Round(time.Second))
	if !strings.Contains(rows, "written before the replica") {
		t.Errorf("the row written before the replica pass is lost: %q", rows)
	}
	lost := strings.Contains(rows, "written after the replica")
	t.Logf("figure: data loss: btcpay's replica was %s old when %s was lost (interval: backup.snapshots.minutes, default 15 min); the row written after it is back: %v (want false)",
		killed.Sub(replicaAt).Round(time.Millisecond), dead.Bed.Name, lost)
	if lost {
		t.Errorf("the row written after the replica is back: was btcpay copied from the lost member later? %q", rows)
	}
	return dead, survivors
}

// recoverNode: after host replace the btcpay instance runs from its
// replica, its Lightning node down (fenced: the replica's channel database
// is a periodic copy), also when the member's service saw the instance
// start. `ssbuild lightning recover` sets the channel database aside and
// starts the node from its seed with a new generation.
func recoverNode(t *testing.T, ctx context.Context, h configtest.Host, project, recipeFile, img string, log *serviceLog) {
	t.Helper()
	pc := h.Bed.LXD().UseProject(project)
	node := project + "-lightning"
	docker := func(args ...string) string {
		out, _, _, _ := lxdexec.Run(pc, "btcpay", append([]string{"docker"}, args...)...)
		return strings.TrimSpace(out)
	}
	if got := docker("inspect", "-f", "{{.State.Running}}", node); got != "false" {
		t.Errorf("after host replace btcpay's Lightning node, from the replica, is running=%q, want it down", got)
	}
	dry := runCLI(t, ctx, h, img, log, "lightning", "recover", project, "btcpay", "--config", h.Path, "--recipe", recipeFile)
	if !strings.Contains(dry, "Run again with --yes") || docker("inspect", "-f", "{{.State.Running}}", node) != "false" {
		t.Errorf("lightning recover without --yes: %q, or it started the node", dry)
	}
	began := time.Now()
	out := runCLI(t, ctx, h, img, log, "lightning", "recover", project, "btcpay", "--yes", "--config", h.Path, "--recipe", recipeFile)
	t.Logf("figure: ssbuild lightning recover: %s: %s", time.Since(began).Round(100*time.Millisecond), strings.TrimSpace(out))
	if !strings.Contains(out, "generation 2 -> 3") || !strings.Contains(out, "its channel database kept as *.set-aside-") {
		t.Errorf("lightning recover: %q, want generation 2 (host replace's) -> 3 and the channel database set aside", out)
	}
	if got := docker("inspect", "-f", "{{.State.Running}}", node); got != "true" {
		t.Errorf("after lightning recover the node is running=%q", got)
	}
	if f := docker("exec", node, "cat", "/root/.lightning/"+stack.FenceFile); !strings.Contains(f, `"generation":3`) {
		t.Errorf("after lightning recover the node's fence file holds %q, want generation 3", f)
	}
	if ls := docker("exec", node, "/bin/sh", "-c", "echo /root/.lightning/*/*"); !strings.Contains(ls, "lightningd.sqlite3.set-aside-") {
		t.Errorf("the replica's channel database was not set aside: %q", ls)
	}
}

// rebootBTCPay restarts the btcpay instance on the initiator twice. With
// the host's service running, the service sees LXD's event and starts the
// Lightning node after the fence check (dockerd brings back the services
// with a restart policy; the node has none). Then as a reboot: the
// service is stopped, the instance restarts and its node stays down; the
// service starts again and its reconcile starts the node. The node's
// generation never changes.
func rebootBTCPay(t *testing.T, ctx context.Context, h configtest.Host, svc *servicetest.Process, project string) {
	t.Helper()
	pc := h.Bed.LXD().UseProject(project)
	in, _, err := pc.GetInstance("btcpay")
	if err != nil || in.Location != h.Bed.Name {
		t.Fatalf("btcpay: %v, on %q; want it on %s", err, in.Location, h.Bed.Name)
	}
	node := project + "-lightning"
	running := func() (string, error) {
		out, errOut, code, err := lxdexec.Run(pc, "btcpay", "docker", "inspect", "-f", "{{.State.Running}}", node)
		if err == nil && code != 0 {
			err = fmt.Errorf("docker inspect: code %d: %s", code, strings.TrimSpace(errOut))
		}
		return strings.TrimSpace(out), err
	}
	fence := func() string {
		out, _, _, _ := lxdexec.Run(pc, "btcpay", "docker", "exec", node, "cat", "/root/.lightning/"+stack.FenceFile)
		return strings.TrimSpace(out)
	}
	before := fence()
	if got, err := running(); got != "true" || err != nil || before == "" {
		t.Fatalf("before the reboot the Lightning node is not running with its fence: %q, %v, fence %q", got, err, before)
	}
	restart := func() {
		t.Helper()
		op, err := pc.UpdateInstanceState("btcpay", api.InstanceStatePut{Action: "restart", Timeout: 60}, "")
		if err == nil {
			err = op.WaitContext(ctx)
		}
		if err != nil {
			t.Fatalf("restart btcpay: %v", err)
		}
	}
	// Polls until the node is said running (want "true") or, once dockerd
	// answers, said stopped (want "false").
	await := func(want string, within time.Duration) (string, error) {
		var got string
		var err error
		for deadline := time.Now().Add(within); ; time.Sleep(time.Second) {
			got, err = running()
			if (err == nil && (got == want || want == "false")) || time.Now().After(deadline) {
				return got, err
			}
		}
	}

	restarted := time.Now()
	restart()
	got, err := await("true", 3*time.Minute)
	if got != "true" {
		t.Errorf("with the host's service running, the Lightning node is %q (%v) after its instance restarted, want started again by the service", got, err)
	} else {
		t.Logf("figure: instance restart to its Lightning node running again (started by the service's LXD event watch): %s", time.Since(restarted).Round(time.Second))
	}
	if after := fence(); after != before {
		t.Errorf("the node's fence changed with an instance restart: %q, then %q", before, after)
	}

	if err := svc.Stop(); err != nil {
		t.Error(err)
	}
	restart()
	got, err = await("false", 2*time.Minute)
	if got != "false" {
		t.Fatalf("after the instance restart the Lightning node is %q (%v), want stopped: it has no restart policy", got, err)
	}
	booted := time.Now()
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st := waitDeployed(t, ctx, h, booted, 10*time.Minute)
	t.Logf("figure: after the reboot, service start to deployed with the Lightning node started: %s (%s)", time.Since(booted).Round(time.Second), st.Detail)
	if got, err := running(); got != "true" || err != nil {
		t.Errorf("after the service's reconcile the Lightning node is %q (%v), want running", got, err)
	}
	if after := fence(); after != before {
		t.Errorf("the node's fence changed with a reboot: %q, then %q", before, after)
	}
}
