package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	lxd "github.com/canonical/lxd/client"
	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/appliance/service"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// deployFlags are shared by deploy, down and show: the recipe, the LXD the
// cluster is reached through, and where the deployments' secrets live.
func deployFlags(extra ...cli.Flag) []cli.Flag {
	return append([]cli.Flag{
		recipeFlag(),
		&cli.StringFlag{Name: "lxd-dir", Value: "/var/lib/lxd", EnvVars: []string{"LXD_DIR"},
			Usage: "LXD's directory `DIR` (its unix.socket) on a cluster member; the snap's is /var/snap/lxd/common/lxd"},
		&cli.StringFlag{Name: "config", Value: config.DefaultPath,
			Usage: "the host's appliance.yaml `FILE`: where it exists (a cluster member) the deployments' secrets and revisions are the cluster's registry's, through the local service"},
		&cli.StringFlag{Name: "state-dir", Value: "/var/lib/ssbuild/deployments",
			Usage: "`DIR` of the deployments' secrets and revisions on a standalone LXD (0700 folder, 0600 files); on a cluster member, a secrets file found there is imported into the registry once and removed"},
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
			Name:      "rotate-secret",
			Usage:     "give one generated secret of a deployment a new value (recorded; the next deploy hands it to the services using it)",
			ArgsUsage: "DEPLOYMENT NAME",
			Description: "A database initialised with the old value keeps it until it is changed inside the database too:\n" +
				"rotate what the services read at start (admin passwords, RPC credentials).",
			Flags:  deployFlags(),
			Action: rotateAction,
		},
		{
			Name:      "migrate",
			Usage:     "move one instance of a deployment, with its volumes, to another cluster member",
			ArgsUsage: "DEPLOYMENT INSTANCE",
			Description: "Stops the instance, moves it and its custom volumes to --to MEMBER (as `host remove` does),\n" +
				"and starts it there. An instance running the deployment's Lightning node gives the node a new\n" +
				"generation, written into the moved copy: an older copy of it never starts its node again.\n" +
				"An unknown instance or member, or a member not online, is refused before any change.",
			Flags:  deployFlags(&cli.StringFlag{Name: "to", Usage: "the cluster `MEMBER` to move the instance to"}),
			Action: migrateAction,
		},
		{
			Name:  "lightning",
			Usage: "a deployment's Lightning node",
			Subcommands: []*cli.Command{{
				Name:      "recover",
				Usage:     "recover a Lightning node from its static backup: its channel database set aside, its peers close the channels",
				ArgsUsage: "DEPLOYMENT INSTANCE",
				Description: "For a node whose channel database may be older than its last state, such as one host replace\n" +
					"brought back from a replica (it stays down until this is run): stops the node, renames its\n" +
					"channel database to NAME.set-aside-<UTC time> (never deleted), gives the node a new generation\n" +
					"and starts it from its seed and static channel backup. Without --yes it only says what it would do.",
				Flags:  deployFlags(&cli.BoolFlag{Name: "yes", Aliases: []string{"y"}, Usage: "recover (the channels get closed)"}),
				Action: lightningRecoverAction,
			}},
		},
		{
			Name:   "show",
			Usage:  "the cluster's members and the recipe's deployments: current revision, instances, members, services, health, URLs",
			Flags:  deployFlags(&cli.BoolFlag{Name: "history", Usage: "every revision of each deployment (with --json also each one's recipe text)"}),
			Action: showAction,
		},
	}
}

func deployOptions(c *cli.Context) (deploy.Options, error) {
	r, err := loadRecipe(c.String("recipe"))
	if err != nil {
		return deploy.Options{}, err
	}
	return optionsFor(c, r)
}

// namedDeployment is the deployment the command's first argument names, and
// the options to act on it; a name the recipe lacks is a usage error, found
// before LXD is asked.
func namedDeployment(c *cli.Context) (recipes.Deployment, deploy.Options, error) {
	r, err := loadRecipe(c.String("recipe"))
	if err != nil {
		return recipes.Deployment{}, deploy.Options{}, err
	}
	d, err := deploy.FindDeployment(r, c.Args().First())
	if err != nil {
		return recipes.Deployment{}, deploy.Options{}, usageError{err}
	}
	o, err := optionsFor(c, r)
	return d, o, err
}

func optionsFor(c *cli.Context, r *recipes.Recipe) (deploy.Options, error) {
	lxdc, err := connectLXD(c)
	if err != nil {
		return deploy.Options{}, err
	}
	state, member, err := deployState(c, lxdc)
	if err != nil {
		return deploy.Options{}, err
	}
	return deploy.Options{LXD: lxdc, Recipe: r, State: state, Member: member, Progress: progressFor(c)}, nil
}

