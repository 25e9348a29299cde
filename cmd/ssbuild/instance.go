package main

import (
	"fmt"

	"github.com/docker/docker/client"
	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/images/dockerpreload"
)

// loadDockerImagesCommand is what ssbuild-preload.service runs once on an
// instance's first boot: the images baked into the base image go into the
// instance's Docker without touching a registry.
func loadDockerImagesCommand() *cli.Command {
	return &cli.Command{
		Name:  dockerpreload.LoadCommand,
		Usage: "on an instance: load the Docker images pre-loaded in the base image (run by " + dockerpreload.UnitName + ")",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Value: dockerpreload.DefaultDir, Usage: "`DIR` with the image archives and their manifest"},
			&cli.BoolFlag{Name: "json", Usage: "progress as JSON events"},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("%s takes no arguments", dockerpreload.LoadCommand)
			}
			// A missing or broken manifest is a bad payload, not a Docker failure.
			if _, err := dockerpreload.ReadManifest(c.String("dir")); err != nil {
				return invalidError{err}
			}
			// DOCKER_HOST and friends, as the docker CLI reads them.
			docker, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
			if err != nil {
				return fmt.Errorf("docker client: %w", err)
			}
			defer docker.Close()
			return dockerpreload.LoadAll(c.Context, docker, c.String("dir"), progressFor(c))
		},
	}
}
