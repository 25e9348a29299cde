package registry

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// The registry keeps the cluster's data key only wrapped: each row is the
// key sealed by the caller (appliance/secrets.Wrap) under a key-encryption
// key derived from one cluster secret, named by that KEK's fingerprint. A
// copy of the registry's files holds no key that opens them.

// DataKeyWrappings returns every wrapping of the data key, by KEK
// fingerprint.
func (r *Registry) DataKeyWrappings(ctx context.Context) (map[string][]byte, error) {
	var out map[string][]byte
	err := r.inTx(ctx, "read the data key wrappings", func(tx *sql.Tx) error {
		var err error
		out, err = dataKeyWrappings(ctx, tx)
		return err
	})
	return out, err
}

func dataKeyWrappings(ctx context.Context, tx *sql.Tx) (map[string][]byte, error) {
	out := map[string][]byte{}
	rows, err := tx.QueryContext(ctx, `SELECT kek, wrapped FROM data_key_wrappings`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var kek string
		var wrapped []byte
		if err := rows.Scan(&kek, &wrapped); err != nil {
			return nil, err
		}
		out[kek] = wrapped
	}
	return out, rows.Err()
}

// InitDataKey stores the wrapping of a new data key only when the registry
// holds no wrapping yet, in one transaction, so two members starting at
// once end with one data key. It returns the wrappings stored after.
func (r *Registry) InitDataKey(ctx context.Context, kek string, wrapped []byte) (map[string][]byte, error) {
	if kek == "" || len(wrapped) == 0 {
		return nil, errors.New("registry: init data key: fingerprint and wrapping are required")
	}
	var out map[string][]byte
	err := r.inTx(ctx, "initialise the data key", func(tx *sql.Tx) error {
		var err error
		if out, err = dataKeyWrappings(ctx, tx); err != nil || len(out) > 0 {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO data_key_wrappings (kek, wrapped, created_at) VALUES (?, ?, ?)`,
			kek, wrapped, unixNano(time.Now())); err != nil {
			return err
		}
		out = map[string][]byte{kek: wrapped}
		return nil
	})
	return out, err
}

// AddDataKeyWrapping stores another wrapping of the data key (under a new
// cluster secret's KEK); one already stored under that KEK is replaced.
func (r *Registry) AddDataKeyWrapping(ctx context.Context, kek string, wrapped []byte) error {
	if kek == "" || len(wrapped) == 0 {
		return errors.New("registry: add data key wrapping: fingerprint and wrapping are required")
	}
	return r.inTx(ctx, "add a data key wrapping", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO data_key_wrappings (kek, wrapped, created_at) VALUES (?, ?, ?)
			ON CONFLICT (kek) DO UPDATE SET wrapped = excluded.wrapped, created_at = excluded.created_at`,
			kek, wrapped, unixNano(time.Now()))
		return err
	})
}

// RemoveDataKeyWrappings deletes every wrapping but keep's (the KEK of the
// cluster secret every member holds now) and says how many it deleted. It
// refuses when keep has no wrapping: that would lose the data key.
func (r *Registry) RemoveDataKeyWrappings(ctx context.Context, keep string) (int, error) {
	var n int64
	err := r.inTx(ctx, "remove old data key wrappings", func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM data_key_wrappings WHERE kek = ?`, keep).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return errors.New("no wrapping of the data key under the KEK to keep: nothing removed")
		} else if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM data_key_wrappings WHERE kek <> ?`, keep)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}
