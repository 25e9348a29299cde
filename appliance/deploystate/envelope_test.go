package deploystate_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
)

const newClusterSecret = "fedcba9876543210fedcba9876543210"

// openSet is what a member that (re)starts with secret finds: a fresh store,
// nothing cached.
func openSet(t *testing.T, reg *registry.Registry, secret string) (secrets.Set, error) {
	t.Helper()
	return store(t, reg, secret).Ensure(ctx(t), deployment, nil)
}

func kekOf(t *testing.T, secret string) secrets.KEK {
	t.Helper()
	k, err := secrets.DeriveKEK([]byte(secret), "demo")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Envelope keys across a cluster secret rotation, as `ssbuild cluster
// rotate-secret` does it through the service's socket: the sets are sealed
// under the data key, which the registry holds only wrapped, named by the
// KEK's fingerprint; a wrapping under the new secret's KEK is added before
// the members switch, so a member restarting with the new secret and one
// that missed the rotation both open the same set, until the old wrapping
// is removed; the sealed sets themselves are never rewritten.
func TestDataKeySurvivesRotation(t *testing.T) {
	dir := t.TempDir()
	reg := openRegistry(t, filepath.Join(dir, "registry"))
	running := store(t, reg, clusterSecret)
	set, err := running.Ensure(ctx(t), deployment, names)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := reg.SealedSecrets(ctx(t), deployment)
	if err != nil {
		t.Fatal(err)
	}
	if v := secrets.SealVersion(sealed); v != secrets.SealDataKey {
		t.Errorf("a new set is sealed with version %d, want %d (the data key)", v, secrets.SealDataKey)
	}
	wrappings, err := reg.DataKeyWrappings(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	oldFP := kekOf(t, clusterSecret).Fingerprint()
	if _, ok := wrappings[oldFP]; len(wrappings) != 1 || !ok {
		t.Errorf("wrappings %d, under the KEK's fingerprint %v; want one", len(wrappings), ok)
	}
	if strings.Contains(oldFP, clusterSecret) || bytes.Contains(wrappings[oldFP], []byte(clusterSecret)) {
		t.Error("the registry names or holds the cluster secret")
	}

	// rotate-secret: the new KEK (never the secret) through the socket.
	client := &deploystate.Client{Socket: serve(t, running)}
	newFP, err := client.AddWrapping(ctx(t), kekOf(t, newClusterSecret))
	if err != nil {
		t.Fatal(err)
	}
	if newFP != kekOf(t, newClusterSecret).Fingerprint() || newFP == oldFP {
		t.Errorf("AddWrapping answered fingerprint %q", newFP)
	}
	for what, secret := range map[string]string{"the new secret": newClusterSecret, "the old secret (missed the rotation)": clusterSecret} {
		got, err := openSet(t, reg, secret)
		if err != nil || got.Digest() != set.Digest() {
			t.Errorf("a member with %s: %v, same set %v", what, err, got.Digest() == set.Digest())
		}
	}
	if after, _ := reg.SealedSecrets(ctx(t), deployment); !bytes.Equal(after, sealed) {
		t.Error("the rotation rewrote the sealed set")
	}

	// Every member took the new secret: only its wrapping stays.
	if _, err := client.RemoveWrappings(ctx(t), "0000"); err == nil {
		t.Error("removing every wrapping but an unknown one succeeded")
	}
	n, err := client.RemoveWrappings(ctx(t), newFP)
	if err != nil || n != 1 {
		t.Errorf("RemoveWrappings: %d, %v; want 1 removed", n, err)
	}
	if got, err := openSet(t, reg, newClusterSecret); err != nil || got.Digest() != set.Digest() {
		t.Errorf("with the new secret after the old wrapping is gone: %v", err)
	}
	_, err = openSet(t, reg, clusterSecret)
	if !errors.Is(err, secrets.ErrWrongKey) || !strings.Contains(err.Error(), "cluster secret") {
		t.Errorf("with the old secret after its wrapping is gone: %v; want ErrWrongKey", err)
	}
	// A service that unwrapped the data key before keeps serving it.
	if got, err := running.Ensure(ctx(t), deployment, nil); err != nil || got.Digest() != set.Digest() {
		t.Errorf("the running store after the rotation: %v", err)
	}
	if found := filesContain(t, dir, set); len(found) > 0 {
		t.Errorf("the registry's files hold secrets in clear: %v", found)
	}
}

// Upgrade in place: sets an older ssbuild sealed straight under the key
// derived from the cluster secret are re-sealed under the data key once:
// all of them when the service starts (Upgrade), or one on its first use;
// the values stay the same, and a second Upgrade changes nothing.
func TestUpgradeDerivedSeals(t *testing.T) {
	dir := t.TempDir()
	reg := openRegistry(t, filepath.Join(dir, "registry"))
	legacy, err := secrets.DeriveKey([]byte(clusterSecret), "demo")
	if err != nil {
		t.Fatal(err)
	}
	olds := map[string]secrets.Set{}
	for _, d := range []string{"at-start", "on-use"} {
		set, _, err := secrets.New(d, nil).WithNames(names)
		if err != nil {
			t.Fatal(err)
		}
		olds[d] = set
		// As an older ssbuild stored it.
		if _, err := reg.UpdateSealedSecrets(ctx(t), d, func([]byte) ([]byte, []registry.SecretEvent, error) {
			sealed, err := secrets.Seal(legacy, set)
			return sealed, []registry.SecretEvent{{What: "generated", Names: set.Names()}}, err
		}); err != nil {
			t.Fatal(err)
		}
	}
	version := func(d string) int {
		sealed, err := reg.SealedSecrets(ctx(t), d)
		if err != nil {
			t.Fatal(err)
		}
		return secrets.SealVersion(sealed)
	}

	// First use, before any Upgrade.
	s := store(t, reg, clusterSecret)
	got, err := s.Ensure(ctx(t), "on-use", names)
	if err != nil || got.Digest() != olds["on-use"].Digest() {
		t.Fatalf("first use of an older seal: %v, same values %v", err, got.Digest() == olds["on-use"].Digest())
	}
	if v := version("on-use"); v != secrets.SealDataKey {
		t.Errorf("after its first use the set is sealed with version %d, want %d", v, secrets.SealDataKey)
	}
	if v := version("at-start"); v != secrets.SealDerived {
		t.Errorf("an unused set changed version to %d before the upgrade", v)
	}

	// Service start.
	n, err := store(t, reg, clusterSecret).Upgrade(ctx(t))
	if err != nil || n != 1 {
		t.Errorf("Upgrade: %d re-sealed, %v; want 1", n, err)
	}
	if v := version("at-start"); v != secrets.SealDataKey {
		t.Errorf("after Upgrade the set is sealed with version %d, want %d", v, secrets.SealDataKey)
	}
	if n, err := store(t, reg, clusterSecret).Upgrade(ctx(t)); err != nil || n != 0 {
		t.Errorf("a second Upgrade: %d re-sealed, %v; want none", n, err)
	}
	for d, want := range olds {
		got, err := store(t, reg, clusterSecret).Ensure(ctx(t), d, nil)
		if err != nil || got.Digest() != want.Digest() {
			t.Errorf("%s after the upgrade: %v, same values %v", d, err, got.Digest() == want.Digest())
		}
		evs, _ := reg.SecretEvents(ctx(t), d)
		if len(evs) != 2 || evs[1].What != "resealed" || len(evs[1].Names) != 0 {
			t.Errorf("%s: events %+v; want the generation and one re-seal", d, evs)
		}
		// The derived key alone opens it no more: the data key does.
		sealed, _ := reg.SealedSecrets(ctx(t), d)
		if _, err := secrets.Open(legacy, d, sealed); err == nil {
			t.Errorf("%s still opens with the derived key", d)
		}
	}
	// Then the rotation applies to them too.
	if _, err := s.AddWrapping(ctx(t), kekOf(t, newClusterSecret)); err != nil {
		t.Fatal(err)
	}
	if got, err := store(t, reg, newClusterSecret).Ensure(ctx(t), "at-start", nil); err != nil || got.Digest() != olds["at-start"].Digest() {
		t.Errorf("an upgraded set with the new secret: %v", err)
	}
	for _, set := range olds {
		if found := filesContain(t, dir, set); len(found) > 0 {
			t.Errorf("the registry's files hold secrets in clear: %v", found)
		}
	}
}
