package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/sovereign-stack/ssbuild/internal/command"
)

// Wipe makes the host what a re-installed machine is when it first boots:
// its LXD daemon and everything running in its namespaces die at once (a
// power cut), the links LXD made in its network namespace go, its LXD
// directory is emptied, and a fresh daemon starts with the same name and
// address. Directories of the host's own (a pool's source, a state
// directory) are the caller's to empty. Instances of other hosts are not
// touched; the host's own die with it.
func (h *Host) Wipe(ctx context.Context) error {
	var errs []error
	errs = append(errs, h.KillLXD())
	errs = append(errs, h.killDnsmasq())
	errs = append(errs, h.killLeftovers())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: wipe: %w", h.Name, err)
	}
	// LXD's mounts (shmounts, devlxd, storage pools) live in the host's
	// mount namespace: undo them there, deepest first, before the files go.
	if _, err := h.Run(ctx, "sh", "-c", `awk -v d="$LXD_DIR" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done`); err != nil {
		return fmt.Errorf("%s: wipe: unmount LXD's mounts: %w", h.Name, err)
	}
	out, err := command.Output(ctx, "ip", "-n", h.Netns, "-o", "link", "show")
	if err != nil {
		return fmt.Errorf("%s: wipe: list links: %w", h.Name, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if name == "lo" || name == "eth0" {
			continue
		}
		if _, err := command.Output(ctx, "ip", "-n", h.Netns, "link", "del", name); err != nil {
			return fmt.Errorf("%s: wipe: delete link %s: %w", h.Name, name, err)
		}
	}
	if err := os.RemoveAll(h.LXDDir); err != nil {
		return fmt.Errorf("%s: wipe: %w", h.Name, err)
	}
	if err := os.MkdirAll(h.LXDDir, 0o711); err != nil {
		return fmt.Errorf("%s: wipe: %w", h.Name, err)
	}
	return h.StartLXD(ctx)
}
