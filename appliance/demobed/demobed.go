// Package demobed is the last part of `make demo`: it starts three hosts
// on this machine (appliance/testbed: network namespaces, each with its own
// LXD), lets their cluster service form one LXD cluster, deploys the demo
// recipe's sites there from the demo base image, asks every site's URL
// through a member's port 80 the way a browser on the LAN would, prints
// `ssbuild show`, and removes everything it started.
package demobed

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/cluster/clustertest"
	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/appliance/testbed"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// Options say what to deploy.
type Options struct {
	Recipe   *recipes.Recipe // the demo recipe
	ImageDir string          // its base image (`ssbuild image` output)
	Out      io.Writer       // the answers and the show table
	Progress *progress.Reporter
}

// Run deploys the recipe onto a fresh three-host bed and checks every site
// answers; it fails when one does not.
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
	o.Progress.Info("forming the LXD cluster with the hosts' cluster service")
	if _, err := clustertest.FormBed(ctx, bed); err != nil {
		return err
	}
	// The bed's hosts have a dir pool "local" and a bridge "ssbr0".
	r := *o.Recipe
	r.Cluster.Storage.Pool, r.Cluster.Storage.Driver = "local", "dir"
	r.Cluster.Networks = []recipes.Network{{Name: "ssbr0", Type: "bridge"}}
	state, err := os.MkdirTemp("", "ssbuild-demo-state-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	do := deploy.Options{LXD: bed.Hosts[0].LXD(), Recipe: &r, ImageDir: o.ImageDir, StateDir: state, Progress: o.Progress}
	rep, err := deploy.Deploy(ctx, do)
	if err != nil {
		return err
	}
	failed := 0
	for _, d := range r.Deployments {
		member := ""
		for _, in := range rep.Instances {
			if in.Project == d.Project() && in.Name == "www" {
				member = in.Member
			}
		}
		for _, u := range stack.URLs(d) {
			if !strings.HasPrefix(u.URL, "http://") && !strings.HasPrefix(u.URL, "ws://") {
				continue // the demo serves plain HTTP (its relay stand-in too)
			}
			answer, err := ask(ctx, bed, member, u.URL)
			if err != nil {
				failed++
				answer = "FAILED: " + err.Error()
			}
			fmt.Fprintf(o.Out, "%-32s -> %s\n", u.URL, answer)
		}
	}
	st, err := deploy.Show(ctx, do)
	if err != nil {
		return err
	}
	fmt.Fprintln(o.Out)
	if err := st.WriteText(o.Out); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d site URLs did not answer", failed)
	}
	return nil
}

// ask GETs rawURL from another host, sent to port 80 of member (where the
// www instance's proxy devices listen), as DNS pointing there would.
func ask(ctx context.Context, bed *testbed.Bed, member, rawURL string) (string, error) {
	var at, from *testbed.Host
	for _, h := range bed.Hosts {
		if h.Name == member {
			at = h
		} else if from == nil {
			from = h
		}
	}
	if at == nil || from == nil {
		return "", fmt.Errorf("no www instance on a bed host (%q)", member)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return from.DialContext(ctx, network, net.JoinHostPort(at.Address.String(), "80"))
		}}}
	defer client.CloseIdleConnections()
	var last error
	// Services may still be starting: retry for up to 30 s.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+u.Host+"/", nil)
		if err != nil {
			return "", err
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return fmt.Sprintf("%s %q", resp.Status, strings.TrimSpace(string(body))), nil
			}
			err = fmt.Errorf("%s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return "", last
}
