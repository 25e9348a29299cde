package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Host is one appliance host as the registry knows it.
type Host struct {
	Name    string
	Address string // the host's cluster address, e.g. "10.0.0.12:8443"
	// State and Step say where the host is in first boot (e.g. "joining",
	// step "lxd-join"); their values belong to the appliance service.
	State string
	Step  string
	// Fingerprint is the SHA-256 of the host's LXD certificate, pinned at
	// registration: PutHost refuses to change it (ErrFingerprintChanged).
	Fingerprint string
	LastError   string    // empty when the last step succeeded
	UpdatedAt   time.Time // set by the registry on every write
}

// ErrFingerprintChanged is returned by PutHost for a known host that
// presents a different certificate. Forget it first (DeleteHost) if it
// was really reinstalled.
var ErrFingerprintChanged = errors.New("certificate fingerprint differs from the pinned one")

// PutHost creates or replaces the host named h.Name. A host keeps the
// fingerprint it was first registered with.
func (r *Registry) PutHost(ctx context.Context, h Host) error {
	if h.Name == "" || h.Address == "" || h.State == "" {
		return fmt.Errorf("registry: put host %q: name, address and state are required", h.Name)
	}
	return r.inTx(ctx, "put host "+h.Name, func(tx *sql.Tx) error {
		var pinned string
		err := tx.QueryRowContext(ctx, `SELECT fingerprint FROM hosts WHERE name = ?`, h.Name).Scan(&pinned)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if pinned != "" && pinned != h.Fingerprint {
			return fmt.Errorf("host %s: %w (pinned %s, presented %q)", h.Name, ErrFingerprintChanged, pinned, h.Fingerprint)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO hosts (name, address, state, step, fingerprint, last_error, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET address = excluded.address, state = excluded.state,
				step = excluded.step, fingerprint = excluded.fingerprint,
				last_error = excluded.last_error, updated_at = excluded.updated_at`,
			h.Name, h.Address, h.State, h.Step, h.Fingerprint, h.LastError, unixNano(time.Now()))
		return err
	})
}

// SetHostState records where a known host is: its state, step and last
// error (empty clears it).
func (r *Registry) SetHostState(ctx context.Context, name, state, step, lastError string) error {
	return r.inTx(ctx, "set state of host "+name, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE hosts SET state = ?, step = ?, last_error = ?, updated_at = ? WHERE name = ?`,
			state, step, lastError, unixNano(time.Now()), name)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("host %s: %w", name, ErrNotFound)
		}
		return nil
	})
}

// Host returns the host with the given name, or ErrNotFound.
func (r *Registry) Host(ctx context.Context, name string) (Host, error) {
	var h Host
	err := r.inTx(ctx, "read host "+name, func(tx *sql.Tx) error {
		row := tx.QueryRowContext(ctx, `SELECT `+hostColumns+` FROM hosts WHERE name = ?`, name)
		var err error
		h, err = scanHost(row.Scan)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("host %s: %w", name, ErrNotFound)
		}
		return err
	})
	return h, err
}

// Hosts returns every host, by name.
func (r *Registry) Hosts(ctx context.Context) ([]Host, error) {
	var hosts []Host
	err := r.inTx(ctx, "list hosts", func(tx *sql.Tx) error {
		hosts = nil // a retried attempt starts over
		rows, err := tx.QueryContext(ctx, `SELECT `+hostColumns+` FROM hosts ORDER BY name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			h, err := scanHost(rows.Scan)
			if err != nil {
				return err
			}
			hosts = append(hosts, h)
		}
		return rows.Err()
	})
	return hosts, err
}

// DeleteHost forgets a host and its pinned fingerprint; its join attempts
// stay as history. Deleting an unknown host is not an error.
func (r *Registry) DeleteHost(ctx context.Context, name string) error {
	return r.inTx(ctx, "delete host "+name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM hosts WHERE name = ?`, name)
		return err
	})
}

const hostColumns = `name, address, state, step, fingerprint, last_error, updated_at`

func scanHost(scan func(...any) error) (Host, error) {
	var h Host
	var updated int64
	err := scan(&h.Name, &h.Address, &h.State, &h.Step, &h.Fingerprint, &h.LastError, &updated)
	h.UpdatedAt = fromUnixNano(updated)
	return h, err
}
