package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sovereign-stack/ssbuild/internal/signature"
)

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "check a signed image or installer folder against the builder's public key",
		ArgsUsage: "DIR --key PUB",
		Description: "Checks DIR/SHA256SUMS.sig (made with --sign-key) against PUB, an OpenSSH ed25519\n" +
			"public key file, then every file SHA256SUMS names. Exit code 3 names every\n" +
			"difference. Without ssbuild: ssh-keygen -Y verify -n ssbuild (see README).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "key", Aliases: []string{"k"}, Usage: "the builder's public key `FILE` (ssh-ed25519 AAAA... comment)"},
		},
		Action: verifyAction,
	}
}

func verifyAction(c *cli.Context) error {
	args, key := c.Args().Slice(), c.String("key")
	// urfave/cli stops reading flags at the first argument: take the
	// --key of `ssbuild verify DIR --key PUB` too.
	if len(args) == 3 && (args[1] == "--key" || args[1] == "-key" || args[1] == "-k") {
		key, args = args[2], args[:1]
	} else if len(args) == 2 && strings.HasPrefix(args[1], "--key=") {
		key, args = strings.TrimPrefix(args[1], "--key="), args[:1]
	}
	if len(args) != 1 {
		return usagef("verify takes one output folder: ssbuild verify DIR --key PUB")
	}
	if key == "" {
		return usagef("verify needs --key PUB, the builder's public key file")
	}
	pub, err := signature.ReadPublicKey(key)
	if err != nil {
		return invalidError{err}
	}
	v, err := signature.VerifyDir(pub, args[0])
	var f *signature.Failure
	if errors.As(err, &f) {
		return invalidError{err}
	} else if err != nil {
		return err
	}
	files := fmt.Sprintf("%d files match", len(v.Files))
	if len(v.Files) == 1 {
		files = "1 file matches"
	}
	fmt.Fprintf(c.App.Writer, "%s: good signature by %s; %s %s\n", args[0], pub, files, signature.ChecksumsFile)
	if len(v.Unlisted) > 0 {
		fmt.Fprintf(c.App.Writer, "not covered by %s: %s\n", signature.ChecksumsFile, strings.Join(v.Unlisted, ", "))
	}
	return nil
}
