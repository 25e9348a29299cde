package testbed_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/testkit/testbed"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestBed starts three hosts and checks what a user of the bed relies on:
// separate daemons, a shared network, restarts, and nothing left behind.
func TestBed(t *testing.T) {
	testenv.Short(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, testbed.Tools...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	_, err := os.Stat(filepath.Join(cgroup2Root(t), "lxc.pivot"))
	pivotBefore := err == nil

	start := time.Now()
	bed, err := testbed.Start(ctx, testbed.Options{Hosts: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bed.Close() }) // a no-op after the Close below
	t.Logf("3-host bed %s up in %s (subnet %s)", bed.ID, time.Since(start).Round(time.Millisecond), bed.Subnet)

	var lxdPIDs, dnsmasqPIDs []int
	for _, h := range bed.Hosts {
		lxdPIDs = append(lxdPIDs, h.LXDPid())
	}

	t.Run("each host has its own LXD", func(t *testing.T) {
		certs := map[string]string{}
		for _, h := range bed.Hosts {
			server, _, err := h.LXD().GetServer()
			if err != nil {
				t.Fatalf("%s: %v", h.Name, err)
			}
			if got := server.Environment.ServerName; got != h.Name {
				t.Errorf("%s: LXD server name %q, want the host's name", h.Name, got)
			}
			if other, dup := certs[server.Environment.Certificate]; dup {
				t.Errorf("%s and %s answer with the same certificate: one daemon behind two clients", other, h.Name)
			}
			certs[server.Environment.Certificate] = h.Name
			// The pure cgroup2 mount the design asks for, as the daemon sees it.
			fs, err := h.Run(ctx, "stat", "-fc", "%T", "/sys/fs/cgroup")
			if err != nil || fs != "cgroup2fs" {
				t.Errorf("%s: /sys/fs/cgroup is %q (%v), want cgroup2fs", h.Name, fs, err)
			}
			addr, err := h.Run(ctx, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
			if err != nil || !strings.Contains(addr, h.Address.String()+"/24") {
				t.Errorf("%s: eth0 has %q (%v), want %s/24", h.Name, addr, err, h.Address)
			}
		}
	})

	h1, h2, h3 := bed.Hosts[0], bed.Hosts[1], bed.Hosts[2]
	h1HTTPS := net.JoinHostPort(h1.Address.String(), "8443")

	t.Run("hosts reach each other over the bridge", func(t *testing.T) {
		if _, err := h2.DialContext(ctx, "tcp", h1HTTPS); err == nil {
			t.Fatalf("host2 reached %s before host1's LXD listened there", h1HTTPS)
		}
		setConfig(t, h1, "core.https_address", h1HTTPS)
		server, _, err := h1.LXD().GetServer()
		if err != nil {
			t.Fatal(err)
		}
		// host2 must see host1's own certificate: the answer comes from the
		// right daemon, not from something on the machine.
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		defer dcancel()
		raw, err := h2.DialContext(dctx, "tcp", h1HTTPS)
		if err != nil {
			t.Fatalf("host2 cannot reach host1's LXD at %s: %v", h1HTTPS, err)
		}
		conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
		defer conn.Close()
		if err := conn.HandshakeContext(dctx); err != nil {
			t.Fatalf("TLS handshake host2 -> %s: %v", h1HTTPS, err)
		}
		block, _ := pem.Decode([]byte(server.Environment.Certificate))
		if block == nil || !bytes.Equal(conn.ConnectionState().PeerCertificates[0].Raw, block.Bytes) {
			t.Errorf("host2 got a certificate at %s that is not host1's LXD certificate", h1HTTPS)
		}
		// A tool run on host3 reaches host1 too (ping: ICMP over the bridge).
		if out, err := h3.Run(ctx, "ping", "-c1", "-W2", h1.Address.String()); err != nil {
			t.Errorf("host3 cannot ping host1: %v\n%s", err, out)
		}
		if err := h3.Disconnect(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := h3.Run(ctx, "ping", "-c1", "-W1", h1.Address.String()); err == nil {
			t.Errorf("host3 still pings host1 after Disconnect")
		}
		if err := h3.Reconnect(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("LXD restarts keep the host's state", func(t *testing.T) {
		// A network makes the daemon start dnsmasq, which Close must stop.
		if err := h3.LXD().CreateNetwork(api.NetworksPost{Name: "testbr0", Type: "bridge",
			NetworkPut: api.NetworkPut{Config: map[string]string{"ipv4.address": "auto", "ipv6.address": "none"}}}); err != nil {
			t.Fatal(err)
		}
		setConfig(t, h3, "user.testbed", "kept")
		old := h3.LXDPid()
		if err := h3.StopLXD(ctx); err != nil {
			t.Fatal(err)
		}
		if h3.LXD() != nil || h3.LXDPid() != 0 || processRuns(old) {
			t.Fatalf("after StopLXD: client %v, pid %d, old pid %d running %v", h3.LXD(), h3.LXDPid(), old, processRuns(old))
		}
		if err := h3.StartLXD(ctx); err != nil {
			t.Fatal(err)
		}
		lxdPIDs = append(lxdPIDs, h3.LXDPid())
		server, _, err := h3.LXD().GetServer()
		if err != nil {
			t.Fatal(err)
		}
		if server.Config["user.testbed"] != "kept" {
			t.Errorf("config after restart: user.testbed=%q, want kept", server.Config["user.testbed"])
		}
		if err := h3.KillLXD(); err != nil {
			t.Fatal(err)
		}
		if err := h3.StartLXD(ctx); err != nil {
			t.Fatalf("start after kill: %v", err)
		}
		lxdPIDs = append(lxdPIDs, h3.LXDPid())
		dnsmasqPIDs = append(dnsmasqPIDs, pidsOf(t, "dnsmasq", h3.LXDDir)...)
		if len(dnsmasqPIDs) == 0 {
			t.Errorf("no dnsmasq runs for host3's network testbr0")
		}
	})

	t.Run("loop-file pools work", func(t *testing.T) {
		testenv.RequireTools(t, "mkfs.btrfs")
		if err := h2.LXD().CreateStoragePool(api.StoragePoolsPost{Name: "loop", Driver: "btrfs",
			StoragePoolPut: api.StoragePoolPut{Config: map[string]string{"size": "1GiB"}}}); err != nil {
			t.Fatal(err)
		}
		if devs := bed.LoopDevices(); len(devs) != 1 {
			t.Errorf("loop devices of the bed: %v, want the one of pool loop", devs)
		}
		// The pool is mounted in host2's mount namespace only.
		if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), "storage-pools/loop") {
			t.Errorf("host2's pool is mounted in the machine's mount namespace")
		}
		if out, err := h2.Run(ctx, "findmnt", "-n", "-o", "FSTYPE", filepath.Join(h2.LXDDir, "storage-pools", "loop")); err != nil || out != "btrfs" {
			t.Errorf("pool loop inside host2: %q, %v; want a btrfs mount", out, err)
		}
	})

	var containerPID int
	var containerCgroup string
	t.Run("containers run", func(t *testing.T) {
		containerPID, containerCgroup = launchBusybox(t, h1, "c"+bed.ID)
	})

	if v, _ := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables"); strings.TrimSpace(string(v)) == "1" {
		if rules, _ := exec.Command("iptables", "-S", "FORWARD").CombinedOutput(); !strings.Contains(string(rules), bed.Bridge) {
			t.Errorf("br_netfilter is on but FORWARD has no rule for %s:\n%s", bed.Bridge, rules)
		}
	}

	closeStart := time.Now()
	if err := bed.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	t.Logf("close took %s", time.Since(closeStart).Round(time.Millisecond))

	t.Run("nothing of the bed remains", func(t *testing.T) {
		assertBedGone(t, bed, append(append(lxdPIDs, dnsmasqPIDs...), containerPID)...)
		if containerCgroup != "" {
			if _, err := os.Stat(containerCgroup); !os.IsNotExist(err) {
				t.Errorf("the container's cgroup %s remains (%v)", containerCgroup, err)
			}
		}
		if _, err := os.Stat(filepath.Join(cgroup2Root(t), "lxc.pivot")); err == nil && !pivotBefore {
			t.Errorf("cgroup lxc.pivot, made by the bed's containers, remains")
		}
	})
}

// assertBedGone checks, the way a user would (ip, /proc, the file system),
// that nothing of a closed bed remains, and that the given PIDs are gone.
func assertBedGone(t *testing.T, bed *testbed.Bed, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		if pid != 0 && processRuns(pid) {
			t.Errorf("process %d still runs", pid)
		}
	}
	if left := pidsOf(t, "", bed.Dir); len(left) > 0 {
		t.Errorf("processes still refer to %s: %v", bed.Dir, left)
	}
	for _, h := range bed.Hosts {
		if left := h.Processes(); len(left) > 0 {
			t.Errorf("%s: processes left in its namespaces: %v", h.Name, left)
		}
	}
	netns, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	if strings.Contains(string(netns), bed.ID) {
		t.Errorf("network namespaces left:\n%s", netns)
	}
	links, _ := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if strings.Contains(string(links), bed.ID) {
		t.Errorf("links left:\n%s", links)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), bed.ID) {
		t.Errorf("mounts left:\n%s", grepLines(string(mounts), bed.ID))
	}
	if _, err := os.Stat(bed.Dir); !os.IsNotExist(err) {
		t.Errorf("bed directory %s still exists (%v)", bed.Dir, err)
	}
	if devs := bed.LoopDevices(); len(devs) > 0 {
		t.Errorf("loop devices left: %v", devs)
	}
	if rules, err := exec.Command("iptables", "-S", "FORWARD").CombinedOutput(); err == nil && strings.Contains(string(rules), bed.ID) {
		t.Errorf("iptables rules left:\n%s", grepLines(string(rules), bed.ID))
	}
}

func setConfig(t *testing.T, h *testbed.Host, key, value string) {
	t.Helper()
	server, etag, err := h.LXD().GetServer()
	if err != nil {
		t.Fatal(err)
	}
	put := server.Writable()
	put.Config[key] = value
	if err := h.LXD().UpdateServer(put, etag); err != nil {
		t.Fatalf("%s: set %s: %v", h.Name, key, err)
	}
}

// processRuns reports whether pid exists and is not a zombie.
func processRuns(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// pidsOf lists running processes whose command line contains want (and whose
// name is comm, when given).
func pidsOf(t *testing.T, comm, want string) []int {
	t.Helper()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var pids []int
	for _, d := range dirs {
		var pid int
		fmt.Sscanf(filepath.Base(d), "%d", &pid)
		if pid == os.Getpid() || !processRuns(pid) {
			continue
		}
		cmdline, err := os.ReadFile(d + "/cmdline")
		if err != nil || !bytes.Contains(cmdline, []byte(want)) {
			continue
		}
		if c, _ := os.ReadFile(d + "/comm"); comm != "" && strings.TrimSpace(string(c)) != comm {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

func grepLines(s, want string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, want) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// launchBusybox starts a container from a tiny busybox image on h and
// returns its init's PID and cgroup directory (as seen on the machine).
func launchBusybox(t *testing.T, h *testbed.Host, name string) (int, string) {
	t.Helper()
	testenv.RequireTools(t, "busybox")
	c := h.LXD()
	if err := c.CreateStoragePool(api.StoragePoolsPost{Name: "ctpool", Driver: "dir"}); err != nil {
		t.Fatal(err)
	}
	profile, etag, err := c.GetProfile("default")
	if err != nil {
		t.Fatal(err)
	}
	put := profile.Writable()
	put.Devices["root"] = map[string]string{"type": "disk", "path": "/", "pool": "ctpool"}
	if err := c.UpdateProfile("default", put, etag); err != nil {
		t.Fatal(err)
	}
	meta, rootfs := busyboxImage(t)
	op, err := c.CreateImage(api.ImagesPost{},
		&lxd.ImageCreateArgs{MetaFile: bytes.NewReader(meta), MetaName: "meta.tar", RootfsFile: bytes.NewReader(rootfs), RootfsName: "rootfs.tar"})
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		t.Fatalf("import busybox image: %v", err)
	}
	fingerprint, _ := op.Get().Metadata["fingerprint"].(string)
	op2, err := c.CreateInstance(api.InstancesPost{Name: name, Type: api.InstanceTypeContainer,
		Source: api.InstanceSource{Type: "image", Fingerprint: fingerprint}})
	if err == nil {
		err = op2.Wait()
	}
	if err != nil {
		t.Fatalf("create container: %v", err)
	}
	op3, err := c.UpdateInstanceState(name, api.InstanceStatePut{Action: "start", Timeout: -1}, "")
	if err == nil {
		err = op3.Wait()
	}
	if err != nil {
		t.Fatalf("start container: %v\n%s", err, tail(h.LogFile))
	}
	state, _, err := c.GetInstanceState(name)
	if err != nil || state.StatusCode != api.Running || state.Pid <= 0 {
		t.Fatalf("container %s: %+v, %v; want running", name, state, err)
	}
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", state.Pid))
	var dir string
	for _, line := range strings.Split(string(cg), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok && strings.Contains(p, "lxc.payload.") {
			dir = filepath.Join(cgroup2Root(t), strings.SplitN(strings.TrimPrefix(p, "/"), "/", 2)[0])
		}
	}
	if dir == "" {
		t.Errorf("container init %d is in no lxc.payload cgroup: %q", state.Pid, cg)
	}
	return int(state.Pid), dir
}

// busyboxImage returns the metadata and rootfs tarballs of a split LXD image
// whose init is a busybox shell that sleeps.
func busyboxImage(t *testing.T) (meta, rootfs []byte) {
	t.Helper()
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	meta = tarball(t, []tarEntry{{name: "metadata.yaml", body: "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: busybox\n  description: testbed busybox\n"}})
	rootfs = tarball(t, []tarEntry{
		{name: "bin/", dir: true}, {name: "sbin/", dir: true}, {name: "dev/", dir: true}, {name: "proc/", dir: true},
		{name: "sys/", dir: true}, {name: "tmp/", dir: true}, {name: "etc/", dir: true}, {name: "root/", dir: true},
		{name: "bin/busybox", body: string(bin), mode: 0o755},
		{name: "bin/sh", link: "busybox"},
		{name: "sbin/init", body: "#!/bin/sh\nwhile true; do /bin/busybox sleep 3600; done\n", mode: 0o755},
	})
	return meta, rootfs
}

type tarEntry struct {
	name, body, link string
	dir              bool
	mode             int64
}

func tarball(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Mode: 0o644, ModTime: time.Unix(1700000000, 0)}
		switch {
		case e.dir:
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
		case e.link != "":
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, e.link, 0o777
		default:
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(e.body))
			if e.mode != 0 {
				hdr.Mode = e.mode
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// cgroup2Root is where the machine mounts its cgroup2 hierarchy's root.
func cgroup2Root(t *testing.T) string {
	out, err := exec.Command("findmnt", "-n", "-t", "cgroup2", "-o", "TARGET,FSROOT").Output()
	if err != nil {
		t.Fatalf("findmnt cgroup2: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[1] == "/" {
			return f[0]
		}
	}
	t.Fatalf("no cgroup2 root mount:\n%s", out)
	return ""
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
