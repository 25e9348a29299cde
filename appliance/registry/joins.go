package registry

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Results of a join attempt.
const (
	JoinSucceeded = "joined"
	JoinRefused   = "refused" // bad proof, replay, stale or malformed request
	JoinFailed    = "failed"  // accepted, but the LXD join did not complete
)

// JoinAttempt is one attempt of a host to join the cluster.
type JoinAttempt struct {
	ID     int64
	Host   string // the name the joiner gave
	At     time.Time
	Result string // JoinSucceeded, JoinRefused or JoinFailed
	Detail string // why it was refused or failed; never secret material
}

// RecordJoinAttempt appends an attempt and returns it with its ID. At
// defaults to now. After a leader change mid-write the attempt may be
// recorded twice: it is history, not state.
func (r *Registry) RecordJoinAttempt(ctx context.Context, a JoinAttempt) (JoinAttempt, error) {
	if a.Host == "" || a.Result == "" {
		return a, fmt.Errorf("registry: record join attempt: host and result are required")
	}
	if a.At.IsZero() {
		a.At = time.Now()
	}
	a.At = a.At.UTC()
	err := r.inTx(ctx, "record join attempt of "+a.Host, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO join_attempts (host, at, result, detail) VALUES (?, ?, ?, ?)`,
			a.Host, unixNano(a.At), a.Result, a.Detail)
		if err != nil {
			return err
		}
		a.ID, err = res.LastInsertId()
		return err
	})
	return a, err
}

// JoinAttempts returns a host's attempts, oldest first; an empty host
// returns every host's.
func (r *Registry) JoinAttempts(ctx context.Context, host string) ([]JoinAttempt, error) {
	var out []JoinAttempt
	err := r.inTx(ctx, "list join attempts", func(tx *sql.Tx) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `SELECT id, host, at, result, detail FROM join_attempts
			WHERE ? = '' OR host = ? ORDER BY at, id`, host, host)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var a JoinAttempt
			var at int64
			if err := rows.Scan(&a.ID, &a.Host, &at, &a.Result, &a.Detail); err != nil {
				return err
			}
			a.At = fromUnixNano(at)
			out = append(out, a)
		}
		return rows.Err()
	})
	return out, err
}
