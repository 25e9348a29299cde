// Command ssbuild turns one recipe into a base image, a USB installer and an
// LXD cluster with the recipe's sites. This package only parses the command
// line; the work lives in recipes/, images/, appliance/ and cloudinit/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/install"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/internal/version"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/recipes/ssimport"
)

// Exit codes scripts can rely on.
const (
	exitOK      = 0
	exitFailed  = 1 // the work failed (a tool, the network, a daemon)
	exitUsage   = 2 // the command line is wrong
	exitInvalid = 3 // an input (recipe, configuration, payload) is invalid
)

func main() {
	// As the installer initramfs's /init, ssbuild is the installer.
	if install.IsInit() {
		install.Init() // never returns: PID 1 must not exit
	}
	os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr))
}

// run is main without the process: tests call it with their own streams.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := newApp(stdin, stdout, stderr)
	// Ctrl-C and SIGTERM cancel the context, so long steps unmount and
	// remove their partial output before the process ends.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := app.RunContext(ctx, flagsFirst(app, args))
	if err == nil {
		return exitOK
	}
	var u usageError
	var inv invalidError
	switch {
	case errors.As(err, &u):
		fmt.Fprintf(stderr, "ssbuild: %v\nRun 'ssbuild --help' for usage.\n", u.err)
		return exitUsage
	case errors.As(err, &inv):
		n := len(recipes.Problems(inv.err))
		var confErr *config.InvalidError
		var importErr *ssimport.Error
		if n == 0 && !errors.As(inv.err, &confErr) && !errors.As(inv.err, &importErr) {
			// One message, not a list of file:line problems.
			fmt.Fprintf(stderr, "ssbuild: %v\n", inv.err)
			return exitInvalid
		}
		fmt.Fprintln(stderr, inv.err)
		if n > 1 {
			fmt.Fprintf(stderr, "%d problems\n", n)
		}
		return exitInvalid
	default:
		fmt.Fprintf(stderr, "ssbuild: %v\n", err)
		return exitFailed
	}
}

type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// invalidError marks bad input: exit code 3 and the problems as they are.
type invalidError struct{ err error }

func (e invalidError) Error() string { return e.err.Error() }

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:  "ssbuild",
		Usage: "build Sovereign Stack images, installers and clusters from one recipe",
		Description: "A command that reads a recipe takes it from --recipe (or its argument), else from\n" +
			"SSBUILD_RECIPE, else the shipped recipe default.\n" +
			"Exit codes: 0 done; 1 the work failed; 2 the command line is wrong; 3 an input\n" +
			"(a recipe, a configuration, a payload) is invalid.",
		Version:              version.String(),
		Reader:               stdin,
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		// Our own --version prints what `ssbuild version` prints.
		HideVersion: true,
		Flags:       []cli.Flag{&cli.BoolFlag{Name: "version", Aliases: []string{"v"}, Usage: "print the version (as ssbuild version)"}},
		// Errors are printed once, by run, with the right exit code.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		Action: func(c *cli.Context) error {
			if c.Bool("version") {
				return printVersion(c)
			}
			return helpOrUnknown(c)
		},
		Commands: withUsageErrors(append([]*cli.Command{
			recipeCommand(),
			planCommand(),
			imageCommand(),
			installerCommand(),
			verifyCommand(),
			loadDockerImagesCommand(),
			applianceCommand(),
			clusterCommand(),
			hostCommand(),
			proxyCommand(),
			versionCommand(),
			completionCommand(),
			manCommand(),
		}, append(deployCommands(), backupCommand(), restoreCommand())...)),
	}
}

// helpOrUnknown is the action of a command that only groups others: help
// without arguments, a usage error for an unknown subcommand.
func helpOrUnknown(c *cli.Context) error {
	if c.Args().Present() {
		return usagef("no command %q", c.Args().First())
	}
	return cli.ShowSubcommandHelp(c)
}

// withUsageErrors makes every command report flag errors as usage errors
// (exit code 2), and every command group reject unknown subcommands.
func withUsageErrors(cmds []*cli.Command) []*cli.Command {
	for _, c := range cmds {
		c.OnUsageError = func(_ *cli.Context, err error, _ bool) error { return usageError{err} }
		if len(c.Subcommands) > 0 && c.Action == nil {
			c.Action = helpOrUnknown
		}
		withUsageErrors(c.Subcommands)
	}
	return cmds
}

// recipeEnv names the recipe of every command that takes one and is not
// given one on its command line.
const recipeEnv = "SSBUILD_RECIPE"

// recipeFlag is the --recipe flag of every command that reads a recipe; a
// new one each time, as urfave/cli stores the environment's value in the
// flag it is given (a shared flag would keep it for the next run).
func recipeFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "recipe",
		Aliases: []string{"r"},
		Usage:   "`RECIPE` file, or the name of a shipped recipe (default, demo)",
		Value:   recipes.DefaultName,
		EnvVars: []string{recipeEnv},
	}
}

// loadRecipe opens the recipe a command names. A recipe that cannot be
// read or named is bad input like one with problems: exit code 3.
func loadRecipe(ref string) (*recipes.Recipe, error) {
	r, err := recipes.Open(ref)
	if err != nil {
		return nil, invalidError{err}
	}
	return r, nil
}

// deepChecks are the rules beyond the document that later stages own: the
// hosts' appliance config (the installer), the stacks' images and what
// deploy runs.
var deepChecks = []recipes.Check{config.CheckRecipe, stack.CheckImages, deploy.CheckRecipe}

// validRecipe opens a recipe as `recipe validate` checks it, so that plan
// and the builds refuse at once, with every problem, what a later stage
// would refuse after minutes of work.
func validRecipe(ref string) (*recipes.Recipe, error) {
	r, err := recipes.Validate(ref, deepChecks...)
	if err != nil {
		return nil, invalidError{err}
	}
	return r, nil
}

// inputDir checks a folder a flag names as input (the output of an earlier
// step): one that is missing is invalid input, found before any work.
func inputDir(c *cli.Context, flag string) error {
	dir := c.String(flag)
	if dir == "" {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return invalidError{fmt.Errorf("--%s: %w", flag, err)}
	}
	if !fi.IsDir() {
		return invalidError{fmt.Errorf("--%s %s: not a folder", flag, dir)}
	}
	return nil
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the ssbuild version",
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("version takes no arguments")
			}
			return printVersion(c)
		},
	}
}

func printVersion(c *cli.Context) error {
	_, err := fmt.Fprintf(c.App.Writer, "ssbuild %s (recipe format %s)\n", version.String(), recipes.APIVersion)
	return err
}

func planCommand() *cli.Command {
	return &cli.Command{
		Name:  "plan",
		Usage: "validate a recipe and print what each stage will build and deploy",
		Flags: []cli.Flag{recipeFlag(), &cli.BoolFlag{Name: "json", Usage: "print the plan as JSON"}},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("plan takes no arguments; use --recipe")
			}
			r, err := validRecipe(c.String("recipe"))
			if err != nil {
				return err
			}
			stages := recipes.Plan(r)
			if c.Bool("json") {
				return writeJSON(c.App.Writer, map[string]any{"recipe": r.Name, "file": r.File, "stages": stages})
			}
			recipes.WritePlan(c.App.Writer, r, stages)
			return nil
		},
	}
}
