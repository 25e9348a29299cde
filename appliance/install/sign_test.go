package install

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// builderKey makes an ed25519 key pair with ssh-keygen; it returns the
// private key file (its public key is beside it, .pub).
func builderKey(t *testing.T, comment string) string {
	t.Helper()
	testenv.RequireTools(t, "ssh-keygen")
	key := filepath.Join(t.TempDir(), "id_ed25519")
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", key)
	return key
}

// signPayload signs the payload's manifest as a signed build does, with
// OpenSSH's own signer: SHA256SUMS.sig, namespace ssbuild.
func signPayload(t *testing.T, env Env, key string) {
	t.Helper()
	sig := filepath.Join(env.PayloadDir, stick.ManifestSig)
	os.Remove(sig) // ssh-keygen asks before overwriting
	cmd := exec.Command("ssh-keygen", "-Y", "sign", "-f", key, "-n", "ssbuild", filepath.Join(env.PayloadDir, stick.Manifest))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -Y sign: %v\n%s", err, out)
	}
}

// fingerprintOf is ssh-keygen's SHA256 fingerprint of a key file.
func fingerprintOf(t *testing.T, key string) string {
	t.Helper()
	return field(t, run(t, "ssh-keygen", "-l", "-f", key), `(SHA256:\S+)`)
}

// TestRunSignedPayload: the installer carries the builder's public key and
// the payload is signed by it: the install goes through and says whose key
// signed it.
func TestRunSignedPayload(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "sgdisk", "blkid", "e2fsck", "dumpe2fs", "debugfs", "fsck.fat", "mtype", "losetup", "dd")
	key := builderKey(t, "builder@example")
	env, power := fakeMachine(t, fakeDisk{name: "sda", size: 80 * GiB}, fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
	signPayload(t, env, key)
	env.SignerKey = key + ".pub"
	var log strings.Builder
	env.Progress = progress.New(io.MultiWriter(&log, testLog{t}), progress.Plain)
	if err := Run(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	if want := "payload signed by builder@example (" + fingerprintOf(t, key) + ")"; !strings.Contains(log.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, log.String())
	}
	checkInstalled(t, filepath.Join(env.DevRoot, "sda"), testLayout256(), expectedFiles(t, env))
	if len(power.calls) != 1 {
		t.Errorf("power: %v", power.calls)
	}
}

