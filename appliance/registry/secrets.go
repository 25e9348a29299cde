package registry

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The registry keeps each deployment's secrets as one opaque sealed blob:
// the caller seals and opens it (appliance/secrets, under a key derived
// from the cluster secret), so the registry's files never hold a value.

// SecretEvent is one change of a deployment's secrets, as history: which
// names, never a value.
type SecretEvent struct {
	Deployment string    `json:"deployment"`
	At         time.Time `json:"at"`
	// What happened: "generated", "imported", "rotated", "removed", or
	// "resealed" (an older ssbuild's set sealed again under the data key).
	What   string   `json:"what"`
	Names  []string `json:"names,omitempty"`
	Member string   `json:"member,omitempty"` // the host that made the change
}

// errChanged says the row changed between the read and the write of an
// update: the update runs again on what is there now.
var errChanged = errors.New("deployment secrets changed during the update")

// SealedSecrets returns a deployment's sealed secrets, or ErrNotFound.
func (r *Registry) SealedSecrets(ctx context.Context, deployment string) ([]byte, error) {
	var sealed []byte
	err := r.inTx(ctx, "read the secrets of "+deployment, func(tx *sql.Tx) error {
		var err error
		sealed, err = sealedSecrets(ctx, tx, deployment)
		return err
	})
	if err == nil && sealed == nil {
		return nil, fmt.Errorf("secrets of deployment %s: %w", deployment, ErrNotFound)
	}
	return sealed, err
}

func sealedSecrets(ctx context.Context, tx *sql.Tx, deployment string) ([]byte, error) {
	var sealed []byte
	err := tx.QueryRowContext(ctx, `SELECT sealed FROM deployment_secrets WHERE deployment = ?`, deployment).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return sealed, err
}

// UpdateSealedSecrets reads a deployment's sealed secrets (nil when there
// are none), hands them to change and writes what it returns, with its
// events, in one transaction; a nil next leaves the row as it is. The
// write happens only if the row is still what change saw, else change runs
// again on the new row, so two members ensuring the same deployment at
// once end with one set. change may run more than once. It returns the
// sealed secrets now stored.
func (r *Registry) UpdateSealedSecrets(ctx context.Context, deployment string,
	change func(cur []byte) (next []byte, evs []SecretEvent, err error)) ([]byte, error) {
	if deployment == "" {
		return nil, errors.New("registry: update secrets: deployment is required")
	}
	for {
		var stored []byte
		err := r.inTx(ctx, "update the secrets of "+deployment, func(tx *sql.Tx) error {
			cur, err := sealedSecrets(ctx, tx, deployment)
			if err != nil {
				return err
			}
			next, evs, err := change(cur)
			if err != nil || next == nil || bytes.Equal(next, cur) {
				stored = cur
				return err
			}
			now := unixNano(time.Now())
			var res sql.Result
			if cur == nil {
				res, err = tx.ExecContext(ctx, `INSERT INTO deployment_secrets (deployment, sealed, updated_at) VALUES (?, ?, ?)
					ON CONFLICT (deployment) DO NOTHING`, deployment, next, now)
			} else {
				res, err = tx.ExecContext(ctx, `UPDATE deployment_secrets SET sealed = ?, updated_at = ?
					WHERE deployment = ? AND sealed = ?`, next, now, deployment, cur)
			}
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				return errChanged
			}
			for _, ev := range evs {
				if err := addSecretEvent(ctx, tx, deployment, ev, now); err != nil {
					return err
				}
			}
			stored = next
			return nil
		})
		if errors.Is(err, errChanged) {
			continue
		}
		return stored, err
	}
}

// DeleteSecrets forgets a deployment's secrets, recording who did; it says
// whether there were any.
func (r *Registry) DeleteSecrets(ctx context.Context, deployment, member string) (bool, error) {
	var had bool
	err := r.inTx(ctx, "delete the secrets of "+deployment, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM deployment_secrets WHERE deployment = ?`, deployment)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		had = n > 0
		if !had {
			return nil
		}
		return addSecretEvent(ctx, tx, deployment, SecretEvent{What: "removed", Member: member}, unixNano(time.Now()))
	})
	return had, err
}

func addSecretEvent(ctx context.Context, tx *sql.Tx, deployment string, ev SecretEvent, at int64) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO secret_events (deployment, at, what, names, member) VALUES (?, ?, ?, ?, ?)`,
		deployment, at, ev.What, strings.Join(ev.Names, ","), ev.Member)
	return err
}

// SecretEvents returns the history of a deployment's secrets, oldest first.
func (r *Registry) SecretEvents(ctx context.Context, deployment string) ([]SecretEvent, error) {
	var out []SecretEvent
	err := r.inTx(ctx, "list the secret events of "+deployment, func(tx *sql.Tx) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `SELECT deployment, at, what, names, member FROM secret_events
			WHERE deployment = ? ORDER BY at, id`, deployment)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var ev SecretEvent
			var at int64
			var names string
			if err := rows.Scan(&ev.Deployment, &at, &ev.What, &names, &ev.Member); err != nil {
				return err
			}
			ev.At = fromUnixNano(at)
			if names != "" {
				ev.Names = strings.Split(names, ",")
			}
			out = append(out, ev)
		}
		return rows.Err()
	})
	return out, err
}

// SealedDeployments lists the deployments whose sealed secrets the
// registry holds, sorted.
func (r *Registry) SealedDeployments(ctx context.Context) ([]string, error) {
	var out []string
	err := r.inTx(ctx, "list the deployments with secrets", func(tx *sql.Tx) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `SELECT deployment FROM deployment_secrets ORDER BY deployment`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var d string
			if err := rows.Scan(&d); err != nil {
				return err
			}
			out = append(out, d)
		}
		return rows.Err()
	})
	return out, err
}
