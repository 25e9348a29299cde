package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	lxd "github.com/canonical/lxd/client"
	"golang.org/x/sys/unix"

	"github.com/sovereign-stack/ssbuild/internal/command"
)

// Host is one simulated machine of the bed.
type Host struct {
	Name    string     // host1, host2, ...: also a good LXD member name
	Address netip.Addr // on eth0 inside the host's network namespace
	Netns   string     // network namespace name (ip netns)
	Dir     string     // the host's own directory, for files a test hands it (appliance.yaml)
	LXDDir  string     // the daemon's LXD_DIR, inside Dir
	LogFile string     // the daemon's stdout and stderr, across restarts

	bed     *Bed
	veth    string // machine side of the host's veth pair
	mountNS string // file that keeps the host's mount namespace alive
	utsNS   string // file that keeps the host's UTS namespace alive
	netnsID nsID   // identity of Netns, to find processes inside it
	mountID nsID   // identity of the mount namespace

	mu     sync.Mutex
	daemon *daemon
	client lxd.InstanceServer
}

// daemon is one run of `lxd` that the bed started.
type daemon struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when the process has exited and been reaped
	err  error         // exit status, valid after done
}

// createHost makes host i's namespaces and link. On error it returns the
// host as far as it got, so Close can remove that part.
func (b *Bed) createHost(ctx context.Context, i int) (*Host, error) {
	base := b.Subnet.Addr().As4()
	base[3] = byte(10 + i)
	dir := filepath.Join(b.Dir, fmt.Sprintf("host%d", i))
	h := &Host{
		Name:    fmt.Sprintf("host%d", i),
		Address: netip.AddrFrom4(base),
		Dir:     dir,
		LXDDir:  filepath.Join(dir, "lxd"),
		LogFile: filepath.Join(dir, "lxd.log"),
		bed:     b,
	}
	if err := os.MkdirAll(h.LXDDir, 0o711); err != nil {
		return nil, fmt.Errorf("%s: %w", h.Name, err)
	}
	if _, err := command.Output(ctx, "ip", "netns", "add", "ssbed-"+b.ID+"-"+h.Name); err != nil {
		return nil, fmt.Errorf("%s: create network namespace: %w", h.Name, err)
	}
	h.Netns = "ssbed-" + b.ID + "-" + h.Name
	id, err := nsIDOf(h.netnsPath())
	if err != nil {
		return h, fmt.Errorf("%s: %w", h.Name, err)
	}
	h.netnsID = id

	veth := fmt.Sprintf("ssv%sh%d", b.ID, i)
	if _, err := command.Output(ctx, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.Netns); err != nil {
		return h, fmt.Errorf("%s: create veth %s: %w", h.Name, veth, err)
	}
	h.veth = veth
	disableIPv6(veth)
	steps := [][]string{
		{"link", "set", veth, "master", b.Bridge, "up"},
		{"-n", h.Netns, "link", "set", "lo", "up"},
		{"-n", h.Netns, "addr", "add", netip.PrefixFrom(h.Address, b.Subnet.Bits()).String(), "dev", "eth0"},
		{"-n", h.Netns, "link", "set", "eth0", "up"},
	}
	for _, args := range steps {
		if _, err := command.Output(ctx, "ip", args...); err != nil {
			return h, fmt.Errorf("%s: network: %w", h.Name, err)
		}
	}

	// The mount namespace: /sys of the host's network namespace (so LXD sees
	// its own links under /sys/class/net) and a pure cgroup2 /sys/fs/cgroup,
	// without which containers cannot boot systemd or run nested docker.
	// A file bound to it keeps it across daemon restarts. Inside, the bed
	// directory loses its self-bind, and with it the other hosts' namespace
	// files, so no host's namespace pins another's.
	// A UTS namespace gives the host its own hostname, which LXD uses as
	// its server name.
	mnt, uts := filepath.Join(dir, "mntns"), filepath.Join(dir, "utsns")
	for _, f := range []string{mnt, uts} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			return h, fmt.Errorf("%s: %w", h.Name, err)
		}
	}
	_, err = command.Output(ctx, "nsenter", "--net="+h.netnsPath(), "--",
		"unshare", "--mount="+mnt, "--uts="+uts, "--propagation", "private", "--",
		"sh", "-c", `umount -l "$1" && umount -l /sys && mount -t sysfs sysfs /sys && mount -t cgroup2 cgroup2 /sys/fs/cgroup && hostname "$2"`,
		"sh", b.Dir, h.Name)
	// unshare binds the files before running the script: release them on failure too.
	h.mountNS, h.utsNS = mnt, uts
	if err != nil {
		return h, fmt.Errorf("%s: create mount namespace: %w", h.Name, err)
	}
	if h.mountID, err = nsIDOf(mnt); err != nil {
		return h, fmt.Errorf("%s: %w", h.Name, err)
	}
	return h, nil
}

