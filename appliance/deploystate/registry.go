// Package deploystate is where a cluster's deployment state lives: each
// deployment's one set of secrets and its revisions (what each deploy ran,
// where, when and how it ended). On a cluster member that is the
// replicated registry: the service holds a Registry store and serves it
// on its socket (Handler), and `ssbuild deploy/down/show` reach it there
// (Client), so every member sees the same secrets and history. On a
// standalone LXD it is a local folder (Folder).
//
// Secrets are sealed (appliance/secrets.Seal, XChaCha20-Poly1305) under the
// cluster's random data key before they reach the registry. The registry
// keeps the data key only wrapped, under a key-encryption key derived from
// a cluster secret (secrets.DeriveKEK), one wrapping per cluster secret
// still in use: a copy of the registry's files alone reveals none of them.
// A member unwraps the data key with its own cluster secret on first use.
//
// Rotating the cluster secret (`ssbuild cluster rotate-secret`) first adds
// a wrapping under the new secret's KEK (AddWrapping), then hands every
// member the new secret; the sealed sets are not touched. When every
// member took the new secret the other wrappings are removed
// (RemoveWrappings); until then a member that missed the rotation still
// opens the data key with its old secret.
//
// Upgrade: sets sealed by an older ssbuild straight under the key derived
// from the cluster secret (secrets.SealDerived) are re-sealed under the data
// key once, when the service starts (Upgrade) or on their first use.
//
// Upgrade: a deployment's secrets file left by an older ssbuild (the
// first-boot deploy's <stateDir>/deploy, `ssbuild deploy`'s
// /var/lib/ssbuild/deployments) is imported into the registry once, the
// registry's values winning, and the file then removed.
package deploystate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
)

// Store is the state deploy, down and show use: the secrets and the
// revisions of the deployments.
type Store interface {
	secrets.Store
	// StartDeploy records that a deploy of a recipe begins on a member.
	StartDeploy(ctx context.Context, d registry.DeployStart) (registry.Revision, error)
	// EndDeploy records its outcome ("" error: deployed).
	EndDeploy(ctx context.Context, deployment string, revision int64, mutations int, deployErr string) error
	// History lists a deployment's revisions, oldest first.
	History(ctx context.Context, deployment string) ([]registry.Revision, error)
	// Rotate gives one secret a new value, recorded; the next deploy
	// hands it to the services that use it.
	Rotate(ctx context.Context, deployment, name string) error
	// LightningGeneration is a Lightning node's current fencing
	// generation (0: none yet), the node named <deployment>/<instance>;
	// BumpLightning moves it from from to from+1
	// (registry.ErrGenerationMoved when it is no longer from) and says why.
	LightningGeneration(ctx context.Context, node string) (int64, error)
	BumpLightning(ctx context.Context, node string, from int64, why string) (int64, error)
	// LightningMovedBy says what moved the generation last, where and when.
	LightningMovedBy(ctx context.Context, node string) (string, error)
	// RecordRestoreTest keeps a deployment's last restore test (its
	// newest backup restored into a scratch copy); LastRestoreTest reads
	// it, nil when none ran.
	RecordRestoreTest(ctx context.Context, t registry.RestoreTest) error
	LastRestoreTest(ctx context.Context, deployment string) (*registry.RestoreTest, error)
	Leases
}

// Leases are a state store's named locks.
type Leases interface {
	// AcquireLease takes or renews a named lease for holder until ttl
	// from now when it is free, expired or holder's; else it returns the
	// lease and ok false. ReleaseLease gives it up if holder holds it.
	// HoldLease keeps one while work runs.
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (lease registry.Lease, ok bool, err error)
	ReleaseLease(ctx context.Context, name, holder string) error
}

