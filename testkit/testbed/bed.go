// Package testbed starts N LXD "hosts" on one machine for tests of the
// appliance (cluster formation, registry, deploy). One host is a network
// namespace joined by a veth to a bridge the bed creates, a private mount
// namespace with a pure cgroup2 /sys/fs/cgroup, and its own LXD daemon.
//
// Everything the bed creates carries its random ID in its name (namespaces,
// links, directories), so parallel beds never collide, and Close removes
// exactly that: daemons by PID, the dnsmasq each LXD network starts, the
// namespaces with every link in them, the bridge, the mounts and the files.
// Running containers are force-stopped through LXD, else killed with their
// cgroups. New also removes beds left by killed test runs (RemoveStale).
//
// What a host looks like from inside (Host.Command, Host.Run, DialContext):
// eth0 with Address/24 on the bed's bridge, lo, and whatever LXD makes; its
// hostname is its Name (LXD's server name); /sys belongs to its network
// namespace and /sys/fs/cgroup is the machine's cgroup2 root. The rest of
// the file system is the machine's: give a host files through Host.Dir.
//
// Things to know on Debian's LXD 5.0.2 with the pinned client:
//   - Joining a cluster over the API: put the whole join token in
//     ClusterPut.ClusterPassword. The client refuses ClusterToken without
//     the explicit_trust_token extension, and sent raw, 5.0.2 fails the
//     join with "Failed to update cluster trust ... not authorized". See
//     joinCluster in cluster_test.go; `lxd init --preseed` with
//     cluster_token also works.
//   - Containers of different hosts share the machine's cgroup tree; LXC
//     names a second "www" lxc.payload.www-1, so equal names still work.
//   - LXD logs "Failed enabling VLAN filtering" here: the kernel lacks
//     bridge VLAN filtering. Harmless unless a test needs VLANs.
package testbed

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// Options shape a bed. The zero value gives one host.
type Options struct {
	// Hosts is how many hosts to start (default 1).
	Hosts int
	// Dir is where the bed makes its directory for the hosts' state
	// (LXD_DIR, logs); Close removes that directory. Default os.TempDir().
	// Keep it short: LXD's unix socket path must fit in 108 bytes.
	Dir string
	// StartTimeout bounds the wait for one LXD daemon to answer (default 60s).
	StartTimeout time.Duration
	// NoLXD creates the hosts' namespaces only; start daemons with StartLXD.
	NoLXD bool
	// Progress, when set, reports the hosts' start (for demos; tests leave it nil).
	Progress *progress.Reporter
}

// Tools a bed needs in PATH.
var Tools = []string{"ip", "nsenter", "unshare", "mount", "umount", "lxd"}

// Bed is a set of hosts on one private bridge.
type Bed struct {
	ID     string       // random; part of every name the bed creates
	Bridge string       // bridge on the machine, no address of its own
	Subnet netip.Prefix // the hosts' /24, used only inside their namespaces
	Hosts  []*Host
	Dir    string

	opts        Options
	ownDir      bool // Dir was created by the bed
	dirMounted  bool // Dir is bind-mounted on itself (private), for the mount namespaces' files
	forwardRule []string
	pivotBefore bool // liblxc's shared lxc.pivot cgroup existed before the bed
	spawner     *spawner
	closeOnce   sync.Once
	closeErr    error
}

// New starts a bed for a test and closes it when the test ends, also when it
// fails or panics. It skips under -short (daemons are the slow tier), and
// skips (fails under CI) without root or the tools.
func New(t testing.TB, opts Options) *Bed {
	t.Helper()
	testenv.Short(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, Tools...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if removed, err := RemoveStale(ctx, opts.Dir); len(removed) > 0 || err != nil {
		t.Logf("testbed: removed beds of killed test runs %v (errors: %v)", removed, err)
	}
	b, err := Start(ctx, opts)
	if b != nil {
		t.Cleanup(func() {
			if err := b.Close(); err != nil {
				t.Errorf("testbed %s: close: %v", b.ID, err)
			}
		})
	}
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	return b
}

// Start creates the bridge and the hosts and starts their LXD daemons. On
// error it returns the partly built bed too, already closed.
func Start(ctx context.Context, opts Options) (b *Bed, err error) {
	if opts.Hosts <= 0 {
		opts.Hosts = 1
	}
	if opts.Hosts > 200 {
		return nil, fmt.Errorf("testbed: %d hosts: at most 200 fit the /24", opts.Hosts)
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 60 * time.Second
	}
	id, err := randomID()
	if err != nil {
		return nil, err
	}
	b = &Bed{ID: id, Bridge: "ssbr" + id, opts: opts, spawner: newSpawner()}
	defer func() {
		if err != nil {
			if cerr := b.Close(); cerr != nil {
				err = fmt.Errorf("%w (and cleanup: %v)", err, cerr)
			}
			err = fmt.Errorf("testbed %s: %w", id, err)
		}
	}()

	_, statErr := os.Stat(filepath.Join(cgroup2Root(), "lxc.pivot"))
	b.pivotBefore = statErr == nil
	if err := b.makeDir(); err != nil {
		return b, err
	}
	if b.Subnet, err = pickSubnet(ctx); err != nil {
		return b, err
	}
	if err := b.createBridge(ctx); err != nil {
		return b, err
	}
	for i := 1; i <= opts.Hosts; i++ {
		h, err := b.createHost(ctx, i)
		if h != nil {
			b.Hosts = append(b.Hosts, h)
		}
		if err != nil {
			return b, err
		}
	}
	if opts.NoLXD {
		return b, nil
	}
	task := cmp.Or(opts.Progress, progress.Discard()).Start(fmt.Sprintf("testbed %s: start LXD on %d hosts", id, len(b.Hosts)), int64(len(b.Hosts)), "hosts")
	// Daemons start in parallel: each spends most of its start-up waiting.
	errs := make([]error, len(b.Hosts))
	var wg sync.WaitGroup
	for i, h := range b.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i] = h.StartLXD(ctx); errs[i] == nil {
				task.Add(1)
			}
		}()
	}
	wg.Wait()
	err = errors.Join(errs...)
	task.Done(err)
	return b, err
}

