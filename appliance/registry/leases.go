package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Lease is a named lock held by one host until it expires, e.g. "deploy":
// the member that holds it is the one that runs the first-boot deploy,
// whichever member that is.
type Lease struct {
	Name    string    `json:"name"`
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

// AcquireLease takes or renews the named lease for holder until now+ttl
// when it is free, expired or already holder's; otherwise it returns the
// current lease and ok false.
func (r *Registry) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (lease Lease, ok bool, err error) {
	if name == "" || holder == "" || ttl <= 0 {
		return Lease{}, false, errors.New("registry: acquire lease: name, holder and a positive ttl are required")
	}
	err = r.inTx(ctx, fmt.Sprintf("acquire lease %s for %s", name, holder), func(tx *sql.Tx) error {
		now := time.Now()
		var cur Lease
		var expires int64
		err := tx.QueryRowContext(ctx, `SELECT holder, expires_at FROM leases WHERE name = ?`, name).Scan(&cur.Holder, &expires)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		case cur.Holder != holder && expires > unixNano(now):
			lease, ok = Lease{Name: name, Holder: cur.Holder, Expires: fromUnixNano(expires)}, false
			return nil
		}
		lease = Lease{Name: name, Holder: holder, Expires: now.Add(ttl).UTC()}
		ok = true
		_, err = tx.ExecContext(ctx, `INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at`,
			name, holder, unixNano(lease.Expires))
		return err
	})
	return lease, ok, err
}

// ReleaseLease gives the lease up if holder holds it.
func (r *Registry) ReleaseLease(ctx context.Context, name, holder string) error {
	return r.inTx(ctx, fmt.Sprintf("release lease %s of %s", name, holder), func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM leases WHERE name = ? AND holder = ?`, name, holder)
		return err
	})
}