// Registry keeps the state in this host's registry node; the service
// holds it.
type Registry struct {
	Reg *registry.Registry
	// KEK, from this host's cluster secret (secrets.DeriveKEK), unwraps the
	// data key; Cluster is the cluster's name the wrapping is bound to.
	KEK     secrets.KEK
	Cluster string
	// Legacy, from the cluster secret (secrets.DeriveKey), opens the sets
	// an older ssbuild sealed, to re-seal them under the data key.
	Legacy secrets.Key
	// Member is this host's name, recorded with every change.
	Member string
	// ImportDirs are folders of older ssbuilds' secrets files, imported on
	// first use and then removed; the first folder's value wins when two
	// files disagree.
	ImportDirs []string
	// Logf, when set, hears what was imported (names and counts only).
	Logf func(format string, args ...any)

	mu      sync.Mutex
	dataKey secrets.Key // once unwrapped
}

// key returns the data key: unwrapped from the registry with KEK, or, when
// the registry holds none yet, a new one stored wrapped under KEK.
func (s *Registry) key(ctx context.Context) (secrets.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.dataKey.IsZero() {
		return s.dataKey, nil
	}
	if s.KEK.IsZero() {
		return secrets.Key{}, errors.New("data key: no KEK (no cluster secret)")
	}
	fp := s.KEK.Fingerprint()
	wrappings, err := s.Reg.DataKeyWrappings(ctx)
	if err != nil {
		return secrets.Key{}, fmt.Errorf("data key: %w", err)
	}
	if len(wrappings) == 0 {
		fresh, err := secrets.NewDataKey()
		if err != nil {
			return secrets.Key{}, err
		}
		w, err := secrets.Wrap(s.KEK, s.Cluster, fresh)
		if err != nil {
			return secrets.Key{}, err
		}
		// Another member may have stored its own first: use that one.
		if wrappings, err = s.Reg.InitDataKey(ctx, fp, w); err != nil {
			return secrets.Key{}, fmt.Errorf("data key: %w", err)
		}
	}
	w, ok := wrappings[fp]
	if !ok {
		// The sets do not open with this host's secret: ErrWrongKey.
		return secrets.Key{}, fmt.Errorf("data key: none of its %d wrappings in the registry is under this host's cluster secret "+
			"(rotated while this host was away, and the old wrapping since removed?): %w", len(wrappings), secrets.ErrWrongKey)
	}
	k, err := secrets.Unwrap(s.KEK, s.Cluster, w)
	if err != nil {
		return secrets.Key{}, fmt.Errorf("data key: %w", err)
	}
	s.dataKey = k
	return k, nil
}

// open opens a deployment's sealed set with the key it was sealed under,
// and says whether it was an older ssbuild's (to re-seal).
func (s *Registry) open(ctx context.Context, deployment string, sealed []byte) (set secrets.Set, legacy bool, err error) {
	if secrets.SealVersion(sealed) == secrets.SealDerived {
		if s.Legacy.IsZero() {
			return secrets.Set{}, true, fmt.Errorf("secrets of %s: sealed by an older ssbuild, and no key to open them", deployment)
		}
		set, err = secrets.Open(s.Legacy, deployment, sealed)
		return set, true, err
	}
	k, err := s.key(ctx)
	if err != nil {
		return secrets.Set{}, false, err
	}
	set, err = secrets.Open(k, deployment, sealed)
	return set, false, err
}

// seal seals a set under the data key.
func (s *Registry) seal(ctx context.Context, set secrets.Set) ([]byte, error) {
	k, err := s.key(ctx)
	if err != nil {
		return nil, err
	}
	return secrets.Seal(k, set)
}

// resealed is the event of a set re-sealed under the data key.
func (s *Registry) resealed() registry.SecretEvent {
	return registry.SecretEvent{What: "resealed", Member: s.Member}
}

