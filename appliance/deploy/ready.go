package deploy

import (
	"context"
	"fmt"
	"strings"
	"time"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/appliance/lxdexec"
)

// runIn runs a command in an instance and returns its trimmed stdout and
// exit code.
func runIn(c lxd.InstanceServer, instance string, command ...string) (string, int, error) {
	out, _, code, err := lxdexec.Run(c, instance, command...)
	return strings.TrimSpace(out), code, err
}

// waitReady waits until the instance's systemd has booted and the base
// image's pre-loaded Docker images are in its Docker (the preload unit has
// finished), so services start from local images.
func waitReady(ctx context.Context, c lxd.InstanceServer, instance string) error {
	var last string
	for {
		state, _, err := runIn(c, instance, "systemctl", "is-system-running")
		if err != nil {
			last = err.Error()
		} else {
			last = "systemd is " + state
			if state == "running" || state == "degraded" {
				preload, _, _ := runIn(c, instance, "systemctl", "show", "-p", "ActiveState", "--value", "ssbuild-preload.service")
				docker, code, _ := runIn(c, instance, "docker", "version", "--format", "{{.Server.Version}}")
				switch {
				case preload == "failed":
					return fmt.Errorf("instance %s: loading the pre-loaded Docker images failed (journalctl -u ssbuild-preload.service in the instance)", instance)
				case preload != "activating" && code == 0:
					return nil
				default:
					last = fmt.Sprintf("preload %s, docker %q", preload, docker)
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("instance %s not ready (%s): %w", instance, last, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
