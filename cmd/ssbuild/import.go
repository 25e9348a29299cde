package main

import "github.com/urfave/cli/v2"

// importCommand is wired to recipes/ssimport once it lands.
func importCommand() *cli.Command {
	return &cli.Command{Name: "import", Hidden: true, Action: func(*cli.Context) error { return usagef("import: not built yet") }}
}