// Upgrade re-seals under the data key every set an older ssbuild sealed
// under the key derived from the cluster secret (the service does it when
// its registry opens); the values stay as they are.
func (s *Registry) Upgrade(ctx context.Context) (int, error) {
	if _, err := s.key(ctx); err != nil {
		return 0, err
	}
	deployments, err := s.Reg.SealedDeployments(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, d := range deployments {
		done := false
		_, err := s.Reg.UpdateSealedSecrets(ctx, d, func(cur []byte) ([]byte, []registry.SecretEvent, error) {
			done = false
			if cur == nil || secrets.SealVersion(cur) != secrets.SealDerived {
				return nil, nil, nil
			}
			set, _, err := s.open(ctx, d, cur)
			if err != nil {
				return nil, nil, fmt.Errorf("the registry's %w", err)
			}
			next, err := s.seal(ctx, set)
			done = err == nil
			return next, []registry.SecretEvent{s.resealed()}, err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("re-seal the secrets of %s under the data key: %w", d, err))
		} else if done {
			n++
		}
	}
	if n > 0 && s.Logf != nil {
		s.Logf("re-sealed the secrets of %d deployments under the cluster's data key", n)
	}
	return n, errors.Join(errs...)
}

// AddWrapping stores the data key wrapped under kek (a new cluster
// secret's, before the members take it) and returns its fingerprint.
func (s *Registry) AddWrapping(ctx context.Context, kek secrets.KEK) (string, error) {
	k, err := s.key(ctx)
	if err != nil {
		return "", err
	}
	w, err := secrets.Wrap(kek, s.Cluster, k)
	if err != nil {
		return "", err
	}
	if err := s.Reg.AddDataKeyWrapping(ctx, kek.Fingerprint(), w); err != nil {
		return "", fmt.Errorf("data key: %w", err)
	}
	return kek.Fingerprint(), nil
}

// RemoveWrappings removes every wrapping of the data key but the one under
// the KEK fingerprinted keep (once every member holds that KEK's secret).
func (s *Registry) RemoveWrappings(ctx context.Context, keep string) (int, error) {
	n, err := s.Reg.RemoveDataKeyWrappings(ctx, keep)
	if err != nil {
		return 0, fmt.Errorf("data key: %w", err)
	}
	return n, nil
}

// Where says the registry.
func (s *Registry) Where() string { return "the cluster's registry" }

// Ensure returns the deployment's one set, generating only missing names,
// after importing any older file of it.
func (s *Registry) Ensure(ctx context.Context, deployment string, names []string) (secrets.Set, error) {
	return s.EnsureImporting(ctx, deployment, names, secrets.Set{}, "")
}

// EnsureImporting is Ensure that also takes the values of an older file
// read elsewhere (the CLI's --state-dir); the registry's values win.
func (s *Registry) EnsureImporting(ctx context.Context, deployment string, names []string, imported secrets.Set, from string) (secrets.Set, error) {
	type source struct {
		set  secrets.Set
		from string
		dir  string
	}
	var sources []source
	for _, dir := range s.ImportDirs {
		set, ok, err := secrets.ReadFile(dir, deployment)
		if err != nil {
			return secrets.Set{}, fmt.Errorf("import the secrets of %s: %w", deployment, err)
		}
		if ok {
			sources = append(sources, source{set, secrets.File(dir, deployment), dir})
		}
	}
	if imported.Len() > 0 {
		sources = append(sources, source{set: imported, from: from})
	}
	var result secrets.Set
	var notes []string
	_, err := s.Reg.UpdateSealedSecrets(ctx, deployment, func(cur []byte) ([]byte, []registry.SecretEvent, error) {
		notes = nil
		set := secrets.New(deployment, nil)
		var evs []registry.SecretEvent
		if cur != nil {
			var err error
			var legacy bool
			if set, legacy, err = s.open(ctx, deployment, cur); err != nil {
				// Never generate over a set that does not open: that would
				// be the second set of passwords this store exists to stop.
				return nil, nil, fmt.Errorf("the registry's %w", err)
			}
			if legacy {
				evs = append(evs, s.resealed())
			}
		}
		for _, src := range sources {
			merged, added, differing := set.Merge(src.set)
			set = merged
			if len(added) > 0 {
				evs = append(evs, registry.SecretEvent{What: "imported", Names: added, Member: s.Member})
			}
			notes = append(notes, fmt.Sprintf("%s: %d secrets imported into the registry from %s (%d already there with another value, kept)",
				deployment, len(added), src.from, len(differing)))
		}
		missing := set.Missing(names)
		set, generated, err := set.WithNames(names)
		if err != nil {
			return nil, nil, err
		}
		if generated {
			evs = append(evs, registry.SecretEvent{What: "generated", Names: missing, Member: s.Member})
		}
		result = set
		if len(evs) == 0 {
			return nil, nil, nil // nothing new: no write
		}
		next, err := s.seal(ctx, set)
		return next, evs, err
	})
	if err != nil {
		return secrets.Set{}, fmt.Errorf("secrets of %s in the registry: %w", deployment, err)
	}
	// The registry holds every value of the files now: remove them, so no
	// later run reads an old copy.
	for _, src := range sources {
		if src.dir == "" {
			continue
		}
		if err := secrets.RemoveFile(src.dir, deployment); err != nil {
			return secrets.Set{}, err
		}
	}
	if s.Logf != nil {
		for _, n := range notes {
			s.Logf("%s", n)
		}
	}
	return result, nil
}

// Rotate replaces one secret's value with a new one and records it. The
// services that use it pick it up on the next deploy; a database that was
// initialised with the old value keeps it until changed inside.
func (s *Registry) Rotate(ctx context.Context, deployment, name string) error {
	_, err := s.Reg.UpdateSealedSecrets(ctx, deployment, func(cur []byte) ([]byte, []registry.SecretEvent, error) {
		if cur == nil {
			return nil, nil, fmt.Errorf("deployment %s has no secrets in the registry", deployment)
		}
		set, _, err := s.open(ctx, deployment, cur)
		if err != nil {
			return nil, nil, fmt.Errorf("the registry's %w", err)
		}
		if _, ok := set.Get(name); !ok {
			return nil, nil, fmt.Errorf("deployment %s has no secret %q (it has: %s)", deployment, name, strings.Join(set.Names(), ", "))
		}
		if set, err = set.Replace(name); err != nil {
			return nil, nil, err
		}
		next, err := s.seal(ctx, set)
		return next, []registry.SecretEvent{{What: "rotated", Names: []string{name}, Member: s.Member}}, err
	})
	if err != nil {
		return fmt.Errorf("rotate %s of %s: %w", name, deployment, err)
	}
	return nil
}

// Has says whether the registry (or an older file still to import) holds
// secrets of the deployment.
func (s *Registry) Has(ctx context.Context, deployment string) (bool, error) {
	_, err := s.Reg.SealedSecrets(ctx, deployment)
	switch {
	case err == nil:
		return true, nil
	case !errors.Is(err, registry.ErrNotFound):
		return false, err
	}
	for _, dir := range s.ImportDirs {
		if _, err := os.Stat(secrets.File(dir, deployment)); err == nil {
			return true, nil
		}
	}
	return false, nil
}

// Remove deletes the deployment's secrets from the registry and any older
// file of them (down --purge).
func (s *Registry) Remove(ctx context.Context, deployment string) error {
	if _, err := s.Reg.DeleteSecrets(ctx, deployment, s.Member); err != nil {
		return fmt.Errorf("remove the secrets of %s from the registry: %w", deployment, err)
	}
	for _, dir := range s.ImportDirs {
		if err := secrets.RemoveFile(dir, deployment); err != nil {
			return err
		}
	}
	return nil
}

// ImportAll imports every older secrets file in ImportDirs (the service
// does it when its registry opens, before any deploy).
func (s *Registry) ImportAll(ctx context.Context) error {
	var errs []error
	seen := map[string]bool{}
	for _, dir := range s.ImportDirs {
		files, err := filepath.Glob(filepath.Join(dir, "*.secrets"))
		if err != nil {
			return err
		}
		for _, f := range files {
			d := strings.TrimSuffix(filepath.Base(f), ".secrets")
			if seen[d] {
				continue
			}
			seen[d] = true
			if _, err := s.Ensure(ctx, d, nil); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// StartDeploy records the start in the registry.
func (s *Registry) StartDeploy(ctx context.Context, d registry.DeployStart) (registry.Revision, error) {
	return s.Reg.StartDeploy(ctx, d)
}

// EndDeploy records the outcome in the registry.
func (s *Registry) EndDeploy(ctx context.Context, deployment string, revision int64, mutations int, deployErr string) error {
	return s.Reg.EndDeploy(ctx, deployment, revision, mutations, deployErr)
}

// History lists the revisions from the registry.
func (s *Registry) History(ctx context.Context, deployment string) ([]registry.Revision, error) {
	return s.Reg.Revisions(ctx, deployment)
}