func (h *Host) netnsPath() string { return "/run/netns/" + h.Netns }

// nsenterArgs enter the host's network and mount namespaces.
func (h *Host) nsenterArgs() []string {
	return []string{"--net=" + h.netnsPath(), "--mount=" + h.mountNS, "--uts=" + h.utsNS, "--"}
}

// Command returns a command that runs inside the host's namespaces with
// LXD_DIR set to the host's, e.g. the appliance service or `lxc`. The caller
// starts and waits for it; Close kills whatever is left in the namespaces.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append(h.nsenterArgs(), append([]string{name}, args...)...)...)
	cmd.Env = append(os.Environ(), "LXD_DIR="+h.LXDDir)
	return cmd
}

// Run runs a tool inside the host's namespaces to completion and returns its
// trimmed standard output; errors carry its stderr.
func (h *Host) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := command.Run(ctx, command.Cmd{
		Name: "nsenter",
		Args: append(h.nsenterArgs(), append([]string{name}, args...)...),
		Env:  []string{"LXD_DIR=" + h.LXDDir},
	})
	if err != nil {
		return "", fmt.Errorf("%s: %w", h.Name, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// DialContext connects from inside the host's network namespace, as a
// process on that host would. Use it as http.Transport.DialContext. Give it
// IP addresses: names would be resolved the machine's way.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var conn net.Conn
	err := h.inNetns(func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: dial %s: %w", h.Name, address, err)
	}
	return conn, nil
}

// Listen creates a listener inside the host's network namespace, as a
// server on that host would (the appliance's registration endpoint).
func (h *Host) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := h.inNetns(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: listen %s: %w", h.Name, address, err)
	}
	return ln, nil
}

// inNetns runs fn on a thread switched into the host's network namespace:
// a socket belongs to the namespace of the thread that creates it, and
// keeps it afterwards.
func (h *Host) inNetns(fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err, tainted := h.switchAndRun(fn)
		// A thread that could not switch back ends with this goroutine.
		if !tainted {
			runtime.UnlockOSThread()
		}
		ch <- err
	}()
	return <-ch
}

// switchAndRun runs on a locked thread; tainted reports that the thread is
// left in the host's namespace.
func (h *Host) switchAndRun(fn func() error) (err error, tainted bool) {
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return err, false
	}
	defer orig.Close()
	target, err := os.Open(h.netnsPath())
	if err != nil {
		return err, false
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter network namespace: %w", err), false
	}
	err = fn()
	tainted = unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) != nil
	return err, tainted
}

// LXD returns the client connected to the host's daemon over its unix
// socket, or nil while the daemon is stopped.
func (h *Host) LXD() lxd.InstanceServer {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.client
}

// Socket is the path of the daemon's unix socket.
func (h *Host) Socket() string { return filepath.Join(h.LXDDir, "unix.socket") }

