// Package servicetest runs the first-boot service on test-bed hosts the way
// installed hosts run it: each host's `ssbuild appliance run` a process of
// its own inside the host (the registry's dqlite opens its sockets from C
// threads, which only a process in the host's network namespace puts
// there), with the appliance.yaml and recipe file the installer writes.
// For tests and the demo.
package servicetest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/service"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/configtest"
)

// WithDeploy does what the installer does for a deploy: it writes r as the
// recipe file next to the bed's configs and gives the initiator (the first
// host) a deploy section naming it and imageDir. It returns the recipe
// file's path.
func WithDeploy(hosts []configtest.Host, r *recipes.Recipe, imageDir string) (string, error) {
	imageDir, err := filepath.Abs(imageDir) // appliance.yaml takes absolute paths only
	if err != nil {
		return "", err
	}
	init := hosts[0]
	if !init.Config.IsInitiator() {
		return "", fmt.Errorf("%s is not the bed's initiator", init.Bed.Name)
	}
	data, err := recipes.Marshal(r)
	if err != nil {
		return "", err
	}
	file := filepath.Join(filepath.Dir(filepath.Dir(init.Path)), "recipe.yaml")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return "", err
	}
	if _, err := recipes.Load(file); err != nil { // as the service will load it
		return "", fmt.Errorf("the bed's recipe file: %w", err)
	}
	init.Config.Deploy = &config.Deploy{Recipe: file, Image: imageDir}
	if data, err = config.Marshal(init.Config); err != nil {
		return "", err
	}
	return file, os.WriteFile(init.Path, data, 0o644)
}

// Process is one host's service process; Start it again after Stop.
type Process struct {
	Host configtest.Host
	// Command makes the service's command for a host's config file, inside
	// the host (testbed.Host.Command), e.g. `ssbuild appliance run --config`.
	Command func(ctx context.Context, h configtest.Host) *exec.Cmd
	// Line receives every line the service prints (stderr); it must be safe
	// for concurrent use.
	Line func(string)

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs the service; ctx ending stops it as systemctl stop would.
func (p *Process) Start(ctx context.Context) error {
	cmd := p.Command(ctx, p.Host)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = StopTimeout
	stderr, err := cmd.StderrPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		return fmt.Errorf("%s: start the service: %w", p.Host.Bed.Name, err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.Line(sc.Text())
		}
		if err := cmd.Wait(); err != nil && ctx.Err() == nil {
			p.Line(fmt.Sprintf("%s: service ended: %v", p.Host.Bed.Name, err))
		}
	}()
	return nil
}

// StopTimeout is how long Stop waits after SIGTERM before it kills: the
// service closes its registry node and cancels a deploy in flight.
const StopTimeout = 60 * time.Second

// Stop ends the service with SIGTERM (as systemctl stop), killing it if it
// has not exited within StopTimeout; it says whether SIGTERM was enough.
func (p *Process) Stop() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(StopTimeout):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s: service did not stop on SIGTERM within %s: killed", p.Host.Bed.Name, StopTimeout)
	}
}

// Kill ends the service with SIGKILL, as a host that loses power, and
// waits until it is gone.
func (p *Process) Kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// WaitDeployed waits until the host's status (the registry's row, the
// detail from its status file) says deployed, written after since, and
// returns it.
func WaitDeployed(ctx context.Context, h configtest.Host, since time.Time) (service.HostStatus, error) {
	last := ""
	for {
		r := service.Status(ctx, h.Config, h.Bed.LXD(), nil)
		for _, hs := range r.Hosts {
			if hs.Name != h.Bed.Name {
				continue
			}
			if hs.Source == service.FromRegistry && hs.Step == string(service.StepDeployed) && hs.Updated.After(since) && hs.Detail != "" {
				return hs, nil
			}
			last = fmt.Sprintf("%s at %q (%s), last error %q", hs.Name, hs.Step, hs.Source, hs.LastError)
		}
		select {
		case <-ctx.Done():
			return service.HostStatus{}, fmt.Errorf("%s not deployed: %w; last: %s", h.Bed.Name, ctx.Err(), last)
		case <-time.After(2 * time.Second):
		}
	}
}
