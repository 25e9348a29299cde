package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/appliance/cluster"
	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/fence"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/appliance/service"
	"github.com/sovereign-stack/ssbuild/handoff/config"
)

func clusterCommand() *cli.Command {
	return &cli.Command{
		Name:  "cluster",
		Usage: "change the formed cluster, from one of its members",
		Subcommands: []*cli.Command{
			{
				Name: "rotate-secret",
				Usage: "replace the cluster secret on every member, through their running appliance services: " +
					"afterwards old sticks and the old secret are refused; the new secret goes to --out (0600, never printed) " +
					"for the recipe's cluster secret file and new sticks",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: config.DefaultPath, Usage: "this member's appliance.yaml `FILE`"},
					&cli.StringFlag{Name: "lxd-dir", Value: "/var/lib/lxd", EnvVars: []string{"LXD_DIR"},
						Usage: "LXD's directory `DIR` (unix.socket, server certificate)"},
					&cli.StringFlag{Name: "out", Required: true, Usage: "new `FILE` for the new secret (must not exist)"},
					&cli.BoolFlag{Name: "json", Usage: "machine-readable output"},
				},
				Action: clusterRotateSecret,
			},
		},
	}
}

func hostCommand() *cli.Command {
	return &cli.Command{
		Name:  "host",
		Usage: "change the cluster's hosts, from one of its members",
		Subcommands: []*cli.Command{
			{
				Name: "remove",
				Usage: "move the host's instances and their volumes (stopped first, started again) to the other members, " +
					"then remove it from the registry and the LXD cluster; refuses, naming what, if the others cannot take them. " +
					"Stop the host's appliance service first: it joins again while the recipe lists it",
				ArgsUsage: "NAME",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: config.DefaultPath, Usage: "this member's appliance.yaml `FILE`"},
					&cli.StringFlag{Name: "lxd-dir", Value: "/var/lib/lxd", EnvVars: []string{"LXD_DIR"}, Usage: "LXD's directory `DIR` (unix.socket)"},
					&cli.BoolFlag{Name: "dry-run", Usage: "print where each instance would go, change nothing"},
				},
				Action: hostRemove,
			},
			{
				Name: "replace",
				Usage: "forget a dead host (offline in LXD): remove it from the registry and, forced, from the LXD cluster, " +
					"then deploy: its instances come up on the others from the replicas of their volumes (empty without one). " +
					"Each instance's replica age (the data lost) is listed first; without --yes nothing changes. " +
					"The re-installed machine joins with its stick",
				ArgsUsage: "NAME",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: config.DefaultPath, Usage: "this member's appliance.yaml `FILE`"},
					&cli.StringFlag{Name: "lxd-dir", Value: "/var/lib/lxd", EnvVars: []string{"LXD_DIR"}, Usage: "LXD's directory `DIR` (unix.socket)"},
					&cli.BoolFlag{Name: "yes", Usage: "remove it (without: only list what is lost)"},
				},
				Action: hostReplace,
			},
		},
	}
}

