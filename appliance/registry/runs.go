package registry

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// States of a revision's deploy (Revision.State).
const (
	RevisionDeploying = "deploying"
	RevisionDeployed  = "deployed"
	RevisionFailed    = "failed"
)

// DeployStart is what StartDeploy records.
type DeployStart struct {
	Deployment string
	SpecHash   string // the recipe's digest
	Recipe     string // the recipe's text
	Member     string // the host that runs the deploy
}

// StartDeploy records that a deploy of the recipe begins: a new revision
// when the recipe differs from the current revision's (as AddRevision), and
// on it the member, the start time and state "deploying".
func (r *Registry) StartDeploy(ctx context.Context, d DeployStart) (Revision, error) {
	rev, err := r.AddRevision(ctx, d.Deployment, d.SpecHash)
	if err != nil {
		return rev, err
	}
	now := time.Now()
	err = r.inTx(ctx, fmt.Sprintf("start deploy of %s revision %d", d.Deployment, rev.Revision), func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE revisions SET state = ?, recipe = ?, member = ?, started_at = ?,
			ended_at = 0, mutations = 0, error = '', updated_at = ? WHERE deployment = ? AND revision = ?`,
			RevisionDeploying, d.Recipe, d.Member, unixNano(now), unixNano(now), d.Deployment, rev.Revision)
		return err
	})
	if err != nil {
		return rev, err
	}
	rev.State, rev.Recipe, rev.Member, rev.StartedAt, rev.UpdatedAt = RevisionDeploying, d.Recipe, d.Member, now.UTC(), now.UTC()
	rev.EndedAt, rev.Mutations, rev.Error = time.Time{}, 0, ""
	return rev, nil
}

// EndDeploy records a deploy's outcome on its revision: "deployed", or
// "failed" with the error (never secret material: callers redact).
func (r *Registry) EndDeploy(ctx context.Context, deployment string, revision int64, mutations int, deployErr string) error {
	state := RevisionDeployed
	if deployErr != "" {
		state = RevisionFailed
	}
	return r.inTx(ctx, fmt.Sprintf("end deploy of %s revision %d", deployment, revision), func(tx *sql.Tx) error {
		now := unixNano(time.Now())
		res, err := tx.ExecContext(ctx, `UPDATE revisions SET state = ?, ended_at = ?, mutations = ?, error = ?, updated_at = ?
			WHERE deployment = ? AND revision = ?`, state, now, mutations, deployErr, now, deployment, revision)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("deployment %s revision %d: %w", deployment, revision, ErrNotFound)
		}
		return nil
	})
}
