//go:build !libsqlite3 || !cgo

package registry

import "context"

const withDqlite = false

// Open fails: this binary was built without dqlite (see ErrNoDqlite).
func Open(ctx context.Context, cfg Config) (*Registry, error) { return nil, ErrNoDqlite }

func isRetriable(error) bool { return false }