// TestRunRefusesPayloadNotSignedByTheBuilder: with the builder's key in
// the installer, a payload re-signed with another key (its manifest as
// built, or a consistent forgery: files replaced, sums recomputed, a good
// signature by that key), left unsigned, or whose manifest changed after
// signing is refused before any disk is
// looked at; the error names the cause and the target's bytes are as
// they were.
func TestRunRefusesPayloadNotSignedByTheBuilder(t *testing.T) {
	builder, other := builderKey(t, "builder@example"), builderKey(t, "mallory@example")
	for _, c := range []struct {
		name   string
		tamper func(t *testing.T, env Env)
		want   *regexp.Regexp
	}{
		{"re-signed with another key", func(t *testing.T, env Env) { signPayload(t, env, other) },
			regexp.MustCompile(`SHA256SUMS.sig: made by another key \(` + regexp.QuoteMeta(fingerprintOf(t, other)) + `\), not builder@example \(` + regexp.QuoteMeta(fingerprintOf(t, builder)) + `\)`)},
		// A consistent forgery: the OS image and the recipe replaced (the
		// recipe now wipes disks), SHA256SUMS recomputed so every sum
		// matches, and a valid signature by another key.
		{"payload replaced and re-signed with another key", func(t *testing.T, env Env) {
			img := filepath.Join(env.PayloadDir, stick.OSImage)
			f, err := os.OpenFile(img, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("forged"), 4096); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			recipe := strings.Replace(testRecipe, "installer:\n", "installer:\n  wipe: true\n", 1)
			if err := os.WriteFile(filepath.Join(env.PayloadDir, stick.RecipeName), []byte(recipe), 0o644); err != nil {
				t.Fatal(err)
			}
			os.Remove(filepath.Join(env.PayloadDir, stick.ManifestSig)) // not listed in the sums it signs
			writeManifest(t, env.PayloadDir)
			signPayload(t, env, other)
			if _, err := VerifyPayload(env.PayloadDir, io.Discard); err != nil {
				t.Fatalf("the forgery is not self-consistent: %v", err)
			}
			// And its signature is good, by OpenSSH's own check.
			check := exec.Command("ssh-keygen", "-Y", "check-novalidate", "-n", "ssbuild", "-s", filepath.Join(env.PayloadDir, stick.ManifestSig))
			manifest, err := os.Open(filepath.Join(env.PayloadDir, stick.Manifest))
			if err != nil {
				t.Fatal(err)
			}
			defer manifest.Close()
			check.Stdin = manifest
			if out, err := check.CombinedOutput(); err != nil {
				t.Fatalf("ssh-keygen -Y check-novalidate of the forgery: %v\n%s", err, out)
			}
		}, regexp.MustCompile(`SHA256SUMS.sig: made by another key \(` + regexp.QuoteMeta(fingerprintOf(t, other)) + `\), not builder@example \(` + regexp.QuoteMeta(fingerprintOf(t, builder)) + `\)`)},
		{"signature missing", func(t *testing.T, env Env) { os.Remove(filepath.Join(env.PayloadDir, stick.ManifestSig)) },
			regexp.MustCompile(`SHA256SUMS.sig: missing: SHA256SUMS is not signed`)},
		{"manifest changed after signing", func(t *testing.T, env Env) {
			// One hex digit of the first sum: the manifest still parses.
			p := filepath.Join(env.PayloadDir, stick.Manifest)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if b[0] == '0' {
				b[0] = '1'
			} else {
				b[0] = '0'
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}, regexp.MustCompile(`SHA256SUMS: does not match its signature SHA256SUMS.sig: changed or replaced after signing`)},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, power := fakeMachine(t, fakeDisk{name: "sda", size: 80 * GiB}, fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
			signPayload(t, env, builder)
			env.SignerKey = builder + ".pub"
			c.tamper(t, env)
			target := filepath.Join(env.DevRoot, "sda")
			before := fingerprint(t, target)
			err := Run(context.Background(), env)
			if err == nil || !c.want.MatchString(err.Error()) || !strings.HasSuffix(err.Error(), "(nothing was written)") {
				t.Fatalf("Run: %v\nwant an error matching %s, ending (nothing was written)", err, c.want)
			}
			t.Log(err)
			if fingerprint(t, target) != before || !blank(t, target) {
				t.Error("the target changed")
			}
			if len(power.calls) != 0 {
				t.Errorf("power: %v", power.calls)
			}
		})
	}
}

// TestRunUnsignedWithoutKey: an installer without a signer key (an
// unsigned build; the key file absent) installs an unsigned payload as
// before, and says the signature was not checked.
func TestRunUnsignedWithoutKey(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "sgdisk", "blkid", "e2fsck", "dumpe2fs", "debugfs", "fsck.fat", "mtype", "losetup", "dd")
	env, _ := fakeMachine(t, fakeDisk{name: "sda", size: 80 * GiB}, fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
	env.SignerKey = filepath.Join(t.TempDir(), "payload-signer.pub") // absent, as in an unsigned build's initramfs
	var log strings.Builder
	env.Progress = progress.New(io.MultiWriter(&log, testLog{t}), progress.Plain)
	if err := Run(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "payload signature not checked") {
		t.Errorf("output does not say the signature was not checked:\n%s", log.String())
	}
	checkInstalled(t, filepath.Join(env.DevRoot, "sda"), testLayout256(), expectedFiles(t, env))
}
