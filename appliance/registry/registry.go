// Package registry is the appliance's replicated state: the hosts, their
// state and certificate fingerprints, join attempts, and deployments with
// their revisions. Every host runs one node of a dqlite (Raft-replicated
// SQLite) cluster through go-dqlite's app package, so the registry outlives
// any single host, the initiator included, once three hosts have joined.
//
// Writes and reads are both served by the Raft leader (dqlite forwards them
// there from whichever node the caller opened), so every read sees every
// committed write. Operations retry through a leader change until their
// context ends: give them a deadline longer than a failover (see
// README.md in this directory for the figures).
//
// The real node needs cgo, the Debian dqlite libraries and the build tag
// libsqlite3 (the Makefile sets it). Built without them, Open returns
// ErrNoDqlite and nothing else changes, so `go build ./...` keeps working.
package registry

import (
	"context"
	"crypto/tls"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"time"
)

// ErrNoDqlite is returned by Open in a binary built without dqlite.
var ErrNoDqlite = errors.New("registry: ssbuild was built without dqlite support " +
	"(needs cgo, libdqlite-dev libraft-dev libuv1-dev libsqlite3-dev and -tags=libsqlite3; use make build)")

// ErrNotFound is returned when the named host or deployment does not exist.
var ErrNotFound = errors.New("not found")

// Config describes one registry node.
type Config struct {
	// Dir holds the node's Raft log, snapshots and identity (info.yaml,
	// cluster.yaml). It must survive reboots: a node that loses it has
	// to join again as a new node.
	Dir string
	// Address is the host:port this node listens on and other nodes dial,
	// e.g. "10.0.0.11:9001". It is recorded in Dir on first start and must
	// not change afterwards.
	Address string
	// Join lists addresses of nodes already in the cluster. Empty on the
	// node that bootstraps the cluster (the initiator); ignored once Dir
	// holds a node, so a restart needs no change of config.
	Join []string
	// TLS, when set, encrypts and authenticates all traffic to and from
	// the node (PinnedTLS builds it). Nil means plain TCP, which anyone
	// who can reach Address may read and write: loopback tests only.
	TLS *TLS
	// Logf receives dqlite's warnings and errors; nil drops them.
	Logf func(format string, args ...any)
}

// TLS is the node's server and client configuration.
type TLS struct {
	Listen *tls.Config
	Dial   *tls.Config
}

// Registry is one node of the registry and a handle on its database.
type Registry struct {
	db      *sql.DB
	node    node
	address string
}

// node is the replication engine under the database (dqlite's app).
type node interface {
	handover(ctx context.Context) error
	close() error
	leader(ctx context.Context) (string, error)
	members(ctx context.Context) ([]Member, error)
}

// Member is one node of the registry cluster.
type Member struct {
	ID      uint64
	Address string
	Role    string // "voter", "stand-by" or "spare"
}

// Address is this node's address.
func (r *Registry) Address() string { return r.address }

// Leader returns the address of the current Raft leader.
func (r *Registry) Leader(ctx context.Context) (string, error) {
	return r.node.leader(ctx)
}

// Members lists the nodes of the registry cluster and their roles.
func (r *Registry) Members(ctx context.Context) ([]Member, error) {
	return r.node.members(ctx)
}

// Close hands leadership and this node's voting role to another node when
// it can, then stops the node. A node that cannot hand over (it is the last
// one, or the others are unreachable) still stops; the error says why the
// handover failed, and the others elect a leader as after a crash.
func (r *Registry) Close(ctx context.Context) error {
	var errs []error
	if err := r.node.handover(ctx); err != nil {
		errs = append(errs, fmt.Errorf("registry %s: hand over: %w", r.address, err))
	}
	if err := r.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("registry %s: close database: %w", r.address, err))
	}
	if err := r.node.close(); err != nil {
		errs = append(errs, fmt.Errorf("registry %s: stop node: %w", r.address, err))
	}
	return errors.Join(errs...)
}

// retryWait is the pause between attempts while the cluster has no leader.
const retryWait = 100 * time.Millisecond

// inTx runs fn in a transaction on the leader. Failures that mean "no
// leader right now" (election, leader lost mid-transaction, busy) are
// retried until ctx ends; fn must therefore be safe to run again, and every
// write below is written to be (upserts, or idempotent by content).
func (r *Registry) inTx(ctx context.Context, what string, fn func(*sql.Tx) error) error {
	for {
		err := r.tryTx(ctx, fn)
		if err == nil {
			return nil
		}
		if !isRetriable(err) {
			return fmt.Errorf("registry: %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("registry: %s: no leader before %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(retryWait):
		}
	}
}

func (r *Registry) tryTx(ctx context.Context, fn func(*sql.Tx) error) (err error) {
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if connLost(err) {
			// go-dqlite v1.11.5 reports a connection its leader closed
			// (over TLS: io.EOF) as an error, not as a bad connection, so
			// database/sql would keep handing it out: every later call
			// failed with EOF after the leader was lost. Dropped here, the
			// next try dials the new leader.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		_ = conn.Close()
	}()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// connLost reports an error that means the connection's peer went away.
func connLost(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// unixNano and fromUnixNano store times as integers: exact, sortable and
// free of the driver's time-format choices.
func unixNano(t time.Time) int64 { return t.UnixNano() }

func fromUnixNano(n int64) time.Time { return time.Unix(0, n).UTC() }
