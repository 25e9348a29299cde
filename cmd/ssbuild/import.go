package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/recipes/ssimport"
)

func importCommand() *cli.Command {
	return &cli.Command{
		Name:  "import",
		Usage: "convert a Sovereign Stack configuration (remote.conf, project.conf, site.conf) into a recipe",
		Description: "Reads the shell-style KEY=value files of the old bash tooling and writes an\n" +
			"equivalent recipe. Every key that cannot be carried over is named in a warning\n" +
			"on stderr. Secrets (passwords, passphrases) are never imported nor printed:\n" +
			"ssbuild generates its own.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "remote", Usage: "remote.conf `FILE` of the LXD remote"},
			&cli.StringFlag{Name: "project", Usage: "project.conf `FILE` of the deployment"},
			&cli.StringSliceFlag{Name: "site", Usage: "site.conf `FILE` of a site (repeat for each domain)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write the recipe to `FILE` (0644) instead of stdout"},
			&cli.BoolFlag{Name: "json", Usage: "print the recipe, the warnings and any problems as one JSON object on stdout"},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("import takes its files as --remote, --project and --site")
			}
			in := ssimport.Input{Remote: c.String("remote"), Project: c.String("project"), Sites: c.StringSlice("site")}
			if in.Remote == "" && in.Project == "" && len(in.Sites) == 0 {
				return usagef("import needs at least one of --remote, --project, --site")
			}
			r, warnings, err := ssimport.Import(in)
			asJSON := c.Bool("json")
			if !asJSON {
				for _, w := range warnings {
					fmt.Fprintf(c.App.ErrWriter, "warning: %s\n", w)
				}
			}
			var bad *ssimport.Error
			var pathErr *fs.PathError
			switch {
			case errors.As(err, &bad):
				if asJSON {
					if jerr := writeImportJSON(c, nil, warnings, bad.Problems); jerr != nil {
						return jerr
					}
					return invalidError{fmt.Errorf("%d problems", len(bad.Problems))}
				}
				return invalidError{err}
			case errors.As(err, &pathErr):
				return invalidError{err} // a file that is missing or unreadable
			case err != nil:
				return err
			}
			out, err := ssimport.Render(r, in)
			if err != nil {
				return err
			}
			if path := c.String("output"); path != "" {
				if err := os.WriteFile(path, out, 0o644); err != nil {
					return fmt.Errorf("write recipe: %w", err)
				}
				if !asJSON {
					fmt.Fprintf(c.App.ErrWriter, "wrote %s (%d warnings)\n", path, len(warnings))
				}
			}
			if asJSON {
				return writeImportJSON(c, r, warnings, nil)
			}
			if c.String("output") != "" {
				return nil
			}
			_, err = c.App.Writer.Write(out)
			return err
		},
	}
}

// writeImportJSON prints an import's result: the recipe (null when the
// import failed), the warnings and the problems, each always a list.
func writeImportJSON(c *cli.Context, r *recipes.Recipe, warnings, problems []ssimport.Warning) error {
	if warnings == nil {
		warnings = []ssimport.Warning{}
	}
	if problems == nil {
		problems = []ssimport.Warning{}
	}
	return writeJSON(c.App.Writer, map[string]any{"recipe": r, "warnings": warnings, "problems": problems})
}
