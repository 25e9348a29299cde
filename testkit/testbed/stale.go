package testbed

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// RemoveStale removes the beds under dir (default os.TempDir()) whose test
// process has gone without closing them: killed, or ended by `go test`'s
// timeout, which runs no cleanup. Beds whose owner still runs are left
// alone. It returns the IDs of the beds it removed.
func RemoveStale(ctx context.Context, dir string) ([]string, error) {
	dirs, err := filepath.Glob(filepath.Join(cmp.Or(dir, os.TempDir()), "ssbed-*"))
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, d := range dirs {
		id := strings.TrimPrefix(filepath.Base(d), "ssbed-")
		if _, err := hex.DecodeString(id); err != nil || len(id) != 6 {
			continue
		}
		owner, err := os.ReadFile(filepath.Join(d, "owner"))
		if err != nil || processIdentity(ownerPID(owner)) == string(owner) {
			continue // being created, not a bed, or still in use
		}
		if err := rebuild(d, id).Close(); err != nil {
			errs = append(errs, fmt.Errorf("stale bed %s: %w", id, err))
			continue
		}
		removed = append(removed, id)
	}
	return removed, errors.Join(errs...)
}

// rebuild finds what is left of a bed from its directory and its naming
// scheme, for Close to remove.
func rebuild(dir, id string) *Bed {
	b := &Bed{ID: id, Bridge: "ssbr" + id, Dir: dir, ownDir: true}
	if mounted, _ := mountsUnder(dir); len(mounted) > 0 && mounted[0] == dir {
		b.dirMounted = true
	}
	if rule := b.forwardRuleSpec(); exec.Command("iptables", append([]string{"-C"}, rule...)...).Run() == nil {
		b.forwardRule = rule
	}
	hostDirs, _ := filepath.Glob(filepath.Join(dir, "host*"))
	for _, hd := range hostDirs {
		name := filepath.Base(hd)
		n, err := strconv.Atoi(strings.TrimPrefix(name, "host"))
		if err != nil {
			continue
		}
		h := &Host{Name: name, Dir: hd, LXDDir: filepath.Join(hd, "lxd"), LogFile: filepath.Join(hd, "lxd.log"),
			bed: b, veth: fmt.Sprintf("ssv%sh%d", id, n)}
		if netns := "ssbed-" + id + "-" + name; fileExists("/run/netns/" + netns) {
			h.Netns = netns
			h.netnsID, _ = nsIDOf(h.netnsPath())
		}
		for _, f := range []struct {
			path *string
			file string
		}{{&h.mountNS, "mntns"}, {&h.utsNS, "utsns"}} {
			p := filepath.Join(hd, f.file)
			if mounted, _ := mountsUnder(p); len(mounted) > 0 {
				*f.path = p
			}
		}
		if h.mountNS != "" {
			h.mountID, _ = nsIDOf(h.mountNS)
		}
		b.Hosts = append(b.Hosts, h)
	}
	return b
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// processIdentity names a process by PID and start time, which together
// survive PID reuse; "" when it does not run.
func processIdentity(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil || pid <= 0 {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:]) // from field 3 (state) on; start time is field 22
	if len(f) < 20 {
		return ""
	}
	return fmt.Sprintf("%d %s\n", pid, f[19])
}

func ownerPID(owner []byte) int {
	f := strings.Fields(string(owner))
	if len(f) == 0 {
		return 0
	}
	pid, _ := strconv.Atoi(f[0])
	return pid
}
