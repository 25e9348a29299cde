package service_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/cluster"
	"github.com/sovereign-stack/ssbuild/appliance/service"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/configtest"
	"github.com/sovereign-stack/ssbuild/testkit/servicetest"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestHostLifecycle is issue 15 on four bed hosts, each running its own
// service process: host1-3 form the cluster from the first recipe
// revision; host4, whose appliance.yaml comes from a later revision that
// lists it, joins the formed cluster while the others keep running; host4
// is removed again, its container and volume moving with their data to
// another member; then the initiator is re-installed (power cut, its LXD, pool and state
// directories emptied, the same appliance.yaml and secret) and its service
// started again: it joins the existing cluster, its old member and
// registry node are replaced, and there is still one cluster, one
// bootstrap, one registry with one node and one row per host; last, host3
// dies, the operator replaces it (cluster.ReplaceDead, as `ssbuild host
// replace`) and the re-installed host3 joins as a new member.
func TestHostLifecycle(t *testing.T) {
	bed := testbed.New(t, testbed.Options{Hosts: 4})
	hosts, secret := configtest.ForBed(t, bed)
	// The first revision lists host1-3; host4's config keeps all four.
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
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
	waitCluster(t, ctx, hosts[1], []string{"host1", "host2", "host3"}, began)
	t.Logf("figure: three hosts formed, registry serving on each: %s", time.Since(began).Round(time.Second))

	t.Run("a fourth host from a later recipe revision joins", func(t *testing.T) {
		added := time.Now()
		if err := services[3].Start(ctx); err != nil {
			t.Fatal(err)
		}
		online := waitOnline(t, ctx, hosts[0], "host4")
		t.Logf("figure: host4's service start to member online: %s", online.Sub(added).Round(100*time.Millisecond))
		// The others kept running: their rows are written on, after host4 came.
		waitCluster(t, ctx, hosts[0], []string{"host1", "host2", "host3", "host4"}, added)
		t.Logf("figure: host4's service start to serving its registry node: %s", time.Since(added).Round(time.Second))
	})

	t.Run("host remove moves its instance with its data", func(t *testing.T) {
		began := time.Now()
		c := hosts[0].Bed.LXD()
		h4 := hosts[3]
		launchWithVolume(t, c, "host4", "box", "data")
		// The volume's data, where the dir pool keeps it on host4.
		file := filepath.Join(h4.Config.Cluster.Storage.Source, "custom", "default_data", "kept.txt")
		if err := os.WriteFile(file, []byte("written on host4\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		// The operator stops host4's service (it would join again while
		// the recipe lists it), then removes it from host1.
		if err := services[3].Stop(); err != nil {
			t.Fatal(err)
		}
		removed := time.Now()
		forget := func(ctx context.Context) error {
			return service.Forget(ctx, hosts[0].Config, "host4", h4.Config.Host.Address)
		}
		var out strings.Builder
		if err := cluster.RemoveHost(ctx, c, "host4", forget, progress.New(&out, progress.Plain)); err != nil {
			t.Fatalf("remove host4: %v\n%s", err, out.String())
		}
		t.Logf("%s", out.String())
		t.Logf("figure: host remove of a host with one instance and one volume: %s", time.Since(removed).Round(100*time.Millisecond))
		in, _, err := c.GetInstance("box")
		if err != nil {
			t.Fatal(err)
		}
		if in.Location == "host4" || in.Status != "Running" {
			t.Errorf("box after the removal: on %s, %s", in.Location, in.Status)
		}
		var to configtest.Host
		for _, h := range hosts {
			if h.Bed.Name == in.Location {
				to = h
			}
		}
		got, err := os.ReadFile(filepath.Join(to.Config.Cluster.Storage.Source, "custom", "default_data", "kept.txt"))
		if err != nil || string(got) != "written on host4\n" {
			t.Errorf("the volume's data on %s: %q, %v", in.Location, got, err)
		}
		waitCluster(t, ctx, hosts[0], []string{"host1", "host2", "host3"}, removed)
		t.Logf("figure: subtest with launch: %s", time.Since(began).Round(time.Second))
	})
	t.Run("re-installed initiator joins the existing cluster", func(t *testing.T) {
		h1 := hosts[0]
		certBefore := clusterCert(t, hosts[1].Bed)
		wiped := time.Now()
		if err := h1.Bed.Wipe(ctx); err != nil {
			t.Fatal(err)
		}
		_ = services[0].Stop() // it died with the host
		for _, dir := range []string{h1.Config.StateDir, h1.Config.Cluster.Storage.Source} {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Mkdir(h1.Config.Cluster.Storage.Source, 0o711); err != nil {
			t.Fatal(err)
		}
		if err := services[0].Start(ctx); err != nil {
			t.Fatal(err)
		}
		waitCluster(t, ctx, hosts[1], []string{"host1", "host2", "host3"}, wiped)
		t.Logf("figure: re-installed initiator's start to serving again: %s", time.Since(wiped).Round(time.Second))
		for _, h := range hosts[:3] { // host4 was removed: it is no member
			if got := clusterCert(t, h.Bed); got != certBefore {
				t.Errorf("%s serves another cluster certificate: a second cluster", h.Bed.Name)
			}
		}
		out := log.String()
		if n := strings.Count(out, "host1: cluster-bootstrapped: bootstrapped"); n != 1 {
			t.Errorf("host1 bootstrapped %d times, want once", n)
		}
		if !strings.Contains(out, "removing the old member") || !strings.Contains(out, "forgot host1") {
			t.Errorf("no member removed host1's old member and registry node")
		}
		if strings.Contains(out, "already a member") {
			t.Errorf("host1 was answered 409 already a member")
		}
		r := service.Status(ctx, h1.Config, h1.Bed.LXD(), nil)
		if r.Registry == nil {
			t.Fatalf("host1's registry node does not answer: %s", r.RegistryError)
		}
	})

	t.Run("dead host replaced by the operator then re-installed", func(t *testing.T) {
		h1, h3 := hosts[0], hosts[2]
		c := h1.Bed.LXD()
		died := time.Now()
		if err := h3.Bed.Wipe(ctx); err != nil { // its disk is gone; it stays off for now
			t.Fatal(err)
		}
		_ = services[2].Stop()
		if _, err := cluster.ReplaceDead(ctx, c, "host3", false, nil); err == nil || !strings.Contains(err.Error(), "online") {
			t.Errorf("replace while LXD still sees host3 online: %v", err)
		}
		for {
			m, _, err := c.GetClusterMember("host3")
			if err == nil && m.Status != "Online" {
				break
			}
			if time.Since(died) > 2*time.Minute {
				t.Fatalf("LXD still sees host3 online: %+v %v", m, err)
			}
			time.Sleep(time.Second)
		}
		forget := func(ctx context.Context) error {
			return service.Forget(ctx, h1.Config, "host3", h3.Config.Host.Address)
		}
		if _, err := cluster.ReplaceDead(ctx, c, "host3", true, forget); err != nil {
			t.Fatal(err)
		}
		replaced := time.Now()
		waitCluster(t, ctx, h1, []string{"host1", "host2"}, replaced)
		for _, dir := range []string{h3.Config.StateDir, h3.Config.Cluster.Storage.Source} {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Mkdir(h3.Config.Cluster.Storage.Source, 0o711); err != nil {
			t.Fatal(err)
		}
		if err := services[2].Start(ctx); err != nil {
			t.Fatal(err)
		}
		waitCluster(t, ctx, h1, []string{"host1", "host2", "host3"}, replaced)
		t.Logf("figure: replaced host3's service start to serving: %s", time.Since(replaced).Round(time.Second))
		if strings.Contains(log.String(), "host3 registers again") {
			t.Error("host3's old member was still there when it came back")
		}
	})
}

// launchWithVolume starts a busybox container on member with a custom
// volume of its own mounted at /data (pool configtest.BedPool).
func launchWithVolume(t *testing.T, c lxd.InstanceServer, member, name, volume string) {
	t.Helper()
	testenv.RequireTools(t, "busybox")
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	meta := tarball(t, map[string]string{"metadata.yaml": "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: busybox\n"})
	rootfs := tarball(t, map[string]string{"bin/busybox": string(bin), "bin/sh": "->busybox",
		"sbin/init": "#!/bin/sh\nwhile true; do /bin/busybox sleep 3600; done\n", "dev/": "", "proc/": "", "sys/": "", "tmp/": "", "data/": ""})
	op, err := c.CreateImage(api.ImagesPost{}, &lxd.ImageCreateArgs{MetaFile: bytes.NewReader(meta), MetaName: "meta.tar",
		RootfsFile: bytes.NewReader(rootfs), RootfsName: "rootfs.tar"})
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		t.Fatalf("import busybox image: %v", err)
	}
	fp, _ := op.Get().Metadata["fingerprint"].(string)
	on := c.UseTarget(member)
	if err := on.CreateStoragePoolVolume(configtest.BedPool, api.StorageVolumesPost{Name: volume, Type: "custom"}); err != nil {
		t.Fatal(err)
	}
	op, err = on.CreateInstance(api.InstancesPost{Name: name, Type: api.InstanceTypeContainer,
		Source: api.InstanceSource{Type: "image", Fingerprint: fp},
		InstancePut: api.InstancePut{Devices: map[string]map[string]string{
			"root":   {"type": "disk", "path": "/", "pool": configtest.BedPool},
			"volume": {"type": "disk", "path": "/data", "pool": configtest.BedPool, "source": volume},
		}}})
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	op, err = c.UpdateInstanceState(name, api.InstanceStatePut{Action: "start", Timeout: -1}, "")
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
}

// tarball makes a tar of files (a trailing / is a directory, a body
// "->x" a symbolic link to x; files under sbin/ and bin/ are executable).
func tarball(t *testing.T, files map[string]string) []byte {
	t.Helper()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, n := range names {
		if d := filepath.Dir(strings.TrimSuffix(n, "/")); d != "." && !dirs[d] {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(1700000000, 0)}); err != nil {
				t.Fatal(err)
			}
		}
		body := files[n]
		hdr := &tar.Header{Name: n, Mode: 0o644, ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg, Size: int64(len(body))}
		switch {
		case strings.HasSuffix(n, "/"):
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeDir, 0o755, 0
			dirs[strings.TrimSuffix(n, "/")] = true
			body = ""
		case strings.HasPrefix(body, "->"):
			hdr.Typeflag, hdr.Linkname, hdr.Mode, hdr.Size = tar.TypeSymlink, body[2:], 0o777, 0
			body = ""
		case strings.HasPrefix(n, "bin/") || strings.HasPrefix(n, "sbin/"):
			hdr.Mode = 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// waitCluster waits until h's LXD lists exactly want, every one online, and
// its registry has one node per host and one row per host, each written
// after since with step serving.
func waitCluster(t *testing.T, ctx context.Context, h configtest.Host, want []string, since time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	last := ""
	for {
		r := service.Status(ctx, h.Config, h.Bed.LXD(), nil)
		last = checkCluster(r, want, since)
		if last == "" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: the cluster is not %v within 5 minutes: %s", h.Bed.Name, want, last)
		case <-time.After(time.Second):
		}
	}
}

func checkCluster(r *service.Report, want []string, since time.Time) string {
	var lxdNames, rows []string
	for _, m := range r.LXDMembers {
		if m.Status != "Online" {
			return fmt.Sprintf("LXD member %s is %s", m.Name, m.Status)
		}
		lxdNames = append(lxdNames, m.Name)
	}
	if !slices.Equal(lxdNames, want) {
		return fmt.Sprintf("LXD members %v (%s)", lxdNames, r.LXDError)
	}
	if r.Registry == nil {
		return "registry: " + r.RegistryError
	}
	if len(r.Registry.Members) != len(want) {
		return fmt.Sprintf("registry nodes %+v", r.Registry.Members)
	}
	for _, hr := range r.Registry.Hosts {
		if hr.Step != string(service.StepServing) || !hr.UpdatedAt.After(since) {
			return fmt.Sprintf("registry row %s at %q, written %s", hr.Name, hr.Step, hr.UpdatedAt.Format(time.RFC3339))
		}
		rows = append(rows, hr.Name)
	}
	if !slices.Equal(rows, want) {
		return fmt.Sprintf("registry rows %v", rows)
	}
	return ""
}

// waitOnline returns when h's LXD first listed name online.
func waitOnline(t *testing.T, ctx context.Context, h configtest.Host, name string) time.Time {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		m, _, err := h.Bed.LXD().GetClusterMember(name)
		if err == nil && m.Status == "Online" {
			return time.Now()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s is not an online member within 5 minutes (%v)", name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func clusterCert(t *testing.T, h *testbed.Host) string {
	t.Helper()
	s, _, err := h.LXD().GetServer()
	if err != nil {
		t.Fatal(err)
	}
	return s.Environment.Certificate
}
