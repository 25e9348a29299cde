package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/appliance/cluster"
	"github.com/sovereign-stack/ssbuild/appliance/service"
	"github.com/sovereign-stack/ssbuild/handoff/config"
)

func applianceCommand() *cli.Command {
	flags := func(extra ...cli.Flag) []cli.Flag {
		return append([]cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: config.DefaultPath, Usage: "the host's appliance.yaml `FILE`"},
			&cli.StringFlag{Name: "lxd-dir", Value: "/var/lib/lxd", EnvVars: []string{"LXD_DIR"},
				Usage: "LXD's directory `DIR` (unix.socket, server and cluster certificates); the snap's is /var/snap/lxd/common/lxd"},
			&cli.BoolFlag{Name: "json", Usage: "machine-readable output"},
		}, extra...)
	}
	return &cli.Command{
		Name:  "appliance",
		Usage: "first boot of a cluster host: form the LXD cluster, run the registry, deploy",
		Subcommands: []*cli.Command{
			{
				Name: "run",
				Usage: "form or join the LXD cluster, then run this host's registry node until stopped; " +
					"with a deploy section in its config, the host holding the registry's deploy lease deploys the recipe once every member is online " +
					"(the first-boot unit's command; safe to run again after any failure)",
				Flags:  flags(),
				Action: applianceRun,
			},
			{
				Name:   "status",
				Usage:  "cluster members, registry members and leader, and every host's step and last error",
				Flags:  flags(),
				Action: applianceStatus,
			},
		},
	}
}

// loadAppliance reads --config; a file with problems is invalid input.
func loadAppliance(c *cli.Context) (*config.Appliance, error) {
	if c.Args().Present() {
		return nil, usagef("%s takes no arguments; use --config", c.Command.Name)
	}
	a, err := config.Load(c.String("config"))
	var inv *config.InvalidError
	var pathErr *fs.PathError
	if errors.As(err, &inv) || errors.As(err, &pathErr) {
		return nil, invalidError{err} // with problems, or missing or unreadable
	}
	return a, err
}

func connectLXD(c *cli.Context) (lxd.InstanceServer, error) {
	sock := filepath.Join(c.String("lxd-dir"), "unix.socket")
	s, err := lxd.ConnectLXDUnix(sock, nil)
	if err != nil {
		return nil, fmt.Errorf("connect to LXD at %s: %w", sock, err)
	}
	return s, nil
}

func applianceRun(c *cli.Context) error {
	a, err := loadAppliance(c)
	if err != nil {
		return err
	}
	secret, err := config.ReadSecret(a.SecretFile)
	if err != nil {
		return invalidError{err} // missing, unreadable, open to others or too short
	}
	lxdc, err := connectLXD(c)
	if err != nil {
		return err
	}
	// SIGTERM (systemctl stop) ends the context: the registry node hands
	// over leadership and stops. A stop is a clean exit at any step: the
	// next start continues from there.
	err = service.Run(c.Context, service.Options{Host: cluster.Host{
		Config: a, Secret: secret, LXD: lxdc, LXDDir: c.String("lxd-dir"),
		Progress: progressFor(c),
	}})
	if err != nil && c.Context.Err() != nil && errors.Is(err, context.Canceled) {
		fmt.Fprintf(c.App.ErrWriter, "%s: stopped: %v\n", a.Host.Name, err)
		return nil
	}
	return err
}

func applianceStatus(c *cli.Context) error {
	a, err := loadAppliance(c)
	if err != nil {
		return err
	}
	lxdc, lxdErr := connectLXD(c)
	r := service.Status(c.Context, a, lxdc, lxdErr)
	if c.Bool("json") {
		return writeJSON(c.App.Writer, r)
	}
	return r.Write(c.App.Writer, time.Now())
}
