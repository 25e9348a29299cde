package main

import (
	"bufio"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
)

// deployFlags are shared by deploy, down and show: the recipe, the LXD the
// cluster is reached through, and where the deployments' secrets live.
func deployFlags(extra ...cli.Flag) []cli.Flag {
	return append([]cli.Flag{
		recipeFlag(),
		&cli.StringFlag{Name: "lxd-dir", Value: "/var/lib/lxd", EnvVars: []string{"LXD_DIR"},
			Usage: "LXD's directory `DIR` (its unix.socket) on a cluster member; the snap's is /var/snap/lxd/common/lxd"},
		&cli.StringFlag{Name: "state-dir", Value: "/var/lib/ssbuild/deployments",
			Usage: "`DIR` where each deployment's generated secrets are kept (0700 folder, 0600 files)"},
		&cli.BoolFlag{Name: "json", Usage: "machine-readable output (progress as JSON events on stderr)"},
	}, extra...)
}

func deployCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name:      "deploy",
			Usage:     "deploy the recipe's sites onto the LXD cluster (safe to run again: changes only what differs)",
			ArgsUsage: "[DEPLOYMENT...]",
			Description: "Per deployment: the LXD project <name>-<chain>, its instances spread over the members\n" +
				"(with volumes and cloud-init), then each instance's Docker services. A re-run with no\n" +
				"change makes no change; a changed service is the only one recreated.",
			Flags: deployFlags(
				&cli.StringFlag{Name: "image", Usage: "output `DIR` of ssbuild image, imported when the base image is not in LXD yet"},
				&cli.IntFlag{Name: "parallel", Usage: "`N` instances deployed at once", DefaultText: "all"},
			),
			Action: deployAction,
		},
		{
			Name:      "down",
			Usage:     "stop and remove a deployment's services and instances; volumes are kept unless --purge",
			ArgsUsage: "DEPLOYMENT",
			Flags: deployFlags(
				&cli.BoolFlag{Name: "purge", Usage: "also delete the volumes (site data, Docker data, backups), the project and the secrets"},
				&cli.BoolFlag{Name: "yes", Aliases: []string{"y"}, Usage: "do not ask before --purge deletes"},
			),
			Action: downAction,
		},
		{
			Name:   "show",
			Usage:  "the cluster's members and the recipe's deployments: instances, members, services, health, URLs",
			Flags:  deployFlags(),
			Action: showAction,
		},
	}
}

func deployOptions(c *cli.Context) (deploy.Options, error) {
	r, err := loadRecipe(c.String("recipe"))
	if err != nil {
		return deploy.Options{}, err
	}
	lxdc, err := connectLXD(c)
	if err != nil {
		return deploy.Options{}, err
	}
	return deploy.Options{LXD: lxdc, Recipe: r, StateDir: c.String("state-dir"), Progress: progressFor(c)}, nil
}

func deployAction(c *cli.Context) error {
	// Unknown deployment names are a wrong command line, known before
	// anything connects (as in down).
	r, err := loadRecipe(c.String("recipe"))
	if err != nil {
		return err
	}
	if err := inputDir(c, "image"); err != nil {
		return err
	}
	for _, name := range c.Args().Slice() {
		if _, err := deploy.FindDeployment(r, name); err != nil {
			return usageError{err}
		}
	}
	o, err := deployOptions(c)
	if err != nil {
		return err
	}
	o.Deployments = c.Args().Slice()
	o.ImageDir = c.String("image")
	o.Parallel = c.Int("parallel")
	rep, err := deploy.Deploy(c.Context, o)
	if c.Bool("json") {
		if jerr := writeJSON(c.App.Writer, rep); jerr != nil {
			return jerr
		}
		return err
	}
	for _, in := range rep.Instances {
		s := in.Services
		fmt.Fprintf(c.App.Writer, "%s/%s on %s: %d services created, %d recreated, %d unchanged, %d removed\n",
			in.Project, in.Name, in.Member, len(s.Created), len(s.Recreated), len(s.Unchanged), len(s.Removed))
	}
	for _, in := range rep.Removed {
		fmt.Fprintf(c.App.Writer, "%s/%s on %s: removed (no longer in the recipe; its volumes are kept)\n", in.Project, in.Name, in.Member)
	}
	if err == nil {
		fmt.Fprintf(c.App.Writer, "deployed: %d changes\n", rep.Mutations)
	}
	return err
}

func downAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("down takes one deployment name")
	}
	r, err := loadRecipe(c.String("recipe"))
	if err != nil {
		return err
	}
	d, err := deploy.FindDeployment(r, c.Args().First())
	if err != nil {
		return usageError{err}
	}
	o, err := deployOptions(c)
	if err != nil {
		return err
	}
	purge := c.Bool("purge")
	if purge {
		doomed, err := deploy.Doomed(o, d)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.App.ErrWriter, "down --purge deletes for good:\n  %s\n", strings.Join(doomed, "\n  "))
		if !c.Bool("yes") {
			fmt.Fprintf(c.App.ErrWriter, "type the deployment name (%s) to confirm: ", d.Name)
			answer, _ := bufio.NewReader(c.App.Reader).ReadString('\n')
			if strings.TrimSpace(answer) != d.Name {
				return fmt.Errorf("down --purge of %s not confirmed: nothing deleted (use --yes to skip the question)", d.Name)
			}
		}
	}
	rep, err := deploy.Down(c.Context, o, d, purge)
	if err != nil {
		return err
	}
	kept := "volumes kept"
	if purge {
		kept = "volumes, project and secrets deleted"
	}
	fmt.Fprintf(c.App.Writer, "%s: %d instances removed, %s\n", d.Project(), len(rep.Instances), kept)
	return nil
}

func showAction(c *cli.Context) error {
	if c.Args().Present() {
		return usagef("show takes no arguments")
	}
	o, err := deployOptions(c)
	if err != nil {
		return err
	}
	st, err := deploy.Show(c.Context, o)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, st)
	}
	return st.WriteText(c.App.Writer)
}