func hostReplace(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("host replace takes one host name")
	}
	name := c.Args().First()
	a, err := config.Load(c.String("config"))
	if err != nil {
		return invalidError{err}
	}
	lxdc, err := connectLXD(c)
	if err != nil {
		return err
	}
	forget := func(ctx context.Context) error {
		m, _, err := lxdc.GetClusterMember(name)
		if err != nil {
			return err
		}
		u, err := url.Parse(m.URL)
		if err != nil {
			return fmt.Errorf("%s: address %q: %w", name, m.URL, err)
		}
		return service.Forget(ctx, a, name, u.Hostname())
	}
	// What each lost instance comes back with, read while LXD still
	// lists the member's instances: said before anything changes.
	if _, err := cluster.ReplaceDead(c.Context, lxdc, name, false, nil); err != nil {
		return err
	}
	lost, err := deploy.LostWith(lxdc, name)
	if err != nil {
		return fmt.Errorf("replace %s: %w", name, err)
	}
	now := time.Now()
	for _, l := range lost {
		if l.Replica != "" {
			fmt.Fprintf(c.App.Writer, "%s/%s: replica of its volumes on %s as of %s (%s ago): what it wrote since then is lost\n",
				l.Project, l.Instance, l.Replica, l.Refreshed.Format(time.RFC3339), now.Sub(l.Refreshed).Round(time.Second))
		} else {
			what := "its volumes"
			if len(l.Missing) > 0 {
				what = strings.Join(l.Missing, ", ")
			}
			fmt.Fprintf(c.App.Writer, "%s/%s: no replica of %s: it comes back empty\n", l.Project, l.Instance, what)
		}
	}
	if !c.Bool("yes") {
		what := "no instances"
		if len(lost) > 0 {
			what = fmt.Sprintf("%d instances (above)", len(lost))
		}
		fmt.Fprintf(c.App.Writer, "%s is offline; replacing it loses %s. A Lightning node among them stays down, its replica being a periodic copy, "+
			"until `ssbuild lightning recover` brings it back from its static backup. Make sure %s is powered off (if it still runs, cut off, "+
			"its own copy of the node goes on). Run again with --yes to remove it and bring the instances up on the others.\n", name, what, name)
		return nil
	}
	// Fenced first: should anything below fail, no copy of these nodes
	// from before (the replica, the lost member's) starts again.
	state := &deploystate.Client{Socket: filepath.Join(a.StateDir, service.SocketName)}
	fenced, err := deploy.FenceReplicas(c.Context, state, lost)
	if err != nil {
		return fmt.Errorf("replace %s: fence its Lightning nodes (nothing changed in the cluster): %w", name, err)
	}
	if _, err := cluster.ReplaceDead(c.Context, lxdc, name, true, forget); err != nil {
		return err
	}
	if err := deploy.Promote(c.Context, lxdc, lost); err != nil {
		return fmt.Errorf("replace %s: removed, but not every replica was taken as its instance's volume: %w", name, err)
	}
	fmt.Fprintf(c.App.Writer, "%s removed; the re-installed machine joins with its stick\n", name)
	for _, node := range fenced {
		project, instance, _ := strings.Cut(node, "/")
		fmt.Fprintf(c.App.Writer, "%s: its Lightning node stays down: the replica's channel database is a periodic copy and may be older than "+
			"the node's last state (starting from it could broadcast a revoked channel state). Recover the node's funds from its static backup "+
			"(its peers close the channels): ssbuild lightning recover %s %s --yes\n", node, project, instance)
	}
	if len(lost) == 0 {
		return nil
	}
	if a.Deploy == nil || a.Deploy.Recipe == "" {
		fmt.Fprintf(c.App.Writer, "this host has no deploy section: run ssbuild deploy to bring the instances up where their replicas are\n")
		return nil
	}
	// The deploy brings the lost instances up where their replicas are,
	// with the deployment's secrets from the registry.
	r, err := loadRecipe(a.Deploy.Recipe)
	if err != nil {
		return err
	}
	began := time.Now()
	o := deploy.Options{LXD: lxdc, Recipe: r, ImageDir: a.Deploy.Image, State: state, Member: a.Host.Name, Progress: progressFor(c)}
	rep, err := deploy.Deploy(c.Context, o)
	// Right after a member was lost LXD's database may still fail a call
	// while another member takes over its role; the deploy changes only
	// what differs, so it is run again (twice at most).
	for try := 2; err != nil && !onlyFenced(err, fenced) && try <= 3 && c.Context.Err() == nil; try++ {
		fmt.Fprintf(c.App.Writer, "deploy on the others failed (%v); running it again in %s (try %d of 3)\n", err, replaceRetry, try)
		time.Sleep(replaceRetry)
		rep, err = deploy.Deploy(c.Context, o)
	}
	for _, in := range rep.Instances {
		if slices.ContainsFunc(lost, func(l deploy.Lost) bool { return l.Project == in.Project && l.Instance == in.Name }) {
			fmt.Fprintf(c.App.Writer, "%s/%s: up on %s\n", in.Project, in.Name, in.Member)
		}
	}
	if err != nil && !onlyFenced(err, fenced) {
		return fmt.Errorf("replace %s: deploy on the others: %w", name, err)
	}
	fmt.Fprintf(c.App.Writer, "deployed on the others in %s (%d changes)\n", time.Since(began).Round(time.Second), rep.Mutations)
	return nil
}

// replaceRetry is how long host replace waits before deploying again.
const replaceRetry = 15 * time.Second

// onlyFenced says whether every error the deploy joined is the refusal of
// one of the nodes host replace fenced: expected, and said above.
func onlyFenced(err error, nodes []string) bool {
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var r *fence.Refused
		if !errors.As(e, &r) || !slices.Contains(nodes, r.Node) {
			return false
		}
	}
	return len(errs) > 0
}

