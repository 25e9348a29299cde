package deploystate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/sovereign-stack/ssbuild/appliance/registry"
)

// A deployment's last restore test (ssbuild backup test) is kept beside its
// revisions: in the registry's table restore_tests on a cluster, in
// <deployment>.restore-test.json in a state folder.

// RecordRestoreTest keeps the outcome in the registry, recording this member.
func (s *Registry) RecordRestoreTest(ctx context.Context, t registry.RestoreTest) error {
	if t.Member == "" {
		t.Member = s.Member
	}
	return s.Reg.RecordRestoreTest(ctx, t)
}

// LastRestoreTest reads it from the registry; nil when none ran.
func (s *Registry) LastRestoreTest(ctx context.Context, deployment string) (*registry.RestoreTest, error) {
	return s.Reg.LastRestoreTest(ctx, deployment)
}

func (s *Registry) registerRestoreTests(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/restore-tests/{deployment}", func(w http.ResponseWriter, r *http.Request) {
		var t registry.RestoreTest
		if !readJSON(w, r, &t) {
			return
		}
		t.Deployment = r.PathValue("deployment")
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		if err := s.RecordRestoreTest(ctx, t); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, map[string]bool{"recorded": true})
	})
	mux.HandleFunc("GET /v1/restore-tests/{deployment}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		t, err := s.LastRestoreTest(ctx, r.PathValue("deployment"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, t)
	})
}

// RecordRestoreTest has the service keep the outcome in the registry.
func (c *Client) RecordRestoreTest(ctx context.Context, t registry.RestoreTest) error {
	return c.do(ctx, http.MethodPost, "/v1/restore-tests/"+t.Deployment, t, nil)
}

// LastRestoreTest reads it through the service; nil when none ran.
func (c *Client) LastRestoreTest(ctx context.Context, deployment string) (*registry.RestoreTest, error) {
	var t *registry.RestoreTest
	err := c.do(ctx, http.MethodGet, "/v1/restore-tests/"+deployment, nil, &t)
	return t, err
}

func (f Folder) restoreTestFile(deployment string) string {
	return filepath.Join(string(f.Dir), deployment+".restore-test.json")
}

// RecordRestoreTest writes the folder's file of the deployment's last test.
func (f Folder) RecordRestoreTest(_ context.Context, t registry.RestoreTest) error {
	data, err := json.MarshalIndent(t, "", "  ")
	if err == nil {
		err = f.write(f.restoreTestFile(t.Deployment), data)
	}
	if err != nil {
		return fmt.Errorf("restore test of %s: %w", t.Deployment, err)
	}
	return nil
}

// LastRestoreTest reads the folder's file; nil without one.
func (f Folder) LastRestoreTest(_ context.Context, deployment string) (*registry.RestoreTest, error) {
	data, err := os.ReadFile(f.restoreTestFile(deployment))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("restore test of %s: %w", deployment, err)
	}
	var t registry.RestoreTest
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, fmt.Errorf("restore test of %s: %s: %w", deployment, f.restoreTestFile(deployment), err)
	}
	return &t, nil
}