func randomID() (string, error) {
	var buf [3]byte
	if _, err := rand.Read(buf[:]); err != nil {
		return "", fmt.Errorf("testbed: random id: %w", err)
	}
	return hex.EncodeToString(buf[:]), nil
}

// makeDir prepares the bed's directory and bind-mounts it on itself with
// private propagation: the files that keep the hosts' mount namespaces alive
// must sit on a private mount (unshare(1), --mount=file).
func (b *Bed) makeDir() error {
	b.Dir = filepath.Join(cmp.Or(b.opts.Dir, os.TempDir()), "ssbed-"+b.ID)
	if err := os.Mkdir(b.Dir, 0o755); err != nil {
		return fmt.Errorf("create bed directory: %w", err)
	}
	b.ownDir = true
	// Who owns the bed, so RemoveStale can tell a bed whose test was killed
	// from one still in use.
	if err := os.WriteFile(filepath.Join(b.Dir, "owner"), []byte(processIdentity(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("write bed owner: %w", err)
	}
	ctx := context.Background()
	if _, err := command.Output(ctx, "mount", "--bind", b.Dir, b.Dir); err != nil {
		return fmt.Errorf("bind-mount bed directory: %w", err)
	}
	b.dirMounted = true
	if _, err := command.Output(ctx, "mount", "--make-private", b.Dir); err != nil {
		return fmt.Errorf("make bed directory private: %w", err)
	}
	return nil
}

// Close stops and removes everything the bed created. It is safe to call more
// than once and on a partly started bed; it goes on after an error and
// returns all of them.
func (b *Bed) Close() error {
	b.closeOnce.Do(func() { b.closeErr = b.close() })
	return b.closeErr
}

func (b *Bed) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	// Hosts in parallel: stopping is mostly waiting. Instances first, while
	// every daemon still answers.
	var wg sync.WaitGroup
	for _, h := range b.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.stopInstancesBriefly(ctx)
		}()
	}
	wg.Wait()
	hostErrs := make([]error, len(b.Hosts))
	for i, h := range b.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hostErrs[i] = h.destroy(ctx)
		}()
	}
	wg.Wait()
	errs = append(errs, hostErrs...)
	errs = append(errs, b.releaseLoopDevices(ctx))
	if root := cgroup2Root(); root != "" && !b.pivotBefore {
		// liblxc parks processes in this shared cgroup while it tears down a
		// container. Empty, it is harmless to remove (liblxc makes it again);
		// in use by anyone, rmdir fails and it stays.
		_ = os.Remove(filepath.Join(root, "lxc.pivot"))
	}
	errs = append(errs, b.removeBridge(ctx))
	errs = append(errs, b.removeDir(ctx))
	b.spawner.stop()
	return errors.Join(errs...)
}

// removeDir unmounts the bed directory and deletes it. It refuses to delete
// while anything is still mounted below it: RemoveAll would then delete the
// content of that mount.
func (b *Bed) removeDir(ctx context.Context) error {
	if b.Dir == "" {
		return nil
	}
	if b.dirMounted {
		if _, err := command.Output(ctx, "umount", b.Dir); err != nil {
			return fmt.Errorf("unmount bed directory: %w", err)
		}
		b.dirMounted = false
	}
	if left, err := mountsUnder(b.Dir); err != nil {
		return err
	} else if len(left) > 0 {
		return fmt.Errorf("not removing %s: still mounted below it: %s", b.Dir, strings.Join(left, ", "))
	}
	if !b.ownDir {
		return nil
	}
	if err := os.RemoveAll(b.Dir); err != nil {
		return fmt.Errorf("remove bed directory: %w", err)
	}
	return nil
}

// mountsUnder lists this mount namespace's mount points at or below dir.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	var found []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			found = append(found, mp)
		}
	}
	return found, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				out.WriteByte(c)
				i += 3
				continue
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}
