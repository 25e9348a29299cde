package testbed_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/testbed"
	"github.com/sovereign-stack/ssbuild/internal/testenv"
)

// TestBed starts three hosts and checks what a user of the bed relies on:
// separate daemons, a shared network, restarts, and nothing left behind.
func TestBed(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, testbed.Tools...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

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
		for _, pid := range append(lxdPIDs, dnsmasqPIDs...) {
			if processRuns(pid) {
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
	})
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
