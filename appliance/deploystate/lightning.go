package deploystate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/registry"
)

// LightningGeneration reads the generation from the registry.
func (s *Registry) LightningGeneration(ctx context.Context, node string) (int64, error) {
	return s.Reg.LightningGeneration(ctx, node)
}

// LightningMovedBy reads what moved the generation from the registry.
func (s *Registry) LightningMovedBy(ctx context.Context, node string) (string, error) {
	rec, err := s.Reg.LightningRecord(ctx, node)
	if err != nil || rec.Generation == 0 {
		return "", err
	}
	return movedBy(rec.Why, rec.Member, rec.At), nil
}

// movedBy words a generation's move for the refusal of an older copy:
// "on host2 at 2026-12-03 14:02 UTC: migrate to host3".
func movedBy(why, member string, at time.Time) string {
	if why == "" {
		return ""
	}
	var where []string
	if member != "" {
		where = append(where, "on "+member)
	}
	if !at.IsZero() {
		where = append(where, "at "+at.UTC().Format("2006-01-02 15:04 UTC"))
	}
	if len(where) == 0 {
		return why
	}
	return strings.Join(where, " ") + ": " + why
}

// BumpLightning moves the generation in the registry, recording this member.
func (s *Registry) BumpLightning(ctx context.Context, node string, from int64, why string) (int64, error) {
	return s.Reg.BumpLightning(ctx, node, from, s.Member, why)
}

type bumpRequest struct {
	From int64  `json:"from"`
	Why  string `json:"why"`
}

type generationResponse struct {
	Generation int64  `json:"generation"`
	MovedBy    string `json:"movedBy,omitempty"`
}

func (s *Registry) registerLightning(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/lightning/{deployment}/{instance}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		rec, err := s.Reg.LightningRecord(ctx, r.PathValue("deployment")+"/"+r.PathValue("instance"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, generationResponse{rec.Generation, movedBy(rec.Why, rec.Member, rec.At)})
	})
	mux.HandleFunc("POST /v1/lightning/{deployment}/{instance}/bump", func(w http.ResponseWriter, r *http.Request) {
		var req bumpRequest
		if !readJSON(w, r, &req) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		g, err := s.BumpLightning(ctx, r.PathValue("deployment")+"/"+r.PathValue("instance"), req.From, req.Why)
		switch {
		case errors.Is(err, registry.ErrGenerationMoved):
			http.Error(w, err.Error(), http.StatusConflict)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, generationResponse{Generation: g})
	})
}

// LightningGeneration asks the registry through the service.
func (c *Client) LightningGeneration(ctx context.Context, node string) (int64, error) {
	var resp generationResponse
	err := c.do(ctx, http.MethodGet, "/v1/lightning/"+node, nil, &resp)
	return resp.Generation, err
}

// LightningMovedBy asks the registry through the service.
func (c *Client) LightningMovedBy(ctx context.Context, node string) (string, error) {
	var resp generationResponse
	err := c.do(ctx, http.MethodGet, "/v1/lightning/"+node, nil, &resp)
	return resp.MovedBy, err
}

// BumpLightning has the service move the generation in the registry.
func (c *Client) BumpLightning(ctx context.Context, node string, from int64, why string) (int64, error) {
	var resp generationResponse
	err := c.do(ctx, http.MethodPost, "/v1/lightning/"+node+"/bump", bumpRequest{From: from, Why: why}, &resp)
	return resp.Generation, err
}

// lightningFile keeps a standalone LXD's generation of a deployment.
func (f Folder) lightningFile(node string) string {
	return filepath.Join(string(f.Dir), strings.ReplaceAll(node, "/", "_")+".lightning.json")
}

// LightningGeneration reads the folder's generation file; 0 without one.
func (f Folder) LightningGeneration(_ context.Context, node string) (int64, error) {
	g, err := f.readGeneration(node)
	return g.Generation, err
}

// LightningMovedBy reads what moved the generation from the folder's file.
func (f Folder) LightningMovedBy(_ context.Context, node string) (string, error) {
	g, err := f.readGeneration(node)
	return movedBy(g.Why, "", g.At), err
}

// generationFile is a standalone LXD's generation file.
type generationFile struct {
	Generation int64     `json:"generation"`
	Why        string    `json:"why,omitempty"`
	At         time.Time `json:"at,omitzero"`
}

func (f Folder) readGeneration(node string) (generationFile, error) {
	var g generationFile
	data, err := os.ReadFile(f.lightningFile(node))
	if errors.Is(err, os.ErrNotExist) {
		return g, nil
	} else if err != nil {
		return g, fmt.Errorf("Lightning generation of %s: %w", node, err)
	}
	if err := json.Unmarshal(data, &g); err != nil {
		return g, fmt.Errorf("Lightning generation of %s: %s: %w", node, f.lightningFile(node), err)
	}
	return g, nil
}

// BumpLightning rewrites the folder's generation file (one host: no race
// to guard beyond the check).
func (f Folder) BumpLightning(ctx context.Context, node string, from int64, why string) (int64, error) {
	cur, err := f.LightningGeneration(ctx, node)
	if err != nil {
		return 0, err
	}
	if cur != from {
		return 0, fmt.Errorf("%w: it is %d, not %d", registry.ErrGenerationMoved, cur, from)
	}
	data, _ := json.Marshal(generationFile{Generation: from + 1, Why: why, At: time.Now().UTC()})
	if err := f.write(f.lightningFile(node), data); err != nil {
		return 0, fmt.Errorf("Lightning generation of %s: %w", node, err)
	}
	return from + 1, nil
}
