// Package testdocker starts a private Docker daemon for a test: Debian's
// dockerd with its own containerd, socket, data, exec root and pidfile, no
// bridge and no iptables rules, so it never touches another daemon on the
// machine (a system dockerd or containerd included). The daemon is stopped by
// its PID and its directory removed when the test ends, also when it fails.
package testdocker

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// StartTimeout bounds how long Start waits for the daemon to answer.
const StartTimeout = 60 * time.Second

// Daemon is a running private dockerd.
type Daemon struct {
	Client *client.Client
	Dir    string // everything the daemon writes lives here
	Socket string // unix socket path of the Docker API
	Log    string // dockerd's log file

	dockerd, containerd *proc
	stopped             bool
}

// proc is a spawned daemon; exited is closed once it has been reaped.
type proc struct {
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

// containerdConfig keeps containerd away from /etc/containerd/config.toml,
// drops the CRI plugin (it looks for CNI and other host state) and moves the
// opt plugin's directory out of /opt/containerd. What stays outside Dir:
// containerd 1.6 puts shim sockets in /run/containerd/s (named by a hash of
// our socket path, so they never collide, and removed with the shims) and
// dockerd creates an empty /run/docker/plugins.
const containerdConfig = `version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`

// Start starts a daemon for t and returns it connected. It skips (fails in
// CI) without root or without dockerd and containerd.
func Start(t testing.TB) *Daemon {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "dockerd", "containerd", "runc")
	d, err := start()
	if d != nil {
		t.Cleanup(func() {
			if err := d.Stop(); err != nil {
				t.Errorf("testdocker: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("testdocker: %v", err)
	}
	return d
}

// start starts containerd and dockerd; extra goes to dockerd (for tests of
// this package).
func start(extra ...string) (*Daemon, error) {
	// A short path under /tmp: unix socket paths are limited to 108 bytes,
	// t.TempDir names can be longer.
	dir, err := os.MkdirTemp("", "ssdocker-")
	if err != nil {
		return nil, err
	}
	d := &Daemon{Dir: dir, Socket: filepath.Join(dir, "docker.sock"), Log: filepath.Join(dir, "dockerd.log")}
	ctrdConfig := fmt.Sprintf(containerdConfig, filepath.Join(dir, "containerd-opt"))
	if err := os.WriteFile(filepath.Join(dir, "containerd.toml"), []byte(ctrdConfig), 0o644); err != nil {
		return d, err
	}
	// dockerd 20.10 would otherwise create its trust key in /etc/docker,
	// next to the system daemon's.
	daemonJSON := fmt.Sprintf("{%q: %q}\n", "deprecated-key-path", filepath.Join(dir, "key.json"))
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte(daemonJSON), 0o644); err != nil {
		return d, err
	}
	ctrdSock := filepath.Join(dir, "containerd.sock")
	// Our own containerd: dockerd would otherwise use a system one at
	// /run/containerd/containerd.sock when it exists.
	d.containerd, err = spawn(filepath.Join(dir, "containerd.log"), "containerd",
		"--config", filepath.Join(dir, "containerd.toml"),
		"--address", ctrdSock,
		"--root", filepath.Join(dir, "containerd-root"),
		"--state", filepath.Join(dir, "containerd-state"))
	if err != nil {
		return d, err
	}
	if err := waitFor(func() bool { _, err := os.Stat(ctrdSock); return err == nil }, d.containerd); err != nil {
		return d, fmt.Errorf("containerd did not start: %w", err)
	}
	args := []string{
		"--host", "unix://" + d.Socket,
		"--containerd", ctrdSock,
		"--config-file", filepath.Join(dir, "daemon.json"),
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
		"--userland-proxy=false",
	}
	d.dockerd, err = spawn(d.Log, "dockerd", append(args, extra...)...)
	if err != nil {
		return d, err
	}
	d.Client, err = client.NewClientWithOpts(client.WithHost("unix://"+d.Socket), client.WithAPIVersionNegotiation())
	if err != nil {
		return d, err
	}
	ping := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := d.Client.Ping(ctx)
		return err == nil
	}
	if err := waitFor(ping, d.dockerd); err != nil {
		return d, fmt.Errorf("dockerd did not start: %w", err)
	}
	return d, nil
}

// spawn starts a daemon in its own process group, its output in logFile.
func spawn(logFile, name string, args ...string) (*proc, error) {
	log, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	defer log.Close() // the child has its own copy
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	// Pdeathsig: a test binary that dies abruptly takes its daemons along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, log: logFile, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	return p, nil
}

// waitFor polls ready until it holds, the daemon exits or StartTimeout ends;
// the error carries the tail of the daemon's log.
func waitFor(ready func() bool, p *proc) error {
	deadline := time.Now().Add(StartTimeout)
	for {
		if ready() {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited (%v); log %s:\n%s", p.cmd.Path, p.cmd.ProcessState, p.log, tail(p.log))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s; log %s:\n%s", p.cmd.Path, StartTimeout, p.log, tail(p.log))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tail returns the last lines of a log file.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

// Stop stops dockerd, then containerd (TERM, then KILL after a grace period),
// unmounts what a killed daemon left under Dir and removes Dir. A second Stop
// does nothing.
func (d *Daemon) Stop() error {
	if d.stopped {
		return nil
	}
	d.stopped = true
	var errs []error
	var bridges []string
	if d.Client != nil {
		// Containers first: their shims leave containerd's process group, so
		// stopping the daemons would not end them.
		errs = append(errs, d.removeContainers())
		bridges = d.removeNetworks()
		d.Client.Close()
	}
	for _, p := range []*proc{d.dockerd, d.containerd} {
		if p != nil {
			errs = append(errs, p.stop())
		}
	}
	// A bridge of a network the daemon made outlives the daemon on the
	// machine; left behind, they use up Docker's default address pools and
	// later daemons cannot create networks.
	for _, br := range bridges {
		if _, err := net.InterfaceByName(br); err == nil {
			if out, err := exec.Command("ip", "link", "delete", br).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("delete bridge %s: %v: %s", br, err, out))
			}
		}
	}
	errs = append(errs, unmountUnder(d.Dir))
	if err := os.RemoveAll(d.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeNetworks removes the bridge networks made in the daemon and
// returns their bridges' names, to delete any the daemon leaves.
func (d *Daemon) removeNetworks() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := d.Client.NetworkList(ctx, network.ListOptions{})
	if err != nil {
		return nil
	}
	var bridges []string
	for _, n := range list {
		if n.Driver != "bridge" || n.Name == "bridge" {
			continue
		}
		br := n.Options["com.docker.network.bridge.name"]
		if br == "" {
			br = "br-" + n.ID[:12]
		}
		bridges = append(bridges, br)
		d.Client.NetworkRemove(ctx, n.ID)
	}
	return bridges
}

func (d *Daemon) removeContainers() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := d.Client.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil // the daemon is not answering: nothing to ask it
	}
	var errs []error
	for _, c := range list {
		// One that went meanwhile (a test's own removal still under way when
		// it listed) is what this wants.
		if err := d.Client.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove container %s: %w", c.ID, err))
		}
	}
	return errors.Join(errs...)
}

