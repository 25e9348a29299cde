// Package demobed is the last part of `make demo`: it starts three hosts
// on this machine (appliance/testbed: network namespaces, each with its own
// LXD), gives them what the installer writes (appliance.yaml, the cluster
// secret; on the initiator the recipe file and a deploy section) and runs
// each host's `ssbuild appliance run` inside it, as its first-boot unit
// would: the services form one LXD cluster and the registry, and the
// initiator's deploys the recipe's sites from the demo base image. Then it
// asks every site's URL through a member's port 80 the way a browser on
// the LAN would, prints `ssbuild appliance status` and `ssbuild show`, and
// removes everything it started.
package demobed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/service"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/configtest"
	"github.com/sovereign-stack/ssbuild/testkit/deploytest"
	"github.com/sovereign-stack/ssbuild/testkit/servicetest"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// Options say what to deploy.
type Options struct {
	Recipe   *recipes.Recipe // the demo recipe
	ImageDir string          // its base image (`ssbuild image` output)
	// Binary is the ssbuild that runs as each host's service: one with the
	// registry (make build's bin/ssbuild).
	Binary   string
	Out      io.Writer // the answers, the status and the show table
	Progress *progress.Reporter
}

// deployTimeout bounds the wait for the initiator's first deploy.
const deployTimeout = 20 * time.Minute

// Run deploys the recipe onto a fresh three-host bed through the hosts'
// own first-boot service and checks every site answers; it fails when one
// does not.
func Run(ctx context.Context, o Options) (err error) {
	o.Progress.Info("starting three hosts (network namespaces, one LXD each)")
	bed, err := testbed.Start(ctx, testbed.Options{Hosts: 3, Progress: o.Progress})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := bed.Close(); err == nil {
			err = cerr
		}
	}()
	hosts, _, err := configtest.Write(bed)
	if err != nil {
		return err
	}
	r := configtest.BedRecipe(o.Recipe)
	if _, err := servicetest.WithDeploy(hosts, r, o.ImageDir); err != nil {
		return err
	}
	o.Progress.Info("running every host's first-boot service (%s appliance run): cluster, registry, then the initiator deploys", o.Binary)
	began := time.Now()
	var procs []*servicetest.Process
	defer func() {
		for _, p := range procs {
			err = errors.Join(err, p.Stop())
		}
	}()
	for _, h := range hosts {
		p := &servicetest.Process{Host: h, Line: func(l string) { o.Progress.Info("%s", l) },
			Command: func(ctx context.Context, h configtest.Host) *exec.Cmd {
				return h.Bed.Command(ctx, o.Binary, "appliance", "run", "--config", h.Path)
			}}
		if err := p.Start(ctx); err != nil {
			return err
		}
		procs = append(procs, p)
	}
	init := hosts[0]
	wctx, cancel := context.WithTimeout(ctx, deployTimeout)
	defer cancel()
	st, err := servicetest.WaitDeployed(wctx, init, began)
	if err != nil {
		return err
	}
	o.Progress.Info("%s deployed %s after its service started (%s)", init.Bed.Name, time.Since(began).Round(time.Second), st.Detail)

	failed := 0
	for _, d := range r.Deployments {
		member := ""
		if in, _, err := init.Bed.LXD().UseProject(d.Project()).GetInstance("www"); err == nil {
			member = in.Location
		}
		for _, u := range stack.URLs(d) {
			if !strings.HasPrefix(u.URL, "http://") && !strings.HasPrefix(u.URL, "ws://") {
				continue // the demo serves plain HTTP (its relay stand-in too)
			}
			status, body, err := deploytest.AskSite(ctx, bed, member, u.URL)
			answer := fmt.Sprintf("%s %q", status, body)
			if err != nil {
				failed++
				answer = "FAILED: " + err.Error()
			}
			fmt.Fprintf(o.Out, "%-32s -> %s\n", u.URL, answer)
		}
	}
	fmt.Fprintln(o.Out)
	if err := service.Status(ctx, init.Config, init.Bed.LXD(), nil).Write(o.Out, time.Now()); err != nil {
		return err
	}
	// As `ssbuild show` on a member: the deployment's state is the
	// registry's, reached through the host's service.
	do := deploy.Options{LXD: init.Bed.LXD(), Recipe: r,
		State: &deploystate.Client{Socket: filepath.Join(init.Config.StateDir, service.SocketName)}}
	state, err := deploy.Show(ctx, do)
	if err != nil {
		return err
	}
	fmt.Fprintln(o.Out)
	if err := state.WriteText(o.Out); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d site URLs did not answer", failed)
	}
	return nil
}
