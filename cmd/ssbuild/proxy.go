package main

import (
	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/appliance/webproxy"
)

// proxyCommand is the demo stack's reverse proxy (appliance/webproxy).
func proxyCommand() *cli.Command {
	return &cli.Command{
		Name:      "proxy",
		Usage:     "reverse proxy routing HTTP by Host header (the demo stack's front end); 404 for unknown hosts, /healthz",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: ":80", Usage: "`ADDR` to listen on"},
			&cli.StringSliceFlag{Name: "route", Usage: "`HOST=URL`: send requests for HOST (exact name) to the backend URL; repeat for each host"},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("proxy takes no arguments; use --route HOST=URL")
			}
			var routes []webproxy.Route
			for _, s := range c.StringSlice("route") {
				r, err := webproxy.ParseRoute(s)
				if err != nil {
					return usagef("--route: %v", err)
				}
				routes = append(routes, r)
			}
			if len(routes) == 0 {
				return usagef("proxy needs at least one --route HOST=URL")
			}
			p, err := webproxy.New(routes)
			if err != nil {
				return usagef("--route: %v", err)
			}
			return webproxy.Serve(c.Context, c.String("listen"), p, c.App.ErrWriter)
		},
	}
}