func (p *proc) stop() error {
	// Signal the process group: containerd's shims and their containers are
	// in it too (they keep the pgid of the daemon that spawned them).
	pgid := p.cmd.Process.Pid
	select {
	case <-p.exited:
		return nil // reaped: its pgid may belong to someone else by now
	default:
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(15 * time.Second):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.exited:
		return fmt.Errorf("%s (pid %d) ignored SIGTERM, killed", p.cmd.Path, pgid)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) survived SIGKILL", p.cmd.Path, pgid)
	}
}

// unmountUnder lazily unmounts every mount below dir, deepest first.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var mounts []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			mounts = append(mounts, fields[4])
		}
	}
	var errs []error
	for i := len(mounts) - 1; i >= 0; i-- {
		if _, err := command.Output(context.Background(), "umount", "-l", mounts[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ImportBusybox makes an image named ref from a tiny rootfs (Debian's static
// busybox and the applet links a test needs), the API form of `docker
// import`, and returns its image ID. marker is written to /marker in the
// image, so two images get different IDs.
func ImportBusybox(t testing.TB, c *client.Client, ref, marker string) string {
	t.Helper()
	testenv.RequireTools(t, "busybox")
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("testdocker: %v", err)
	}
	return Import(t, c, ref, bytes.NewReader(rootfs(t, bin, marker)))
}

// Import makes an image named ref whose only layer is the rootfs tarball,
// like `docker import`, and returns its image ID.
func Import(t testing.TB, c *client.Client, ref string, tarball io.Reader) string {
	t.Helper()
	ctx := context.Background()
	body, err := c.ImageImport(ctx, image.ImportSource{Source: tarball, SourceName: "-"}, ref, image.ImportOptions{})
	if err != nil {
		t.Fatalf("testdocker: import %s: %v", ref, err)
	}
	_, err = io.Copy(io.Discard, body)
	body.Close()
	if err != nil {
		t.Fatalf("testdocker: import %s: %v", ref, err)
	}
	inspect, err := c.ImageInspect(ctx, ref)
	if err != nil {
		t.Fatalf("testdocker: inspect imported %s: %v", ref, err)
	}
	return inspect.ID
}

// rootfs is a tarball with /bin/busybox, /bin/sh and /bin/cat links to it
// and /marker. Fixed times keep the image ID stable for equal input.
func rootfs(t testing.TB, busybox []byte, marker string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	mtime := time.Unix(1700000000, 0)
	hdrs := []struct {
		h    tar.Header
		body []byte
	}{
		{tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, busybox},
		{tar.Header{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil},
		{tar.Header{Name: "bin/cat", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil},
		{tar.Header{Name: "bin/echo", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil},
		{tar.Header{Name: "marker", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(marker + "\n")},
	}
	for _, e := range hdrs {
		e.h.ModTime = mtime
		e.h.Size = int64(len(e.body))
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
	return b.Bytes()
}
