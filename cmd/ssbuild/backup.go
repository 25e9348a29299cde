package main

import (
	"fmt"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/appliance/backup"
	"github.com/sovereign-stack/ssbuild/appliance/deploy"
)

// backupCommand is `ssbuild backup DEPLOYMENT --to DIR`, `backup verify
// DIR`, `backup list DIR` and `backup prune DIR --keep N`.
func backupCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup",
		Usage:     "back up a deployment's databases (consistent dumps) and declared volume data, encrypted to backup.recipients",
		ArgsUsage: "DEPLOYMENT",
		Description: "What each service's x-backup declares (recipes/stacks): first every database's dump, taken\n" +
			"in its running container, then the volume paths, each file age-encrypted to the recipe's\n" +
			"backup.recipients, in content-defined chunks: a second backup into the same folder writes only\n" +
			"the chunks that changed, and each backup stays whole on its own (backups/NAME: a signed\n" +
			"manifest.json and SHA256SUMS). Paths declared neverRestore (a Lightning node's live channel\n" +
			"database) are never copied. The folder must be new, empty or hold only backups.",
		Flags: deployFlags(
			&cli.StringFlag{Name: "to", Usage: "the backup folder `DIR` (new, empty, or holding earlier backups; a USB disk or NAS mount)"},
		),
		Action: backupAction,
		Subcommands: []*cli.Command{{
			Name:      "verify",
			Usage:     "check every backup in a folder (or one, backups/NAME): signatures, every chunk's sha256, nothing missing or added; with --identity, that each decrypts",
			ArgsUsage: "DIR",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "identity", Usage: "age identity `FILE` (age-keygen's) to decrypt every chunk with"},
				&cli.StringFlag{Name: "signer", Usage: "the public `KEY` (ed25519:...) that backup printed: every manifest must be signed with it"},
			},
			Action: backupVerifyAction,
		}, {
			Name:      "test",
			Usage:     "restore test: restore a deployment's newest backup into a scratch copy, check it, remove the copy; the live deployment is not touched",
			ArgsUsage: "DEPLOYMENT",
			Description: "Verifies the deployment's newest backup in the folder (every chunk decrypted), deploys a scratch copy\n" +
				"of the deployment, <name>" + deploy.ScratchSuffix + " (its own LXD project and fresh secrets; its www binds no\n" +
				"port of its member, asks no CA for certificates and reaches nothing outside its instance; without\n" +
				"its Lightning node, which never runs twice), restores the backup into it (the Lightning node's files are verified, never restored), checks\n" +
				"that every restored service runs, then removes the copy and its secrets as down --purge does (also\n" +
				"when a step fails; --keep leaves it). The live deployment is only read (its backup key checks the\n" +
				"signature). The outcome is kept with the deployment's state: show and appliance status print it.",
			Flags: deployFlags(
				&cli.StringFlag{Name: "from", Usage: "the backup folder `DIR`; its newest backup of the deployment is tested"},
				&cli.StringFlag{Name: "identity", Usage: "age identity `FILE` (the private key of one of backup.recipients)"},
				&cli.StringFlag{Name: "signer", Usage: "the public `KEY` (ed25519:...) that backup printed; needed when this cluster holds no backup key of the deployment"},
				&cli.BoolFlag{Name: "keep", Usage: "leave the scratch copy deployed after the test (remove it with down --purge <name>" + deploy.ScratchSuffix + ")"},
			),
			Action: backupTestAction,
		}, {
			Name:      "list",
			Usage:     "list the backups in a folder, oldest first, with what each added",
			ArgsUsage: "DIR",
			Action:    backupListAction,
		}, {
			Name:      "prune",
			Usage:     "keep the newest N backups of each deployment in a folder; remove the others and the chunks only they used",
			ArgsUsage: "DIR",
			Flags: []cli.Flag{
				&cli.IntFlag{Name: "keep", Usage: "keep the newest `N` backups of each deployment (at least 1)"},
			},
			Action: backupPruneAction,
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
		To: c.String("to"), State: o.State, Member: o.Member, Progress: o.Progress})
	if err != nil {
		return err
	}
	st := m.Stats
	fmt.Fprintf(c.App.Writer, "%s: backup %s in %s: %d items, %s read; %d of %d chunks new (%s written) (%d never-restore paths left out, %d declared paths absent)\n",
		m.Project, m.Name, c.String("to"), len(m.Items), mib(st.Read), st.New, st.Chunks, mib(st.NewBytes), len(m.NeverRestored), len(m.Absent))
	fmt.Fprintf(c.App.Writer, "volume paths: %d of %d files read (%s of %s), the others unchanged since the last backup into this folder from this member\n",
		st.VolumeFilesRead, st.VolumeFiles, mib(st.VolumeBytesRead), mib(st.VolumeBytes))
	fmt.Fprintf(c.App.Writer, "signed by %s (keep it: restore into a fresh cluster checks the backup with --signer)\n", m.Signer)
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func backupListAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("backup list takes one folder")
	}
	f, err := backup.List(c.Args().First())
	if err != nil {
		return err
	}
	w := c.App.Writer
	for _, l := range f.Backups {
		switch {
		case l.Err != "":
			fmt.Fprintf(w, "%s  unreadable manifest: %s\n", l.Name, l.Err)
		case !l.Finished:
			fmt.Fprintf(w, "%s  unfinished (cut short: the next backup into the folder reuses what its checkpoint names; prune removes it)\n", l.Name)
		default:
			fmt.Fprintf(w, "%s  %s  %d items, %s, %s stored, %s new\n", l.Name, l.Project, l.Items, mib(l.Size), mib(l.Stored), mib(l.New))
		}
	}
	if f.UnusedChunks > 0 {
		fmt.Fprintf(w, "%d chunks (%s) no backup names: prune removes them\n", f.UnusedChunks, mib(f.UnusedBytes))
	}
	return nil
}