// deployState is where deploy, down and show find the deployments'
// secrets and revisions, the same for each: on a cluster member (its
// appliance.yaml exists) the registry through the local service, else
// (a standalone LXD) the --state-dir folder. A cluster member never falls
// back to a folder: that would be a second set of secrets.
func deployState(c *cli.Context, lxdc lxd.InstanceServer) (deploystate.Store, string, error) {
	host, _ := os.Hostname()
	path := c.String("config")
	a, err := config.Load(path)
	switch {
	case err == nil:
		return &deploystate.Client{Socket: filepath.Join(a.StateDir, service.SocketName), ImportDir: c.String("state-dir")}, a.Host.Name, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, "", invalidError{fmt.Errorf("the cluster member's config, for the registry that keeps the deployments' secrets: %w", err)}
	case c.IsSet("config"):
		return nil, "", invalidError{err}
	}
	if cl, _, err := lxdc.GetCluster(); err == nil && cl.Enabled {
		return nil, "", fmt.Errorf("this LXD is a cluster member (%s) but %s does not exist: on a cluster the deployments' secrets are in the registry, "+
			"reached through the local service its appliance.yaml names; pass --config FILE", cl.ServerName, path)
	}
	return deploystate.Folder{Dir: secrets.Dir(c.String("state-dir"))}, host, nil
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
	d, o, err := namedDeployment(c)
	if err != nil {
		return err
	}
	purge := c.Bool("purge")
	if purge {
		doomed, err := deploy.Doomed(c.Context, o, d)
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
	st, err := deploy.ShowWith(c.Context, o, deploy.ShowOptions{History: c.Bool("history")})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, st)
	}
	return st.WriteText(c.App.Writer)
}

func rotateAction(c *cli.Context) error {
	if c.NArg() != 2 {
		return usagef("rotate-secret takes a deployment and a secret name")
	}
	d, o, err := namedDeployment(c)
	if err != nil {
		return err
	}
	name := c.Args().Get(1)
	if err := o.State.Rotate(c.Context, d.Project(), name); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%s: secret %s has a new value in %s; run ssbuild deploy to hand it to the services\n", d.Project(), name, o.State.Where())
	return nil
}

func lightningRecoverAction(c *cli.Context) error {
	if c.NArg() != 2 {
		return usagef("lightning recover takes a deployment and an instance name")
	}
	d, o, err := namedDeployment(c)
	if err != nil {
		return err
	}
	instance := c.Args().Get(1)
	if !c.Bool("yes") {
		fmt.Fprintf(c.App.Writer, "%s/%s: recovering stops its Lightning node, sets its channel database aside and starts it from its seed and "+
			"static channel backup with a new generation: its peers close its channels and the funds come back on-chain. Run again with --yes.\n",
			d.Project(), instance)
		return nil
	}
	rec, err := deploy.RecoverLightning(c.Context, o, d.Project(), instance)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%s/%s: Lightning node recovered from its static backup, generation %d -> %d", rec.Project, rec.Instance, rec.Generations[0], rec.Generations[1])
	if rec.SetAside != "" {
		fmt.Fprintf(c.App.Writer, "; its channel database kept as *%s", rec.SetAside)
	}
	fmt.Fprintln(c.App.Writer)
	return nil
}

func migrateAction(c *cli.Context) error {
	if c.NArg() != 2 {
		return usagef("migrate takes a deployment and an instance name")
	}
	if c.String("to") == "" {
		return usagef("migrate needs --to MEMBER, the cluster member to move the instance to")
	}
	d, o, err := namedDeployment(c)
	if err != nil {
		return err
	}
	mg, err := deploy.Migrate(c.Context, o, d.Name, c.Args().Get(1), c.String("to"))
	if errors.Is(err, deploy.ErrMigrateRefused) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%s/%s: on %s (was on %s, %d volumes moved", mg.Project, mg.Instance, mg.To, mg.From, mg.Volumes)
	if mg.Bytes > 0 {
		fmt.Fprintf(c.App.Writer, ", %d MiB with the root disk", mg.Bytes>>20)
	}
	fmt.Fprint(c.App.Writer, ")")
	if mg.Generations[1] != 0 {
		fmt.Fprintf(c.App.Writer, "; Lightning generation %d -> %d", mg.Generations[0], mg.Generations[1])
	}
	fmt.Fprintln(c.App.Writer)
	return nil
}