// StartLXD starts the host's LXD daemon and waits until its API answers.
func (h *Host) StartLXD(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.daemon != nil {
		return fmt.Errorf("%s: LXD already running (pid %d)", h.Name, h.daemon.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(h.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s: LXD log: %w", h.Name, err)
	}
	fmt.Fprintf(logf, "=== testbed: starting lxd at %s\n", time.Now().UTC().Format(time.RFC3339Nano))
	// nsenter execs lxd in its place (no --pid, no --fork), so the PID we
	// hold is the daemon's.
	cmd := exec.Command("nsenter", append(h.nsenterArgs(), "lxd", "--group", "root")...)
	cmd.Env = append(os.Environ(), "LXD_DIR="+h.LXDDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a ^C to `go test` does not reach it directly.
	// Pdeathsig: if the test binary dies without cleanup (timeout), so does
	// the daemon. It fires when the forking *thread* ends, so the fork runs
	// on the bed's spawner thread, which lives as long as the bed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := h.bed.spawner.start(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("%s: start lxd: %w", h.Name, err)
	}
	d := &daemon{cmd: cmd, log: logf, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	h.daemon = d

	c, err := h.waitReady(ctx, d)
	if err != nil {
		h.stopLocked(ctx, syscall.SIGKILL)
		return err
	}
	h.client = c
	return nil
}

// waitReady polls the daemon's API until it answers, the daemon exits or
// the start timeout passes.
func (h *Host) waitReady(ctx context.Context, d *daemon) (lxd.InstanceServer, error) {
	ctx, cancel := context.WithTimeout(ctx, h.bed.opts.StartTimeout)
	defer cancel()
	start := time.Now()
	var lastErr error
	for {
		// The client keeps the context it connects with for all its
		// requests: not the start context, which ends here.
		c, err := lxd.ConnectLXDUnix(h.Socket(), nil)
		if err == nil {
			// /internal/ready answers once the daemon has finished starting
			// (what `lxd waitready` polls).
			if _, _, err = c.RawQuery("GET", "/internal/ready", nil, ""); err == nil {
				return c, nil
			}
			c.Disconnect()
		}
		lastErr = err
		select {
		case <-d.done:
			return nil, fmt.Errorf("%s: lxd (pid %d) exited while starting: %v\n--- tail of %s:\n%s",
				h.Name, d.cmd.Process.Pid, d.err, h.LogFile, logTail(h.LogFile))
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: lxd (pid %d) did not answer on %s within %s (start timeout %s; last error: %v)\n--- tail of %s:\n%s",
				h.Name, d.cmd.Process.Pid, h.Socket(), time.Since(start).Round(time.Millisecond), h.bed.opts.StartTimeout, lastErr, h.LogFile, logTail(h.LogFile))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// logTail returns the last lines of a log file, for error messages.
func logTail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	const max = 3000
	if len(data) > max {
		data = data[len(data)-max:]
	}
	return string(data)
}

// StopLXD stops the daemon as a service restart would (SIGTERM: instances
// keep running, like LXD's own restarts), killing it if it has not exited
// within 30 seconds or when ctx ends.
func (h *Host) StopLXD(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopLocked(ctx, syscall.SIGTERM)
}

// KillLXD kills the daemon at once (SIGKILL), as a crash or power loss
// would. Its network's dnsmasq keeps running, as it does on a real host.
func (h *Host) KillLXD() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopLocked(context.Background(), syscall.SIGKILL)
}

func (h *Host) stopLocked(ctx context.Context, sig syscall.Signal) error {
	d := h.daemon
	if d == nil {
		return nil
	}
	if h.client != nil {
		h.client.Disconnect()
		h.client = nil
	}
	pid := d.cmd.Process.Pid
	if err := d.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: signal lxd (pid %d): %w", h.Name, pid, err)
	}
	grace := time.NewTimer(30 * time.Second)
	defer grace.Stop()
	select {
	case <-d.done:
	case <-grace.C:
	case <-ctx.Done():
	}
	select {
	case <-d.done:
	default:
		_ = d.cmd.Process.Kill()
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("%s: lxd (pid %d) did not exit after SIGKILL", h.Name, pid)
		}
	}
	h.daemon = nil
	return nil
}

// LXDPid is the daemon's PID, 0 while it is stopped.
func (h *Host) LXDPid() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.daemon == nil {
		return 0
	}
	return h.daemon.cmd.Process.Pid
}

// Disconnect takes the host off the bridge (its link goes down), as a
// pulled cable would; Reconnect puts it back.
func (h *Host) Disconnect(ctx context.Context) error {
	if _, err := command.Output(ctx, "ip", "link", "set", h.veth, "down"); err != nil {
		return fmt.Errorf("%s: disconnect: %w", h.Name, err)
	}
	return nil
}

// Reconnect undoes Disconnect.
func (h *Host) Reconnect(ctx context.Context) error {
	if _, err := command.Output(ctx, "ip", "link", "set", h.veth, "up"); err != nil {
		return fmt.Errorf("%s: reconnect: %w", h.Name, err)
	}
	return nil
}
