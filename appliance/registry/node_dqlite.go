//go:build libsqlite3 && cgo

package registry

import (
	"context"
	sqldriver "database/sql/driver"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"
	"github.com/canonical/go-dqlite/driver"
)

// withDqlite says this build has the real node (tests skip without it).
const withDqlite = true

// database is the name of the one dqlite database the registry uses.
const database = "registry"

// Open starts this host's registry node, joins it to the cluster when
// cfg.Join is set and it is new, waits until it is part of the cluster and
// brings the schema up to date. The first node (no Join) bootstraps a
// one-node cluster; every later node joins as a spare and app's role
// management promotes it: the first three become voters, so the registry
// tolerates the loss of any one of three hosts.
func Open(ctx context.Context, cfg Config) (reg *Registry, err error) {
	if cfg.Dir == "" || cfg.Address == "" {
		return nil, fmt.Errorf("registry: Dir and Address are required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("registry %s: %w", cfg.Address, err)
	}
	opts := []app.Option{
		app.WithAddress(cfg.Address),
		app.WithLogFunc(logFunc(cfg.Logf)),
		// With fewer than 3 voters there is no fault tolerance; 3 voters
		// survive one loss. Stand-bys (up to 3) take over a voter's role.
		app.WithVoters(3),
		app.WithStandBys(3),
		app.WithRolesAdjustmentFrequency(rolesAdjustment),
	}
	if len(cfg.Join) > 0 {
		opts = append(opts, app.WithCluster(cfg.Join))
	}
	if cfg.TLS != nil {
		opts = append(opts, app.WithTLS(cfg.TLS.Listen, cfg.TLS.Dial))
	}
	a, err := app.New(cfg.Dir, opts...)
	if err != nil {
		return nil, fmt.Errorf("registry %s: start node in %s: %w", cfg.Address, cfg.Dir, err)
	}
	n := &dqliteNode{app: a, dial: client.DefaultDialFunc}
	if cfg.TLS != nil {
		n.dial = client.DialFuncWithTLS(client.DefaultDialFunc, cfg.TLS.Dial)
	}
	defer func() {
		if err != nil && n.app != nil {
			_ = n.app.Close()
		}
	}()
	// Ready means joined (for a new node) and roles settled; without it
	// the first queries of a joiner would race its own join.
	if err := n.ready(ctx, cfg, opts); err != nil {
		return nil, fmt.Errorf("registry %s: wait until part of the cluster (join %v): %w", cfg.Address, cfg.Join, err)
	}
	a = n.app
	db, err := a.Open(ctx, database)
	if err != nil {
		return nil, fmt.Errorf("registry %s: open database: %w", cfg.Address, err)
	}
	reg = &Registry{db: db, node: n, address: cfg.Address}
	if err := reg.migrate(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return reg, nil
}

// joinCheck is how often a joining node that is not ready asks the leader
// whether its join went through already (see ready).
const joinCheck = 3 * time.Second

// ready waits until the node is ready. A joiner whose Add the leader
// committed while the answer was lost (the leader's process died right
// then; dqlite returns before the add is known to be applied, canonical/
// dqlite#799) is a member already, yet go-dqlite v1.11.5's app retries Add
// for ever ("server ID already in use"). So while not ready, a joining node
// checks every joinCheck whether the app is still retrying an Add the
// leader has applied (addFailing); if it is, the app starts again without
// its join marker, as the member it is.
func (n *dqliteNode) ready(ctx context.Context, cfg Config, opts []app.Option) error {
	marker := filepath.Join(cfg.Dir, "join") // go-dqlite app's joinFile
	for {
		wait := ctx
		var cancel context.CancelFunc = func() {}
		if exists(marker) {
			wait, cancel = context.WithTimeout(ctx, joinCheck)
		}
		err := n.app.Ready(wait)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		if !n.addFailing(ctx, marker) {
			continue
		}
		if cfg.Logf != nil {
			cfg.Logf("joined already (the leader lists this node); restarting it as a member")
		}
		err = n.app.Close()
		n.app = nil
		if err != nil {
			return fmt.Errorf("restart as a member: close: %w", err)
		}
		if err := os.Remove(marker); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("restart as a member: %w", err)
		}
		a, err := app.New(cfg.Dir, opts...)
		if err != nil {
			return fmt.Errorf("restart as a member in %s: %w", cfg.Dir, err)
		}
		n.app = a
	}
}

// addFailing reports whether the app keeps retrying an Add the leader
// has already applied: the leader lists this node, yet the join marker
// the app removes right after a successful Add is still there a while
// later (the app retries a failed Add every second). A node whose Add
// went through is left alone even when it is slow to become ready: it is
// being promoted (the leader makes a voter catch up first, which takes
// long under load) and closing it then left the leader's configuration
// change pending, every later promotion refused ("a configuration change
// is already in progress"), the registry on one voter.
func (n *dqliteNode) addFailing(ctx context.Context, marker string) bool {
	if !exists(marker) || !n.isMember(ctx) {
		return false
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(addRetried):
	}
	return exists(marker)
}

// addRetried is longer than the app's pause between two Add attempts.
const addRetried = 2500 * time.Millisecond

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// isMember reports whether the leader lists this node, by its ID and
// address.
func (n *dqliteNode) isMember(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, joinCheck)
	defer cancel()
	members, err := n.members(ctx)
	if err != nil {
		return false
	}
	for _, m := range members {
		if m.ID == n.app.ID() && m.Address == n.app.Address() {
			return true
		}
	}
	return false
}

