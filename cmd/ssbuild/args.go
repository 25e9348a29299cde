package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// flagsFirst moves the flags given after a command's positional arguments
// in front of them: urfave/cli v2 stops parsing flags at the first
// positional argument and would take `down mysite --purge` as two
// arguments, silently dropping --purge. Everything after "--" stays an
// argument; an unknown flag is moved too, so the command refuses it (exit
// code 2). A completion request is left as it is: urfave/cli looks for it
// at the end.
func flagsFirst(app *cli.App, args []string) []string {
	for _, a := range args {
		if a == "--generate-bash-completion" {
			return args
		}
	}
	var cmd *cli.Command
	cmds := app.Commands
	i := 1
	for ; i < len(args); i++ {
		next := findCommand(cmds, args[i])
		if next == nil {
			break
		}
		cmd, cmds = next, next.Subcommands
	}
	// Groups (recipe, appliance) have only subcommands, and the top level
	// only --help and --version: nothing to move there.
	if cmd == nil || len(cmd.Subcommands) > 0 {
		return args
	}
	var flags, positional []string
	rest := args[i:]
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		if a == "--" {
			positional = append(positional, rest[j:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !hasValue && takesValue(cmd, name) && j+1 < len(rest) {
			j++
			flags = append(flags, rest[j])
		}
	}
	out := append([]string{}, args[:i]...)
	out = append(out, flags...)
	return append(out, positional...)
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// takesValue reports whether the command's flag called name reads the next
// argument as its value (--recipe demo), unlike a boolean (--json).
func takesValue(cmd *cli.Command, name string) bool {
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			if n == name {
				v, ok := f.(cli.DocGenerationFlag)
				return ok && v.TakesValue()
			}
		}
	}
	return false
}
