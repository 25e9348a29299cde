package deploystate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
)

// Folder keeps the state of a standalone LXD's deployments in a local
// folder: the secrets as 0600 files (secrets.Dir) and each deployment's
// revisions in <deployment>.revisions.json.
type Folder struct {
	secrets.Dir
}

// Where names the folder.
func (f Folder) Where() string { return f.Dir.Where() }

func (f Folder) historyFile(deployment string) string {
	return filepath.Join(string(f.Dir), deployment+".revisions.json")
}

// History reads the deployment's revisions; none without a file.
func (f Folder) History(_ context.Context, deployment string) ([]registry.Revision, error) {
	data, err := os.ReadFile(f.historyFile(deployment))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("revisions of %s: %w", deployment, err)
	}
	var revs []registry.Revision
	if err := json.Unmarshal(data, &revs); err != nil {
		return nil, fmt.Errorf("revisions of %s: %s: %w", deployment, f.historyFile(deployment), err)
	}
	return revs, nil
}

func (f Folder) save(deployment string, revs []registry.Revision) error {
	data, err := json.MarshalIndent(revs, "", "  ")
	if err == nil {
		err = f.write(f.historyFile(deployment), data)
	}
	if err != nil {
		return fmt.Errorf("revisions of %s: %w", deployment, err)
	}
	return nil
}

// write replaces the folder's file p (0600; the folder made 0700) with
// data, whole or not at all.
func (f Folder) write(p string, data []byte) error {
	if err := os.MkdirAll(string(f.Dir), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(p+".tmp", data, 0o600); err != nil {
		return err
	}
	return os.Rename(p+".tmp", p)
}

// StartDeploy appends a revision when the recipe differs from the last.
func (f Folder) StartDeploy(ctx context.Context, d registry.DeployStart) (registry.Revision, error) {
	revs, err := f.History(ctx, d.Deployment)
	if err != nil {
		return registry.Revision{}, err
	}
	now := time.Now().UTC()
	if len(revs) == 0 || revs[len(revs)-1].SpecHash != d.SpecHash {
		revs = append(revs, registry.Revision{Deployment: d.Deployment, Revision: int64(len(revs) + 1),
			SpecHash: d.SpecHash, CreatedAt: now})
	}
	cur := &revs[len(revs)-1]
	cur.State, cur.Recipe, cur.Member, cur.StartedAt, cur.UpdatedAt = registry.RevisionDeploying, d.Recipe, d.Member, now, now
	cur.EndedAt, cur.Mutations, cur.Error = time.Time{}, 0, ""
	return *cur, f.save(d.Deployment, revs)
}

// EndDeploy records the outcome on the revision.
func (f Folder) EndDeploy(ctx context.Context, deployment string, revision int64, mutations int, deployErr string) error {
	revs, err := f.History(ctx, deployment)
	if err != nil {
		return err
	}
	if revision < 1 || int(revision) > len(revs) {
		return fmt.Errorf("deployment %s revision %d: %w", deployment, revision, registry.ErrNotFound)
	}
	cur := &revs[revision-1]
	cur.State = registry.RevisionDeployed
	if deployErr != "" {
		cur.State = registry.RevisionFailed
	}
	cur.EndedAt, cur.Mutations, cur.Error = time.Now().UTC(), mutations, deployErr
	cur.UpdatedAt = cur.EndedAt
	return f.save(deployment, revs)
}

// Rotate gives one secret of the deployment's file a new value.
func (f Folder) Rotate(_ context.Context, deployment, name string) error {
	return secrets.Rotate(string(f.Dir), deployment, name)
}