// rolesAdjustment is how often the leader checks that there are 3 voters
// and promotes a stand-by in place of a voter that went away (app's
// default is 30 s). It does not affect leader election, which Raft does on
// its own within seconds.
const rolesAdjustment = 5 * time.Second

type dqliteNode struct {
	app  *app.App
	dial client.DialFunc // how this node dials the others (TLS or not)
}

// handoverAttempts bounds the retries of a leadership transfer in Close.
const handoverAttempts = 3

// handover runs app.Handover and checks that it worked: in go-dqlite
// v1.11.5 a failed leadership transfer (raft gives up when the target does
// not win its election in time; seen about once in 15 Closes here) is
// only logged, and the others would then wait for an election.
func (n *dqliteNode) handover(ctx context.Context) error {
	for i := 1; ; i++ {
		if err := n.app.Handover(ctx); err != nil {
			return err
		}
		leader, err := n.leader(ctx)
		if err != nil || leader != n.app.Address() {
			return err
		}
		members, err := n.members(ctx)
		if err != nil {
			return err
		}
		if !n.otherVoterOnline(ctx, members) {
			return nil // no one to hand over to: the last node standing
		}
		if i == handoverAttempts {
			return fmt.Errorf("still the leader after %d leadership transfers", i)
		}
	}
}

// otherVoterOnline reports whether a voter other than this node answers.
func (n *dqliteNode) otherVoterOnline(ctx context.Context, members []Member) bool {
	for _, m := range members {
		if m.Role != client.Voter.String() || m.Address == n.app.Address() {
			continue
		}
		probe, cancel := context.WithTimeout(ctx, time.Second)
		cli, err := client.New(probe, m.Address, client.WithDialFunc(n.dial))
		cancel()
		if err == nil {
			cli.Close()
			return true
		}
	}
	return false
}

func (n *dqliteNode) close() error { return n.app.Close() }

func (n *dqliteNode) leader(ctx context.Context) (string, error) {
	cli, err := n.app.Leader(ctx)
	if err != nil {
		return "", fmt.Errorf("registry %s: find leader: %w", n.app.Address(), err)
	}
	defer cli.Close()
	info, err := cli.Leader(ctx)
	if err != nil {
		return "", fmt.Errorf("registry %s: leader: %w", n.app.Address(), err)
	}
	if info == nil {
		return "", fmt.Errorf("registry %s: no leader", n.app.Address())
	}
	return info.Address, nil
}

func (n *dqliteNode) members(ctx context.Context) ([]Member, error) {
	cli, err := n.app.Leader(ctx)
	if err != nil {
		return nil, fmt.Errorf("registry %s: find leader: %w", n.app.Address(), err)
	}
	defer cli.Close()
	nodes, err := cli.Cluster(ctx)
	if err != nil {
		return nil, fmt.Errorf("registry %s: list members: %w", n.app.Address(), err)
	}
	out := make([]Member, 0, len(nodes))
	for _, nd := range nodes {
		out = append(out, Member{ID: nd.ID, Address: nd.Address, Role: nd.Role.String()})
	}
	return out, nil
}

// isRetriable reports errors that mean "ask again once there is a leader":
// database/sql gives up on a bad connection after two tries, dqlite says
// busy while a leader is being elected or catching up, and the driver
// says no leader at all while an election runs.
func isRetriable(err error) bool {
	if errors.Is(err, driver.ErrNoAvailableLeader) || errors.Is(err, sqldriver.ErrBadConn) || connLost(err) {
		return true
	}
	var derr driver.Error
	if errors.As(err, &derr) {
		switch derr.Code & 0xff {
		case driver.ErrBusy:
			return true
		}
	}
	return false
}

// logFunc forwards dqlite's warnings and errors, except the driver's
// per-attempt "attempt N: server X: ..." warnings: during a failover they
// come several times a second and say only that there is no leader yet.
func logFunc(logf func(string, ...any)) client.LogFunc {
	return func(l client.LogLevel, format string, args ...any) {
		if logf == nil || l < client.LogWarn || strings.HasPrefix(format, "attempt ") {
			return
		}
		logf("dqlite "+l.String()+": "+format, args...)
	}
}