func hostRemove(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("host remove takes one host name")
	}
	name := c.Args().First()
	path := c.String("config")
	a, err := config.Load(path)
	if err != nil {
		return invalidError{err}
	}
	if name == a.Host.Name {
		return usagef("%s is this host: remove it from another member", name)
	}
	lxdc, err := connectLXD(c)
	if err != nil {
		return err
	}
	if c.Bool("dry-run") {
		moves, err := cluster.PlanRemoval(lxdc, name)
		for _, mv := range moves {
			if mv.To != "" {
				fmt.Fprintf(c.App.Writer, "%s/%s: to %s (%d bytes, %d volumes)\n", mv.Project, mv.Instance, mv.To, mv.Bytes, len(mv.Volumes))
			}
		}
		return err
	}
	members, err := lxdc.GetClusterMembers()
	if err != nil {
		return fmt.Errorf("list members (GET /1.0/cluster/members): %w", err)
	}
	addr := ""
	for _, m := range members {
		if m.ServerName == name {
			if u, err := url.Parse(m.URL); err == nil {
				addr = u.Hostname()
			}
		}
	}
	forget := func(ctx context.Context) error {
		if addr == "" {
			return fmt.Errorf("%s: no address in LXD to find its registry node by", name)
		}
		return service.Forget(ctx, a, name, addr)
	}
	return cluster.RemoveHost(c.Context, lxdc, name, forget, progressFor(c))
}

func clusterRotateSecret(c *cli.Context) error {
	a, err := loadAppliance(c)
	if err != nil {
		return err
	}
	old, err := config.ReadSecret(a.SecretFile)
	if err != nil {
		return invalidError{err}
	}
	lxdc, err := connectLXD(c)
	if err != nil {
		return err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return fmt.Errorf("new secret: %w", err)
	}
	secret := []byte(hex.EncodeToString(raw))
	// The deployments' secrets are sealed under the cluster's data key,
	// which the registry keeps wrapped under a key from each cluster secret
	// in use (appliance/deploystate): it gets a wrapping under the new
	// secret before any member takes it, so a member that restarts with
	// either secret opens them. Only the new secret's KEK crosses the
	// socket.
	kek, err := secrets.DeriveKEK(secret, a.Cluster.Name)
	if err != nil {
		return err
	}
	state := &deploystate.Client{Socket: filepath.Join(a.StateDir, service.SocketName)}
	keep, err := state.AddWrapping(c.Context, kek)
	if err != nil {
		return fmt.Errorf("cluster rotate-secret: cannot wrap the deployments' data key under the new secret, so nothing was changed: %w", err)
	}
	// Kept before any member takes it: a partial rotation can be finished.
	if err := config.WriteSecret(c.String("out"), secret); err != nil {
		return err
	}
	results, rerr := cluster.RotateSecret(c.Context, cluster.RotateOptions{
		Config: a, Secret: old, NewSecret: secret, LXD: lxdc, LXDDir: c.String("lxd-dir"),
	})
	if c.Bool("json") {
		type row struct {
			Host  string `json:"host"`
			Error string `json:"error,omitempty"`
		}
		rows := []row{}
		for _, r := range results {
			rr := row{Host: r.Host}
			if r.Err != nil {
				rr.Error = r.Err.Error()
			}
			rows = append(rows, rr)
		}
		if err := writeJSON(c.App.Writer, rows); err != nil {
			return err
		}
	} else {
		for _, r := range results {
			if r.Err != nil {
				fmt.Fprintf(c.App.Writer, "%s: kept the old secret: %v\n", r.Host, r.Err)
			} else {
				fmt.Fprintf(c.App.Writer, "%s: holds the new secret\n", r.Host)
			}
		}
		if rerr == nil {
			fmt.Fprintf(c.App.Writer, "new secret in %s: put it where the recipe's cluster.secret.file points before building sticks\n", c.String("out"))
		}
	}
	if rerr != nil {
		// The old secret's wrapping stays: a member still holding it opens
		// the deployments' secrets until a rotation reaches every member.
		return rerr
	}
	// Every member holds the new secret: the old secrets no longer open
	// the data key.
	n, err := state.RemoveWrappings(c.Context, keep)
	if err != nil {
		return fmt.Errorf("cluster rotate-secret: every member holds the new secret, but the data key's wrappings under older secrets were not removed: %w", err)
	}
	if !c.Bool("json") {
		fmt.Fprintf(c.App.Writer, "deployment secrets: the data key is now wrapped under the new secret only (%d older wrappings removed)\n", n)
	}
	return nil
}
