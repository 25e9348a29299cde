package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"
	"golang.org/x/sys/unix"

	"github.com/sovereign-stack/ssbuild/internal/command"
)

// stopInstancesBriefly asks the host's LXD to force-stop the instances that
// run on it, so LXD tidies up after them (cgroups, host-side links). It runs
// for every host before any daemon is killed: in a cluster, members need
// each other to answer. It gives up after a while (a cluster that lost its
// leader may not answer at all); destroy then kills what is left.
func (h *Host) stopInstancesBriefly(ctx context.Context) {
	c := h.LXD()
	if c == nil || len(h.instanceProcesses()) == 0 {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = stopInstances(ctx, c)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	case <-ctx.Done():
	}
}

// destroy removes the host: its daemon, the daemon's dnsmasq, any other
// process left in its namespaces and the instances they started, the
// namespaces themselves (and with the network namespace every link in it:
// eth0, LXD's bridges) and the machine side of its veth.
func (h *Host) destroy(ctx context.Context) error {
	var errs []error
	// The bed's state is thrown away: no need for a graceful stop, and a
	// cluster member that shuts down while its peers do can wait a long time.
	errs = append(errs, h.KillLXD())
	errs = append(errs, h.killDnsmasq())
	errs = append(errs, h.killLeftovers())
	for _, f := range []*string{&h.mountNS, &h.utsNS} {
		if *f == "" {
			continue
		}
		// A failed unshare may have left the file unbound.
		if mounted, _ := mountsUnder(*f); len(mounted) == 0 {
			*f = ""
			continue
		}
		if _, err := command.Output(ctx, "umount", *f); err != nil {
			errs = append(errs, fmt.Errorf("%s: release namespace file: %w", h.Name, err))
		} else {
			*f = ""
		}
	}
	if h.Netns != "" {
		if _, err := command.Output(ctx, "ip", "netns", "del", h.Netns); err != nil {
			errs = append(errs, fmt.Errorf("%s: delete network namespace: %w", h.Name, err))
		} else {
			h.Netns = ""
		}
	}
	// Deleting the namespace deletes the pair; this is for a host whose
	// namespace could not be made or deleted.
	if h.veth != "" && linkExists(h.veth) {
		if _, err := command.Output(ctx, "ip", "link", "del", h.veth); err != nil && linkExists(h.veth) {
			errs = append(errs, fmt.Errorf("%s: delete veth: %w", h.Name, err))
		}
	}
	return errors.Join(errs...)
}

