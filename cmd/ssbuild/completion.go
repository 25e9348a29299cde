package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// The scripts ask ssbuild itself for candidates (urfave/cli's
// --generate-bash-completion), so they never go stale.
const bashCompletion = `# bash completion for ssbuild; load with: source <(ssbuild completion bash)
_ssbuild_complete() {
  local cur words
  cur="${COMP_WORDS[COMP_CWORD]}"
  if [[ "$cur" == -* ]]; then
    words=$("${COMP_WORDS[@]:0:$COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    words=$("${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
  [ ${#COMPREPLY[@]} -eq 0 ] && COMPREPLY=($(compgen -f -- "$cur"))
  return 0
}
complete -o filenames -F _ssbuild_complete ssbuild
`

const zshCompletion = `#compdef ssbuild
# zsh completion for ssbuild; load with: source <(ssbuild completion zsh)
_ssbuild() {
  local -a opts
  opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
  _describe 'values' opts
  _files
}
compdef _ssbuild ssbuild
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		ArgsUsage: "bash|zsh|fish",
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usagef("completion takes one shell: bash, zsh or fish")
			}
			switch c.Args().First() {
			case "bash":
				fmt.Fprint(c.App.Writer, bashCompletion)
			case "zsh":
				fmt.Fprint(c.App.Writer, zshCompletion)
			case "fish":
				// fish's script is static, generated from the commands and flags.
				s, err := c.App.ToFishCompletion()
				if err != nil {
					return fmt.Errorf("fish completion: %w", err)
				}
				// Usage texts mark placeholders with backticks, which
				// only help and man pages read; fish's code has none.
				fmt.Fprint(c.App.Writer, strings.ReplaceAll(s, "`", ""))
			default:
				return usagef("completion needs a shell: bash, zsh or fish")
			}
			return nil
		},
	}
}

// manCommand prints the manual page (`make man` writes it to bin/ssbuild.1).
func manCommand() *cli.Command {
	return &cli.Command{
		Name:  "man",
		Usage: "print the manual page (roff; view with: ssbuild man | man -l -)",
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("man takes no arguments")
			}
			s, err := c.App.ToManWithSection(1)
			if err != nil {
				return fmt.Errorf("manual page: %w", err)
			}
			_, err = fmt.Fprint(c.App.Writer, s)
			return err
		},
	}
}
