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

	"github.com/sovereign-stack/ssbuild/appliance/registry"
)

// LightningGeneration reads the generation from the registry.
func (s *Registry) LightningGeneration(ctx context.Context, node string) (int64, error) {
	return s.Reg.LightningGeneration(ctx, node)
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
	Generation int64 `json:"generation"`
}

func (s *Registry) registerLightning(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/lightning/{deployment}/{instance}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		g, err := s.LightningGeneration(ctx, r.PathValue("deployment")+"/"+r.PathValue("instance"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, generationResponse{g})
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
		writeJSON(w, generationResponse{g})
	})
}

// LightningGeneration asks the registry through the service.
func (c *Client) LightningGeneration(ctx context.Context, node string) (int64, error) {
	var resp generationResponse
	err := c.do(ctx, http.MethodGet, "/v1/lightning/"+node, nil, &resp)
	return resp.Generation, err
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
	data, err := os.ReadFile(f.lightningFile(node))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, fmt.Errorf("Lightning generation of %s: %w", node, err)
	}
	var g generationResponse
	if err := json.Unmarshal(data, &g); err != nil {
		return 0, fmt.Errorf("Lightning generation of %s: %s: %w", node, f.lightningFile(node), err)
	}
	return g.Generation, nil
}

// BumpLightning rewrites the folder's generation file (one host: no race
// to guard beyond the check).
func (f Folder) BumpLightning(ctx context.Context, node string, from int64, _ string) (int64, error) {
	cur, err := f.LightningGeneration(ctx, node)
	if err != nil {
		return 0, err
	}
	if cur != from {
		return 0, fmt.Errorf("%w: it is %d, not %d", registry.ErrGenerationMoved, cur, from)
	}
	data, _ := json.Marshal(generationResponse{from + 1})
	if err := f.write(f.lightningFile(node), data); err != nil {
		return 0, fmt.Errorf("Lightning generation of %s: %w", node, err)
	}
	return from + 1, nil
}
