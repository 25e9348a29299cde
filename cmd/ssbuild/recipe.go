package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/recipes"
)

func recipeCommand() *cli.Command {
	return &cli.Command{
		Name:  "recipe",
		Usage: "check, show, describe and import recipes",
		Subcommands: []*cli.Command{
			{
				Name:      "validate",
				Usage:     "check a recipe and report every problem as file:line:col",
				ArgsUsage: "[FILE|NAME]",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the problems as JSON"}},
				Action:    recipeValidate,
			},
			{
				Name:      "show",
				Usage:     "print the effective recipe, with every default filled in",
				ArgsUsage: "[FILE|NAME]",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "json", Usage: "print JSON instead of YAML"},
					&cli.BoolFlag{Name: "raw", Usage: "print the recipe as written (for shipped recipes: their source, to copy)"},
				},
				Action: recipeShow,
			},
			{
				Name:   "schema",
				Usage:  "print the recipe's JSON Schema (for editors)",
				Action: recipeSchema,
			},
			importCommand(),
		},
	}
}

// recipeArg is the optional FILE|NAME argument of recipe subcommands;
// without it, SSBUILD_RECIPE or the default recipe, as --recipe elsewhere.
func recipeArg(c *cli.Context) (string, error) {
	switch c.NArg() {
	case 0:
		if ref := os.Getenv(recipeEnv); ref != "" {
			return ref, nil
		}
		return recipes.DefaultName, nil
	case 1:
		return c.Args().First(), nil
	}
	return "", usagef("%s takes one recipe, got %d arguments", c.Command.Name, c.NArg())
}

func recipeValidate(c *cli.Context) error {
	ref, err := recipeArg(c)
	if err != nil {
		return err
	}
	// Beyond the document: the files it names, what the installer build
	// (config) and deploy (stack) would refuse.
	r, err := recipes.Validate(ref, deepChecks...)
	if c.Bool("json") {
		problems := recipes.Problems(err)
		unread := err != nil && problems == nil // unreadable, or no such shipped recipe
		if unread {
			problems = []recipes.Problem{{File: ref, Message: err.Error()}}
		}
		if problems == nil {
			problems = []recipes.Problem{}
		}
		if werr := writeJSON(c.App.Writer, map[string]any{"valid": err == nil, "problems": problems}); werr != nil {
			return werr
		}
		switch {
		case unread:
			return invalidError{err}
		case err != nil:
			return invalidError{fmt.Errorf("%d problems", len(problems))}
		}
		return nil
	}
	if err != nil {
		return invalidError{err}
	}
	fmt.Fprintf(c.App.Writer, "%s: valid (%d hosts, %d deployments, %d Docker images)\n",
		r.File, len(r.Installer.Hosts), len(r.Deployments), len(r.Image.DockerImages))
	return nil
}

func recipeShow(c *cli.Context) error {
	ref, err := recipeArg(c)
	if err != nil {
		return err
	}
	if c.Bool("raw") {
		var src []byte
		if _, statErr := os.Stat(ref); statErr == nil {
			src, err = os.ReadFile(ref)
		} else {
			src, err = recipes.BuiltinSource(ref)
		}
		if err != nil {
			return invalidError{err}
		}
		_, err = c.App.Writer.Write(src)
		return err
	}
	r, err := loadRecipe(ref)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, r)
	}
	out, err := recipes.Marshal(r)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "# effective recipe from %s (defaults filled in)\n%s", r.File, out)
	return nil
}

func recipeSchema(c *cli.Context) error {
	if c.Args().Present() {
		return usagef("schema takes no arguments")
	}
	s, err := recipes.Schema()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.App.Writer, "%s\n", s)
	return err
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
