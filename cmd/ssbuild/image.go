package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/docker/docker/client"
	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/images/baseimage"
	"github.com/sovereign-stack/ssbuild/images/outcache"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

func imageCommand() *cli.Command {
	return &cli.Command{
		Name:  "image",
		Usage: "build the base image for the LXD instances, with Docker images and chainstate pre-loaded",
		Description: "Steps: rootfs (debootstrap, cached by its inputs) -> packages -> docker-images\n" +
			"-> chainstate -> lxd-image -> checksums. The output folder appears complete or\n" +
			"not at all. With SOURCE_DATE_EPOCH (or --epoch, or the recipe's\n" +
			"image.reproducible.sourceDateEpoch) two builds of the same inputs are identical.",
		Flags: []cli.Flag{
			recipeFlag(),
			&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Usage: "output folder `DIR` (must not exist); default out/<recipe>-image"},
			&cli.StringFlag{Name: "cache", Usage: "cache folder `DIR` for debootstrapped trees, package layers and built artifacts (DIR/artifacts)", Value: defaultCacheDir()},
			&cli.BoolFlag{Name: "no-output-cache", Usage: "build every artifact, neither reusing nor storing any in the output cache"},
			&cli.StringFlag{Name: "docker-host", Usage: "Docker daemon `URL` the pre-loaded images come from (default: DOCKER_HOST, then the local socket)"},
			&cli.Int64Flag{Name: "epoch", Usage: "SOURCE_DATE_EPOCH (`SECONDS` since 1970) for a reproducible build"},
			&cli.StringFlag{Name: "sign-key", Usage: "ed25519 OpenSSH private key `FILE` (0600) that signs SHA256SUMS as SHA256SUMS.sig"},
			&cli.BoolFlag{Name: "json", Usage: "progress as JSON events on stderr"},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("image takes no arguments; use --recipe")
			}
			r, err := validRecipe(c.String("recipe"))
			if err != nil {
				return err
			}
			out := c.String("out")
			if out == "" {
				out = filepath.Join("out", r.Name+"-image")
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the ssbuild binary to install: %w", err)
			}
			opts := baseimage.Options{OutDir: out, CacheDir: c.String("cache"), Binary: self,
				Epoch: c.Int64("epoch"), SignKey: c.String("sign-key"), Progress: progressFor(c)}
			if !c.Bool("no-output-cache") {
				opts.ArtifactCache = filepath.Join(c.String("cache"), "artifacts")
			}
			if len(r.Image.DockerImages) > 0 {
				copts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
				if h := c.String("docker-host"); h != "" {
					copts = append(copts, client.WithHost(h))
				}
				docker, err := client.NewClientWithOpts(copts...)
				if err != nil {
					return fmt.Errorf("docker client: %w", err)
				}
				defer docker.Close()
				opts.Docker = docker
			}
			res, err := baseimage.Build(c.Context, r, opts)
			if err != nil {
				return err
			}
			count := map[outcache.State]int{}
			for _, a := range res.Artifacts {
				count[a.State]++
			}
			fmt.Fprintf(c.App.Writer, "%s: base image of %s written (SOURCE_DATE_EPOCH=%d, rootfs and packages from the cache: %v; artifacts built %d, reused %d, rebuilt %d)\n",
				res.OutDir, r.Name, res.Epoch, res.CacheHit, count[outcache.Built], count[outcache.Reused], count[outcache.Rebuilt])
			return nil
		},
	}
}

// defaultCacheDir is where debootstrapped trees are kept between builds.
func defaultCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "ssbuild")
	}
	return filepath.Join(os.TempDir(), "ssbuild-cache")
}

// progressFor is the reporter of a command: JSON events with --json, a
// redrawn line on a terminal, plain lines otherwise; always on stderr.
func progressFor(c *cli.Context) *progress.Reporter {
	if f, ok := c.App.ErrWriter.(*os.File); ok {
		return progress.ForFile(f, c.Bool("json"))
	}
	if c.Bool("json") {
		return progress.New(c.App.ErrWriter, progress.JSON)
	}
	return progress.New(c.App.ErrWriter, progress.Plain)
}
