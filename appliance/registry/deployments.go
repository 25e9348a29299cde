package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// RevisionPending is the state of a revision that has not been applied yet.
const RevisionPending = "pending"

// Revision is one version of a deployment's spec. A deployment (a site:
// its LXD project, instances and stacks) is the list of its revisions; the
// highest is the current one.
type Revision struct {
	Deployment string
	Revision   int64 // 1, 2, ... per deployment
	SpecHash   string
	// State belongs to the deploy work ("pending", "applying",
	// "deployed", "failed", ...).
	State     string
	CreatedAt time.Time
	UpdatedAt time.Time

	// What the last deploy of this revision did (StartDeploy, EndDeploy):
	// the recipe's text, the member that ran it, when it started and
	// ended (zero while it runs), its mutations and its error.
	Recipe    string
	Member    string
	StartedAt time.Time
	EndedAt   time.Time
	Mutations int
	Error     string
}

// AddRevision records a new revision of the named deployment with the given
// spec hash, creating the deployment on its first revision. When the
// current revision already has this hash it is returned unchanged instead,
// so re-running a deploy after a crash does not pile up revisions.
func (r *Registry) AddRevision(ctx context.Context, deployment, specHash string) (Revision, error) {
	if deployment == "" || specHash == "" {
		return Revision{}, fmt.Errorf("registry: add revision: deployment and spec hash are required")
	}
	var rev Revision
	err := r.inTx(ctx, "add revision of "+deployment, func(tx *sql.Tx) error {
		now := unixNano(time.Now())
		if _, err := tx.ExecContext(ctx, `INSERT INTO deployments (name, created_at) VALUES (?, ?)
			ON CONFLICT (name) DO NOTHING`, deployment, now); err != nil {
			return err
		}
		cur, err := currentRevision(ctx, tx, deployment)
		switch {
		case err == nil && cur.SpecHash == specHash:
			rev = cur
			return nil
		case err != nil && !errors.Is(err, ErrNotFound):
			return err
		}
		rev = Revision{Deployment: deployment, Revision: cur.Revision + 1, SpecHash: specHash,
			State: RevisionPending, CreatedAt: fromUnixNano(now), UpdatedAt: fromUnixNano(now)}
		_, err = tx.ExecContext(ctx, `INSERT INTO revisions (deployment, revision, spec_hash, state, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?)`, deployment, rev.Revision, specHash, rev.State, now, now)
		return err
	})
	return rev, err
}

// SetRevisionState records the state of one revision.
func (r *Registry) SetRevisionState(ctx context.Context, deployment string, revision int64, state string) error {
	return r.inTx(ctx, fmt.Sprintf("set state of %s revision %d", deployment, revision), func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE revisions SET state = ?, updated_at = ? WHERE deployment = ? AND revision = ?`,
			state, unixNano(time.Now()), deployment, revision)
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

// CurrentRevision returns the highest revision of a deployment, or
// ErrNotFound.
func (r *Registry) CurrentRevision(ctx context.Context, deployment string) (Revision, error) {
	var rev Revision
	err := r.inTx(ctx, "read deployment "+deployment, func(tx *sql.Tx) error {
		var err error
		rev, err = currentRevision(ctx, tx, deployment)
		return err
	})
	return rev, err
}

// Deployments returns the current revision of every deployment, by name.
func (r *Registry) Deployments(ctx context.Context) ([]Revision, error) {
	return r.queryRevisions(ctx, "list deployments", `SELECT `+revisionColumns+` FROM revisions r
		WHERE revision = (SELECT MAX(revision) FROM revisions WHERE deployment = r.deployment)
		ORDER BY deployment`)
}

// Revisions returns every revision of a deployment, oldest first.
func (r *Registry) Revisions(ctx context.Context, deployment string) ([]Revision, error) {
	return r.queryRevisions(ctx, "list revisions of "+deployment, `SELECT `+revisionColumns+` FROM revisions
		WHERE deployment = ? ORDER BY revision`, deployment)
}

func (r *Registry) queryRevisions(ctx context.Context, what, query string, args ...any) ([]Revision, error) {
	var out []Revision
	err := r.inTx(ctx, what, func(tx *sql.Tx) error {
		out = nil
		rows, err := tx.QueryContext(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			rev, err := scanRevision(rows.Scan)
			if err != nil {
				return err
			}
			out = append(out, rev)
		}
		return rows.Err()
	})
	return out, err
}

const revisionColumns = `deployment, revision, spec_hash, state, created_at, updated_at,
	recipe, member, started_at, ended_at, mutations, error`

func currentRevision(ctx context.Context, tx *sql.Tx, deployment string) (Revision, error) {
	row := tx.QueryRowContext(ctx, `SELECT `+revisionColumns+` FROM revisions
		WHERE deployment = ? ORDER BY revision DESC LIMIT 1`, deployment)
	rev, err := scanRevision(row.Scan)
	if errors.Is(err, sql.ErrNoRows) {
		return Revision{}, fmt.Errorf("deployment %s: %w", deployment, ErrNotFound)
	}
	return rev, err
}

func scanRevision(scan func(...any) error) (Revision, error) {
	var rev Revision
	var created, updated, started, ended int64
	err := scan(&rev.Deployment, &rev.Revision, &rev.SpecHash, &rev.State, &created, &updated,
		&rev.Recipe, &rev.Member, &started, &ended, &rev.Mutations, &rev.Error)
	rev.CreatedAt, rev.UpdatedAt = fromUnixNano(created), fromUnixNano(updated)
	if started != 0 {
		rev.StartedAt = fromUnixNano(started)
	}
	if ended != 0 {
		rev.EndedAt = fromUnixNano(ended)
	}
	return rev, err
}
