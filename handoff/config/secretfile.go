package config

import (
	"fmt"
	"os"
	"syscall"
)

// Secrets a build accepts from a file are stronger than what ReadSecret
// accepts on a host (which must keep reading sticks already made): at
// least BuildSecretLength characters, which is 128 bits even for hex (4
// bits a character; base64 or random text carry more), and at least
// BuildSecretDistinct different characters, which refuses "aaaa..." or
// "abab..." yet almost never a random one (32 random hex digits use fewer
// than 8 of the 16 with a chance below 1e-7). `openssl rand -hex 16` or a
// secret the installer generated (64 hex digits) pass.
const (
	BuildSecretLength   = 32
	BuildSecretDistinct = 8
)

// CheckSecretFile checks a cluster secret file before a build copies it
// onto a stick: ReadSecret's rules (regular file, no group or other
// permission: whoever reads it can join the cluster), owned by the user
// running the build (another owner could change it under the build), and
// strong enough. Its errors never contain the secret.
func CheckSecretFile(path string) error {
	secret, err := ReadSecret(path)
	if err != nil {
		return err
	}
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("cluster secret: %w", err)
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		return fmt.Errorf("cluster secret %s: owned by uid %d, not by the user running the build (uid %d): chown it to that user", path, st.Uid, os.Getuid())
	}
	return checkSecretStrength(path, secret)
}

func checkSecretStrength(path string, secret []byte) error {
	if len(secret) < BuildSecretLength {
		return fmt.Errorf("cluster secret %s: %d characters, want at least %d (128 bits as hex): make one with `openssl rand -hex 32`, or let the build generate it (generate: true)",
			path, len(secret), BuildSecretLength)
	}
	seen := map[byte]bool{}
	for _, c := range secret {
		seen[c] = true
	}
	if len(seen) < BuildSecretDistinct {
		return fmt.Errorf("cluster secret %s: only %d different characters, want at least %d (a random secret has more): make one with `openssl rand -hex 32`",
			path, len(seen), BuildSecretDistinct)
	}
	return nil
}