// stopInstances force-stops the running instances located on this member:
// their processes live in namespaces of their own, which the sweep of the
// host's namespaces does not reach.
func stopInstances(ctx context.Context, c lxd.InstanceServer) error {
	server, _, err := c.GetServer()
	if err != nil {
		return err
	}
	projects, err := c.GetProjectNames()
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range projects {
		pc := c.UseProject(p)
		insts, err := pc.GetInstances(api.InstanceTypeAny)
		if err != nil {
			errs = append(errs, fmt.Errorf("project %s: %w", p, err))
			continue
		}
		for _, inst := range insts {
			if inst.StatusCode != api.Running && inst.StatusCode != api.Frozen {
				continue
			}
			if server.Environment.ServerClustered && inst.Location != server.Environment.ServerName {
				continue // its own member stops it
			}
			op, err := pc.UpdateInstanceState(inst.Name, api.InstanceStatePut{Action: "stop", Force: true, Timeout: -1}, "")
			if err == nil {
				err = op.WaitContext(ctx)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("stop %s/%s: %w", p, inst.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// nsID identifies a namespace (the device and inode of its nsfs file).
type nsID struct{ dev, ino uint64 }

func nsIDOf(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, fmt.Errorf("namespace %s: %w", path, err)
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// killDnsmasq stops the dnsmasq of each LXD network of the host, found by
// the pid file LXD keeps. A killed LXD leaves it running.
func (h *Host) killDnsmasq() error {
	files, _ := filepath.Glob(filepath.Join(h.LXDDir, "networks", "*", "dnsmasq.pid"))
	var pids []int
	for _, f := range files {
		pid, err := readPidFile(f)
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		// Only a dnsmasq inside this host's namespace: a stale file's PID may
		// by now belong to someone else.
		if pid > 0 && processComm(pid) == "dnsmasq" && h.netnsID != (nsID{}) && inNamespace(pid, "net", h.netnsID) {
			pids = append(pids, pid)
		}
	}
	if err := killAndWait(pids); err != nil {
		return fmt.Errorf("%s: dnsmasq: %w", h.Name, err)
	}
	return nil
}

// readPidFile reads LXD's subprocess file ("pid: 1234" among YAML keys) or a
// plain pid file.
func readPidFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		v := strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(v, "pid:"); ok {
			v = strings.TrimSpace(rest)
		}
		if pid, err := strconv.Atoi(v); err == nil {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no pid in %s", path)
}

// killLeftovers kills every process still inside the host's network or
// mount namespace, and their children outside them (the init of each
// container, whose parent is its monitor). The bed created both namespaces,
// so whatever runs there was started by it or by something it started
// (LXD's helpers, Host.Command). The cgroups LXD made for them go too.
func (h *Host) killLeftovers() error {
	inside := h.Processes()
	pids := append(inside, childrenOutside(inside)...)
	var cgroups []string
	for _, pid := range pids {
		if cg := lxcCgroup(pid); cg != "" {
			cgroups = append(cgroups, cg)
		}
	}
	err := killAndWait(pids)
	if err == nil {
		err = removeCgroups(cgroups)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	return nil
}

// instanceProcesses lists the inits of the host's running containers.
func (h *Host) instanceProcesses() []int { return childrenOutside(h.Processes()) }

// childrenOutside lists the children of parents that are not in parents.
func childrenOutside(parents []int) []int {
	if len(parents) == 0 {
		return nil
	}
	isParent := map[int]bool{}
	for _, p := range parents {
		isParent[p] = true
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || isParent[pid] {
			continue
		}
		if isParent[parentOf(pid)] && processAlive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

func parentOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:]) // state, ppid, ...
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// lxcCgroup returns the cgroup2 path of pid when it is one LXD made for a
// container or its monitor (lxc.payload.NAME, lxc.monitor.NAME), else "".
func lxcCgroup(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		path, ok := strings.CutPrefix(line, "0::")
		if !ok {
			continue
		}
		top := strings.Split(strings.TrimPrefix(path, "/"), "/")[0]
		if strings.HasPrefix(top, "lxc.payload.") || strings.HasPrefix(top, "lxc.monitor.") {
			return "/" + top
		}
	}
	return ""
}

// removeCgroups removes the given cgroups (paths from the cgroup2 root)
// with their sub-cgroups, deepest first. Their processes must be gone.
func removeCgroups(paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	root := cgroup2Root()
	if root == "" {
		return nil
	}
	var errs []error
	for _, p := range paths {
		dir := filepath.Join(root, p)
		var dirs []string
		_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			// A cgroup whose last process just died can be busy for a moment.
			var err error
			for range 50 {
				if err = os.Remove(dirs[i]); err == nil || os.IsNotExist(err) {
					err = nil
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// cgroup2Root is where the machine mounts the root of its cgroup2
// hierarchy: /sys/fs/cgroup on a pure cgroup2 machine,
// /sys/fs/cgroup/unified on a hybrid one.
func cgroup2Root() string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		if !ok || len(f) < 5 || !strings.HasPrefix(post, "cgroup2 ") || f[3] != "/" {
			continue
		}
		return unescapeMount(f[4])
	}
	return ""
}

// Processes returns the PIDs of the live processes inside the host's
// network or mount namespace.
func (h *Host) Processes() []int {
	seen := map[int]bool{}
	var out []int
	for _, pid := range append(processesIn("net", h.netnsID), processesIn("mnt", h.mountID)...) {
		if !seen[pid] {
			seen[pid] = true
			out = append(out, pid)
		}
	}
	return out
}

// processesIn lists the processes (not zombies, whose namespaces are gone)
// whose namespace of the kind ("net", "mnt") is id.
func processesIn(kind string, id nsID) []int {
	if id == (nsID{}) {
		return nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if inNamespace(pid, kind, id) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func inNamespace(pid int, kind string, id nsID) bool {
	got, err := nsIDOf(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
	return err == nil && got == id
}

func processComm(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// killAndWait sends SIGKILL to each PID and waits until each is gone or a
// zombie (its parent reaps it; nothing of it runs any more).
func killAndWait(pids []int) error {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for processAlive(pid) {
			if time.Now().After(deadline) {
				return fmt.Errorf("process %d (%s) still alive after SIGKILL", pid, processComm(pid))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// LoopDevices lists the loop devices backed by files in the bed's directory
// (LXD's loop-file pools: btrfs, zfs without a source).
func (b *Bed) LoopDevices() []string {
	if b.Dir == "" {
		return nil
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var devs []string
	for _, f := range files {
		backing, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		p := strings.TrimSuffix(strings.TrimSpace(string(backing)), " (deleted)")
		if p == b.Dir || strings.HasPrefix(p, b.Dir+"/") {
			devs = append(devs, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return devs
}

// releaseLoopDevices waits for the loop devices of the hosts' pools to go:
// LXD attaches them with autoclear, so they detach once the mount namespace
// that mounted them is gone. Any still attached after a while is detached.
func (b *Bed) releaseLoopDevices(ctx context.Context) error {
	deadline := time.Now().Add(5 * time.Second)
	for len(b.LoopDevices()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	var errs []error
	for _, dev := range b.LoopDevices() {
		if _, err := command.Output(ctx, "losetup", "-d", dev); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", dev, err))
		}
	}
	return errors.Join(errs...)
}
