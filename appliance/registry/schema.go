package registry

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// migrations are the schema's versions: migrations[i] takes the schema from
// version i to i+1. Append only; never edit one that has shipped, since
// nodes that already ran it will not run it again.
var migrations = []string{
	// 1: hosts, join attempts, deployments and revisions.
	`CREATE TABLE hosts (
		name        TEXT PRIMARY KEY,
		address     TEXT NOT NULL,
		state       TEXT NOT NULL,
		step        TEXT NOT NULL DEFAULT '',
		fingerprint TEXT NOT NULL DEFAULT '',
		last_error  TEXT NOT NULL DEFAULT '',
		updated_at  INTEGER NOT NULL
	);
	-- One certificate pins one host.
	CREATE UNIQUE INDEX hosts_fingerprint ON hosts (fingerprint) WHERE fingerprint != '';
	CREATE TABLE join_attempts (
		id     INTEGER PRIMARY KEY AUTOINCREMENT,
		host   TEXT NOT NULL,
		at     INTEGER NOT NULL,
		result TEXT NOT NULL,
		detail TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX join_attempts_host ON join_attempts (host, at);
	CREATE TABLE deployments (
		name       TEXT PRIMARY KEY,
		created_at INTEGER NOT NULL
	);
	CREATE TABLE revisions (
		deployment TEXT NOT NULL REFERENCES deployments (name) ON DELETE CASCADE,
		revision   INTEGER NOT NULL,
		spec_hash  TEXT NOT NULL,
		state      TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL,
		PRIMARY KEY (deployment, revision)
	);`,
	// 2: deployments' secrets (sealed by the caller, never plaintext) with
	// their history, what each deploy of a revision did, and leases.
	`CREATE TABLE deployment_secrets (
		deployment TEXT PRIMARY KEY,
		sealed     BLOB NOT NULL,
		updated_at INTEGER NOT NULL
	);
	CREATE TABLE secret_events (
		id         INTEGER PRIMARY KEY AUTOINCREMENT,
		deployment TEXT NOT NULL,
		at         INTEGER NOT NULL,
		what       TEXT NOT NULL,
		names      TEXT NOT NULL DEFAULT '',
		member     TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX secret_events_deployment ON secret_events (deployment, at);
	ALTER TABLE revisions ADD COLUMN recipe TEXT NOT NULL DEFAULT '';
	ALTER TABLE revisions ADD COLUMN member TEXT NOT NULL DEFAULT '';
	ALTER TABLE revisions ADD COLUMN started_at INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE revisions ADD COLUMN ended_at INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE revisions ADD COLUMN mutations INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE revisions ADD COLUMN error TEXT NOT NULL DEFAULT '';
	CREATE TABLE leases (
		name       TEXT PRIMARY KEY,
		holder     TEXT NOT NULL,
		expires_at INTEGER NOT NULL
	);`,
	// 3: the cluster's data key (which seals the deployments' secrets),
	// wrapped under key-encryption keys derived from cluster secrets, one
	// row per secret still in use, named by the KEK's fingerprint.
	`CREATE TABLE data_key_wrappings (
		kek        TEXT PRIMARY KEY,
		wrapped    BLOB NOT NULL,
		created_at INTEGER NOT NULL
	);`,
	// 4: each Lightning node's fencing generation, by node
	// (<deployment>/<instance>): only the copy holding the current one may
	// start the node; restore and migrate bump it.
	`CREATE TABLE lightning_generations (
		node       TEXT PRIMARY KEY,
		generation INTEGER NOT NULL,
		member     TEXT NOT NULL DEFAULT '',
		why        TEXT NOT NULL DEFAULT '',
		updated_at INTEGER NOT NULL
	);`,
	// 5: each deployment's last restore test (ssbuild backup test): the
	// backup it restored into a scratch copy, when, and how it ended.
	`CREATE TABLE restore_tests (
		deployment TEXT PRIMARY KEY,
		backup     TEXT NOT NULL,
		taken_at   INTEGER NOT NULL,
		started_at INTEGER NOT NULL,
		ended_at   INTEGER NOT NULL,
		error      TEXT NOT NULL DEFAULT '',
		member     TEXT NOT NULL DEFAULT ''
	);`,
}

// migrate applies the missing migrations in one transaction. Every node
// runs it on Open; the leader serialises them, so the first one applies a
// migration and the others find it recorded. A database newer than this
// binary is refused rather than written with an old idea of the schema.
func (r *Registry) migrate(ctx context.Context) error {
	return r.inTx(ctx, "migrate schema", func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version    INTEGER PRIMARY KEY,
			applied_at INTEGER NOT NULL
		)`); err != nil {
			return err
		}
		var current int
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
			return err
		}
		if current > len(migrations) {
			return fmt.Errorf("database schema is at version %d, this ssbuild knows up to %d: upgrade ssbuild on this host", current, len(migrations))
		}
		for v := current + 1; v <= len(migrations); v++ {
			if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
				return fmt.Errorf("migration %d: %w", v, err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`,
				v, unixNano(time.Now())); err != nil {
				return fmt.Errorf("record migration %d: %w", v, err)
			}
		}
		return nil
	})
}

// Version returns the schema version recorded in the database.
func (r *Registry) Version(ctx context.Context) (int, error) {
	var v int
	err := r.inTx(ctx, "read schema version", func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	})
	return v, err
}
