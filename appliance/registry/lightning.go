package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrGenerationMoved is returned by BumpLightning when the generation is
// no longer the one the caller read: another member restored or migrated
// the node meanwhile.
var ErrGenerationMoved = errors.New("the Lightning generation changed meanwhile")

// LightningGeneration returns a Lightning node's current fencing
// generation; 0 when none was ever recorded. A node is named
// <deployment>/<instance>.
func (r *Registry) LightningGeneration(ctx context.Context, node string) (int64, error) {
	rec, err := r.LightningRecord(ctx, node)
	return rec.Generation, err
}

// LightningRecord is a node's current generation and what moved it there.
type LightningRecord struct {
	Generation int64
	Member     string // where it was moved
	Why        string
	At         time.Time
}

// LightningRecord reads the node's generation with its member, reason and
// time; the zero record when none was ever recorded.
func (r *Registry) LightningRecord(ctx context.Context, node string) (LightningRecord, error) {
	var rec LightningRecord
	err := r.inTx(ctx, "read the Lightning generation of "+node, func(tx *sql.Tx) error {
		var at int64
		err := tx.QueryRowContext(ctx, `SELECT generation, member, why, updated_at FROM lightning_generations WHERE node = ?`, node).
			Scan(&rec.Generation, &rec.Member, &rec.Why, &at)
		if errors.Is(err, sql.ErrNoRows) {
			rec = LightningRecord{}
			return nil
		}
		rec.At = fromUnixNano(at)
		return err
	})
	return rec, err
}

// BumpLightning moves the node's generation from from to
// from+1 (compare-and-set: ErrGenerationMoved when it is no longer from)
// and returns the new one; member and why are recorded with it.
func (r *Registry) BumpLightning(ctx context.Context, node string, from int64, member, why string) (int64, error) {
	next := from + 1
	err := r.inTx(ctx, fmt.Sprintf("bump the Lightning generation of %s from %d", node, from), func(tx *sql.Tx) error {
		var cur int64
		err := tx.QueryRowContext(ctx, `SELECT generation FROM lightning_generations WHERE node = ?`, node).Scan(&cur)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if cur != from {
			return fmt.Errorf("%w: it is %d, not %d", ErrGenerationMoved, cur, from)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO lightning_generations (node, generation, member, why, updated_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (node) DO UPDATE SET generation = excluded.generation, member = excluded.member,
			why = excluded.why, updated_at = excluded.updated_at`,
			node, next, member, why, unixNano(time.Now()))
		return err
	})
	if err != nil {
		return 0, err
	}
	return next, nil
}
