package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/images/installerbuild"
)

func installerCommand() *cli.Command {
	return &cli.Command{
		Name:  "installer",
		Usage: "build the USB installer image that installs the recipe's cluster hosts unattended",
		Description: "Steps: hosts (every host's appliance.yaml checked) -> secret -> host-os (rootfs +\n" +
			"installer.packages, cached; os.img and the target's ESP) -> initramfs (this binary as\n" +
			"/init; it must be static: `make build`) -> image (installer.img + SHA256SUMS).\n" +
			"dd installer.img to a stick. The output folder appears complete or not at all; a\n" +
			"generated cluster secret is kept there as cluster.secret (0600).",
		Flags: []cli.Flag{
			recipeFlag(),
			&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Usage: "output folder `DIR` (must not exist); default out/<recipe>-installer"},
			&cli.StringFlag{Name: "cache", Usage: "cache folder `DIR` for debootstrapped trees, package layers and built artifacts (DIR/artifacts: os.img, the ESP files, the initramfs; never the secret)", Value: defaultCacheDir()},
			&cli.BoolFlag{Name: "no-output-cache", Usage: "build every artifact, neither reusing nor storing any in the output cache"},
			&cli.StringFlag{Name: "base-image", Usage: "output `DIR` of ssbuild image to carry on the stick"},
			&cli.Int64Flag{Name: "epoch", Usage: "SOURCE_DATE_EPOCH (`SECONDS` since 1970) for a reproducible build"},
			&cli.StringFlag{Name: "sign-key", Usage: "ed25519 OpenSSH private key `FILE` (0600) that signs SHA256SUMS as SHA256SUMS.sig"},
			&cli.BoolFlag{Name: "json", Usage: "progress as JSON events on stderr"},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("installer takes no arguments; use --recipe")
			}
			r, err := validRecipe(c.String("recipe"))
			if err != nil {
				return err
			}
			if err := inputDir(c, "base-image"); err != nil {
				return err
			}
			out := c.String("out")
			if out == "" {
				out = filepath.Join("out", r.Name+"-installer")
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the ssbuild binary for the installer: %w", err)
			}
			opts := installerbuild.Options{OutDir: out,
				CacheDir: c.String("cache"), Binary: self, BaseImage: c.String("base-image"),
				Epoch: c.Int64("epoch"), SignKey: c.String("sign-key"), Progress: progressFor(c)}
			if !c.Bool("no-output-cache") {
				opts.ArtifactCache = filepath.Join(c.String("cache"), "artifacts")
			}
			res, err := installerbuild.Build(c.Context, r, opts)
			if err != nil {
				return err
			}
			var states []string
			for _, a := range res.Artifacts {
				states = append(states, a.Name+" "+string(a.State))
			}
			secret := "the recipe's secret file"
			if res.SecretGenerated {
				secret = "a new secret, kept in " + filepath.Join(out, installerbuild.SecretFile)
			}
			fmt.Fprintf(c.App.Writer, "%s: installer of %s written (%d MiB, sha256 %s, kernel %s, cluster secret: %s, SOURCE_DATE_EPOCH=%d; %s)\n",
				res.Image, r.Name, res.Installer.Size>>20, res.Installer.SHA256, res.KernelVersion, secret, res.Epoch, strings.Join(states, ", "))
			return nil
		},
	}
}
