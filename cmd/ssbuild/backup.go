package main

import (
	"fmt"
	"strings"

	"filippo.io/age"
	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/appliance/backup"
	"github.com/sovereign-stack/ssbuild/appliance/deploy"
)

// backupCommand is `ssbuild backup DEPLOYMENT --to DIR` and `ssbuild
// backup verify DIR`.
func backupCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup",
		Usage:     "back up a deployment's databases (consistent dumps) and declared volume data, encrypted to backup.recipients",
		ArgsUsage: "DEPLOYMENT",
		Description: "What each service's x-backup declares (recipes/stacks): first every database's dump, taken\n" +
			"in its running container, then the volume paths, each file age-encrypted to the recipe's\n" +
			"backup.recipients, with manifest.json and SHA256SUMS. Paths declared neverRestore (a Lightning\n" +
			"node's live channel database) are never copied. The folder must be new or empty.",
		Flags: deployFlags(
			&cli.StringFlag{Name: "to", Usage: "the backup folder `DIR` (new or empty; a USB disk or NAS mount)"},
		),
		Action: backupAction,
		Subcommands: []*cli.Command{{
			Name:      "verify",
			Usage:     "check a backup folder: every file's sha256, nothing missing or added; with --identity, that each decrypts",
			ArgsUsage: "DIR",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "identity", Usage: "age identity `FILE` (age-keygen's) to decrypt every file with"},
			},
			Action: backupVerifyAction,
		}},
	}
}

func backupAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("backup takes one deployment name")
	}
	if c.String("to") == "" {
		return usagef("backup needs --to DIR, the folder to write the backup into")
	}
	r, err := loadRecipe(c.String("recipe"))
	if err != nil {
		return err
	}
	if _, err := deploy.FindDeployment(r, c.Args().First()); err != nil {
		return usageError{err}
	}
	o, err := deployOptions(c)
	if err != nil {
		return err
	}
	m, err := backup.Run(c.Context, backup.Options{LXD: o.LXD, Recipe: r, Deployment: c.Args().First(),
		To: c.String("to"), State: o.State, Progress: o.Progress})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%s: %d files in %s (%d never-restore paths left out, %d declared paths absent)\n",
		m.Project, len(m.Items), c.String("to"), len(m.NeverRestored), len(m.Absent))
	return nil
}

func backupVerifyAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("backup verify takes one folder")
	}
	var ids []age.Identity
	if f := c.String("identity"); f != "" {
		var err error
		if ids, err = backup.ReadIdentities(f); err != nil {
			return err
		}
	}
	m, err := backup.Verify(c.Args().First(), ids)
	if err != nil {
		return err
	}
	what := "sums match"
	if len(ids) > 0 {
		what = "sums match, every file decrypts"
	}
	fmt.Fprintf(c.App.Writer, "%s: backup of %s taken %s: %d files, %s\n", c.Args().First(), m.Project,
		m.Created.Format("2006-01-02 15:04:05Z"), len(m.Items), what)
	return nil
}

// restoreCommand is `ssbuild restore DEPLOYMENT --from DIR --identity FILE`.
func restoreCommand() *cli.Command {
	return &cli.Command{
		Name:      "restore",
		Usage:     "put a backup back into the running deployment it was taken from",
		ArgsUsage: "DEPLOYMENT",
		Description: "Verifies the whole backup first (nothing changes when a file is damaged or does not decrypt),\n" +
			"then copies the volume paths back and feeds each dump to its service's restore command.\n" +
			"Never-restore paths (a Lightning node's live channel database) are not in a backup and stay as they are.\n" +
			"A Lightning node is stopped meanwhile, then gets a new generation (an older copy of it never starts\n" +
			"again) and is started. A backup older than the node's live state (its generation moved on since) is\n" +
			"refused unless " + backup.RecoverFlag + ", which puts back only the node's static\n" +
			"backup files (hsm_secret, emergency.recover), never its channel database.",
		Flags: deployFlags(
			&cli.StringFlag{Name: "from", Usage: "the backup folder `DIR`"},
			&cli.StringFlag{Name: "identity", Usage: "age identity `FILE` (the private key of one of backup.recipients)"},
			&cli.BoolFlag{Name: strings.TrimPrefix(backup.RecoverFlag, "--"),
				Usage: "recover the Lightning node from its static backup only (hsm_secret, emergency.recover), also from a backup older than its live state"},
		),
		Action: restoreAction,
	}
}

func restoreAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("restore takes one deployment name")
	}
	if c.String("from") == "" || c.String("identity") == "" {
		return usagef("restore needs --from DIR (the backup) and --identity FILE (its key)")
	}
	r, err := loadRecipe(c.String("recipe"))
	if err != nil {
		return err
	}
	if _, err := deploy.FindDeployment(r, c.Args().First()); err != nil {
		return usageError{err}
	}
	ids, err := backup.ReadIdentities(c.String("identity"))
	if err != nil {
		return err
	}
	o, err := deployOptions(c)
	if err != nil {
		return err
	}
	if err := backup.Restore(c.Context, backup.RestoreOptions{LXD: o.LXD, Recipe: r, Deployment: c.Args().First(),
		From: c.String("from"), Identities: ids, State: o.State,
		RecoverLightning: c.Bool(strings.TrimPrefix(backup.RecoverFlag, "--")), Progress: o.Progress}); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%s: restored from %s\n", c.Args().First(), c.String("from"))
	return nil
}