func backupPruneAction(c *cli.Context) error {
	if c.NArg() != 1 || !c.IsSet("keep") {
		return usagef("backup prune takes one folder and --keep N")
	}
	r, err := backup.Prune(c.Args().First(), c.Int("keep"))
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%s: removed %d backups %v and %d chunks (%s); %d kept\n",
		c.Args().First(), len(r.Removed), r.Removed, r.Chunks, mib(r.FreedBytes), r.KeptBackups)
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
	m, err := backup.VerifyWith(c.Args().First(), backup.VerifyOptions{Identities: ids, Signer: c.String("signer")})
	if err != nil {
		return err
	}
	what := "sums match"
	if len(ids) > 0 {
		what = "sums match, every chunk decrypts"
	}
	signed := "signatures whole (give --signer to check who signed)"
	if c.String("signer") != "" {
		signed = "signed by " + c.String("signer")
	}
	fmt.Fprintf(c.App.Writer, "%s: newest backup %s of %s taken %s: %d items; %s; %s\n", c.Args().First(), m.Name, m.Project,
		m.Created.Format("2006-01-02 15:04:05Z"), len(m.Items), what, signed)
	return nil
}

// restoreCommand is `ssbuild restore DEPLOYMENT --from DIR --identity FILE`.
func restoreCommand() *cli.Command {
	return &cli.Command{
		Name:      "restore",
		Usage:     "put a backup back into the running deployment it was taken from",
		ArgsUsage: "DEPLOYMENT",
		Description: "Takes the newest backup of the deployment in the folder (or --backup NAME). Verifies it whole first,\n" +
			"its manifest signed by the cluster's backup key or --signer (nothing changes when a file is damaged or does not decrypt),\n" +
			"then copies the volume paths back and feeds each dump to its service's restore command.\n" +
			"Never-restore paths (a Lightning node's live channel database) are not in a backup and stay as they are.\n" +
			"A Lightning node is stopped meanwhile, then gets a new generation (an older copy of it never starts\n" +
			"again) and is started. A backup older than the node's live state (its generation moved on since) is\n" +
			"refused unless " + backup.RecoverFlag + ", which puts back only the node's static\n" +
			"backup files (hsm_secret, emergency.recover), never its channel database.",
		Flags: deployFlags(
			&cli.StringFlag{Name: "from", Usage: "the backup folder `DIR`"},
			&cli.StringFlag{Name: "backup", Usage: "the backup's `NAME` in the folder (backup list); default the newest"},
			&cli.StringFlag{Name: "identity", Usage: "age identity `FILE` (the private key of one of backup.recipients)"},
			&cli.StringFlag{Name: "signer", Usage: "the public `KEY` (ed25519:...) that backup printed; needed when this cluster holds no backup key of the deployment"},
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
		From: c.String("from"), Backup: c.String("backup"), Identities: ids, Signer: c.String("signer"), State: o.State, Member: o.Member,
		RecoverLightning: c.Bool(strings.TrimPrefix(backup.RecoverFlag, "--")), Progress: o.Progress}); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%s: restored from %s\n", c.Args().First(), c.String("from"))
	return nil
}

func backupTestAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("backup test takes one deployment name")
	}
	if c.String("from") == "" || c.String("identity") == "" {
		return usagef("backup test needs --from DIR (the backups) and --identity FILE (their key)")
	}
	d, o, err := namedDeployment(c)
	if err != nil {
		return err
	}
	ids, err := backup.ReadIdentities(c.String("identity"))
	if err != nil {
		return err
	}
	res, err := backup.Test(c.Context, backup.TestOptions{LXD: o.LXD, Recipe: o.Recipe, Deployment: d.Name, From: c.String("from"),
		Identities: ids, Signer: c.String("signer"), State: o.State, Keep: c.Bool("keep"), Member: o.Member, Progress: o.Progress})
	w := c.App.Writer
	for _, s := range res.Skipped {
		fmt.Fprintf(w, "verified, not restored: %s\n", s)
	}
	if err != nil {
		return fmt.Errorf("%s: restore test failed: %w", d.Project(), err)
	}
	fmt.Fprintf(w, "%s: %d items of %s restored into %s; running: %s\n", d.Project(), len(res.Restored), res.Backup, res.Scratch, strings.Join(res.Checked, " "))
	if c.Bool("keep") {
		fmt.Fprintf(w, "scratch copy %s kept: remove it with ssbuild down --purge %s\n", res.Scratch, res.Scratch)
	}
	fmt.Fprintf(w, "%s: %s\n", d.Project(), deploy.RestoreTestLine(&res.RestoreTest, time.Now()))
	return nil
}
