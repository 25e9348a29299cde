package secrets

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// Store is where the secrets of a cluster's deployments live: on a
// cluster member the registry (through the local service), on a standalone
// LXD a local folder (Dir). Deploy, down and show take one, so there is one
// code path whatever keeps them.
type Store interface {
	// Ensure returns the deployment's secrets with at least names, keeping
	// the values it holds and generating only the missing ones.
	Ensure(ctx context.Context, deployment string, names []string) (Set, error)
	// Has says whether the store holds secrets of the deployment.
	Has(ctx context.Context, deployment string) (bool, error)
	// Remove deletes the deployment's secrets (down --purge); removing
	// none is not an error.
	Remove(ctx context.Context, deployment string) error
	// Where says where the secrets are, for messages.
	Where() string
}

// Dir keeps each deployment's secrets in a 0600 file in the folder (0700):
// the store of a standalone LXD.
type Dir string

// Ensure is the package's Ensure on the folder.
func (d Dir) Ensure(_ context.Context, deployment string, names []string) (Set, error) {
	return Ensure(string(d), deployment, names)
}

// Has says whether the deployment's file exists.
func (d Dir) Has(_ context.Context, deployment string) (bool, error) {
	_, err := os.Stat(File(string(d), deployment))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("secrets: %w", err)
}

// Remove deletes the deployment's file (and its lock file).
func (d Dir) Remove(_ context.Context, deployment string) error {
	return RemoveFile(string(d), deployment)
}

// Where names the file's folder.
func (d Dir) Where() string { return "folder " + string(d) }

// ReadFile reads a deployment's secrets file under dir without changing
// it; ok is false when there is none. For importing a file into the
// registry.
func ReadFile(dir, deployment string) (set Set, ok bool, err error) {
	path := File(dir, deployment)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Set{}, false, nil
	} else if err != nil {
		return Set{}, false, fmt.Errorf("secrets: %w", err)
	}
	values, err := parse(path, data)
	if err != nil {
		return Set{}, false, err
	}
	return Set{deployment: deployment, values: values}, true, nil
}

// RemoveFile deletes a deployment's secrets file and its lock file under
// dir; a missing file is not an error.
func RemoveFile(dir, deployment string) error {
	path := File(dir, deployment)
	for _, p := range []string{path, path + ".lock"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("secrets: remove the secrets of %s: %w", deployment, err)
		}
	}
	return nil
}

// Merge returns s with the values of add that s lacks; s's own values
// win (they are what the databases were initialised with). It reports
// the names added and the names whose values differed (kept from s).
func (s Set) Merge(add Set) (merged Set, added, differing []string) {
	m := make(map[string]string, len(s.values)+len(add.values))
	for k, v := range s.values {
		m[k] = v
	}
	for _, n := range add.Names() {
		v := add.values[n]
		if have, ok := m[n]; !ok {
			m[n] = v
			added = append(added, n)
		} else if have != v {
			differing = append(differing, n)
		}
	}
	return Set{deployment: s.deployment, values: m}, added, differing
}

// WithNames returns s with a generated value for each of names it lacks,
// and whether it generated any.
func (s Set) WithNames(names []string) (Set, bool, error) {
	if err := checkNames(s.deployment, names); err != nil {
		return Set{}, false, err
	}
	m := make(map[string]string, len(s.values)+len(names))
	for k, v := range s.values {
		m[k] = v
	}
	changed := false
	for _, n := range names {
		if _, ok := m[n]; ok {
			continue
		}
		v, err := generate()
		if err != nil {
			return Set{}, false, err
		}
		m[n] = v
		changed = true
	}
	return Set{deployment: s.deployment, values: m}, changed, nil
}

// Replace returns s with name's value newly generated (a rotation).
func (s Set) Replace(name string) (Set, error) {
	if err := checkNames(s.deployment, []string{name}); err != nil {
		return Set{}, err
	}
	v, err := generate()
	if err != nil {
		return Set{}, err
	}
	m := make(map[string]string, len(s.values))
	for k, x := range s.values {
		m[k] = x
	}
	m[name] = v
	return Set{deployment: s.deployment, values: m}, nil
}

// Len is how many secrets the set holds.
func (s Set) Len() int { return len(s.values) }

func checkNames(deployment string, names []string) error {
	if !deploymentRE.MatchString(deployment) {
		return fmt.Errorf("secrets: deployment name %q: want letters, digits, '.', '_' or '-'", deployment)
	}
	for _, n := range names {
		if !nameRE.MatchString(n) {
			return fmt.Errorf("secrets: secret name %q: want lowercase letters, digits, '.', '_' or '-'", n)
		}
	}
	return nil
}

// Rotate gives one secret of a deployment's file under dir a new value
// (under the file's lock, written atomically).
func Rotate(dir, deployment, name string) error {
	if err := checkNames(deployment, []string{name}); err != nil {
		return err
	}
	path := File(dir, deployment)
	unlock, err := lock(path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	set, ok, err := ReadFile(dir, deployment)
	if err != nil {
		return err
	}
	if _, has := set.Get(name); !ok || !has {
		return fmt.Errorf("secrets: %s has no secret %q", path, name)
	}
	if set, err = set.Replace(name); err != nil {
		return err
	}
	return writeAtomic(path, set.encode())
}
