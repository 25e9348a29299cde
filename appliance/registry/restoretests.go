package registry

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// RestoreTest is the outcome of a deployment's last restore test: its
// newest backup restored into a scratch copy and checked there.
type RestoreTest struct {
	Deployment string    `json:"deployment"` // the live deployment's project
	Backup     string    `json:"backup"`     // backups/NAME in the backup folder
	Taken      time.Time `json:"taken"`      // when the backup was taken
	Started    time.Time `json:"started"`
	Ended      time.Time `json:"ended"`
	Error      string    `json:"error,omitempty"` // "" when it restored and checked out
	Member     string    `json:"member,omitempty"`
}

// RecordRestoreTest keeps t as its deployment's last restore test.
func (r *Registry) RecordRestoreTest(ctx context.Context, t RestoreTest) error {
	return r.inTx(ctx, "record the restore test of "+t.Deployment, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO restore_tests (deployment, backup, taken_at, started_at, ended_at, error, member)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (deployment) DO UPDATE SET backup = excluded.backup, taken_at = excluded.taken_at,
			started_at = excluded.started_at, ended_at = excluded.ended_at, error = excluded.error, member = excluded.member`,
			t.Deployment, t.Backup, unixNano(t.Taken), unixNano(t.Started), unixNano(t.Ended), t.Error, t.Member)
		return err
	})
}

// LastRestoreTest returns the deployment's last restore test; nil when
// none ran.
func (r *Registry) LastRestoreTest(ctx context.Context, deployment string) (*RestoreTest, error) {
	var t *RestoreTest
	err := r.inTx(ctx, "read the restore test of "+deployment, func(tx *sql.Tx) error {
		var taken, started, ended int64
		x := RestoreTest{Deployment: deployment}
		err := tx.QueryRowContext(ctx, `SELECT backup, taken_at, started_at, ended_at, error, member FROM restore_tests WHERE deployment = ?`,
			deployment).Scan(&x.Backup, &taken, &started, &ended, &x.Error, &x.Member)
		if errors.Is(err, sql.ErrNoRows) {
			t = nil
			return nil
		} else if err != nil {
			return err
		}
		x.Taken, x.Started, x.Ended = fromUnixNano(taken), fromUnixNano(started), fromUnixNano(ended)
		t = &x
		return nil
	})
	return t, err
}
