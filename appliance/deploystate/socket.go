package deploystate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
)

// The service's socket (0600, root only) carries the registry's state to
// the CLI on the same host. Secrets cross it in clear, as they would from a
// 0600 file; they are sealed only on their way into the registry.

// secretsRequest is the body of an ensure.
type secretsRequest struct {
	Names []string `json:"names"`
	// Import are values from an older file of the caller's (From), merged
	// under the registry's.
	Import map[string]string `json:"import,omitempty"`
	From   string            `json:"from,omitempty"`
}

type secretsResponse struct {
	Values map[string]string `json:"values"`
}

// wrapRequest hands the service a KEK to wrap the data key under.
type wrapRequest struct {
	KEK string `json:"kek"` // hex
}

type endRequest struct {
	Mutations int    `json:"mutations"`
	Error     string `json:"error"`
}

// requestTimeout bounds one registry call made for a socket request:
// longer than a failover.
const requestTimeout = 45 * time.Second

// Register adds the state's endpoints to the service's mux.
func (s *Registry) Register(mux *http.ServeMux) {
	s.registerLightning(mux)
	s.registerRestoreTests(mux)
	s.registerLeases(mux)
	mux.HandleFunc("POST /v1/secrets/{deployment}", func(w http.ResponseWriter, r *http.Request) {
		var req secretsRequest
		if !readJSON(w, r, &req) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		d := r.PathValue("deployment")
		set, err := s.EnsureImporting(ctx, d, req.Names, secrets.New(d, req.Import), req.From)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		resp := secretsResponse{Values: map[string]string{}}
		for _, n := range set.Names() {
			resp.Values[n], _ = set.Get(n)
		}
		writeJSON(w, resp)
	})
	mux.HandleFunc("POST /v1/secrets/{deployment}/{name}/rotate", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		if err := s.Rotate(ctx, r.PathValue("deployment"), r.PathValue("name")); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, map[string]bool{"rotated": true})
	})
	mux.HandleFunc("GET /v1/secrets/{deployment}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		has, err := s.Has(ctx, r.PathValue("deployment"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, map[string]bool{"exists": has})
	})
	mux.HandleFunc("DELETE /v1/secrets/{deployment}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		if err := s.Remove(ctx, r.PathValue("deployment")); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, map[string]bool{"removed": true})
	})
	// The data key's wrappings, for `cluster rotate-secret`: the CLI hands
	// the new secret's KEK (never the secret) before the members take it.
	mux.HandleFunc("POST /v1/datakey/wrappings", func(w http.ResponseWriter, r *http.Request) {
		var req wrapRequest
		if !readJSON(w, r, &req) {
			return
		}
		kek, err := secrets.ParseKEK(req.KEK)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		fp, err := s.AddWrapping(ctx, kek)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, map[string]string{"fingerprint": fp})
	})
	mux.HandleFunc("DELETE /v1/datakey/wrappings", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		n, err := s.RemoveWrappings(ctx, r.URL.Query().Get("keep"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, map[string]int{"removed": n})
	})
	mux.HandleFunc("POST /v1/revisions/{deployment}", func(w http.ResponseWriter, r *http.Request) {
		var req registry.DeployStart
		if !readJSON(w, r, &req) {
			return
		}
		req.Deployment = r.PathValue("deployment")
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		rev, err := s.StartDeploy(ctx, req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, rev)
	})
	mux.HandleFunc("POST /v1/revisions/{deployment}/{revision}", func(w http.ResponseWriter, r *http.Request) {
		var req endRequest
		if !readJSON(w, r, &req) {
			return
		}
		rev, err := strconv.ParseInt(r.PathValue("revision"), 10, 64)
		if err != nil {
			http.Error(w, "revision: "+err.Error(), http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		if err := s.EndDeploy(ctx, r.PathValue("deployment"), rev, req.Mutations, req.Error); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, map[string]bool{"recorded": true})
	})
	mux.HandleFunc("GET /v1/revisions/{deployment}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		revs, err := s.History(ctx, r.PathValue("deployment"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, revs)
	})
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(v); err != nil {
		http.Error(w, "request body: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// Client reaches the registry's state through the local service's socket:
// the store of `ssbuild deploy/down/show` on a cluster member. A request
// the service does not answer fails with why; nothing is ever generated
// locally instead.
type Client struct {
	// Socket is the service's status socket (<stateDir>/service.sock).
	Socket string
	// ImportDir is a folder of an older ssbuild's secrets files (the
	// CLI's --state-dir): a deployment's file there is handed to the
	// registry once and then removed.
	ImportDir string
}

// Where says the registry and the socket.
func (c *Client) Where() string {
	return "the cluster's registry (through the local service on " + c.Socket + ")"
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://service"+path, rd)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", c.Socket)
		},
	}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("the registry is not reachable: the local service does not answer on %s "+
			"(is ssbuild-appliance.service running? `ssbuild appliance status` says more): %w", c.Socket, errors.Unwrap(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("the registry through %s: %w", c.Socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the registry through %s: %s", c.Socket, strings.TrimSpace(string(data)))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("the registry through %s: %w", c.Socket, err)
		}
	}
	return nil
}

// Ensure asks the registry for the deployment's one set, handing over an
// older file of it from ImportDir first.
func (c *Client) Ensure(ctx context.Context, deployment string, names []string) (secrets.Set, error) {
	req := secretsRequest{Names: names}
	if c.ImportDir != "" {
		old, ok, err := secrets.ReadFile(c.ImportDir, deployment)
		if err != nil {
			return secrets.Set{}, err
		}
		if ok {
			req.Import, req.From = map[string]string{}, secrets.File(c.ImportDir, deployment)
			for _, n := range old.Names() {
				req.Import[n], _ = old.Get(n)
			}
		}
	}
	var resp secretsResponse
	if err := c.do(ctx, http.MethodPost, "/v1/secrets/"+deployment, req, &resp); err != nil {
		return secrets.Set{}, err
	}
	if req.From != "" {
		if err := secrets.RemoveFile(c.ImportDir, deployment); err != nil {
			return secrets.Set{}, err
		}
	}
	return secrets.New(deployment, resp.Values), nil
}

// Has asks whether the registry (or an older file) holds the deployment's
// secrets.
func (c *Client) Has(ctx context.Context, deployment string) (bool, error) {
	if c.ImportDir != "" {
		if _, ok, _ := secrets.ReadFile(c.ImportDir, deployment); ok {
			return true, nil
		}
	}
	var resp struct{ Exists bool }
	err := c.do(ctx, http.MethodGet, "/v1/secrets/"+deployment, nil, &resp)
	return resp.Exists, err
}

// AddWrapping has the service store the data key wrapped under kek (a new
// cluster secret's) and returns the KEK's fingerprint.
func (c *Client) AddWrapping(ctx context.Context, kek secrets.KEK) (string, error) {
	var resp struct{ Fingerprint string }
	err := c.do(ctx, http.MethodPost, "/v1/datakey/wrappings", wrapRequest{KEK: kek.Hex()}, &resp)
	return resp.Fingerprint, err
}

// RemoveWrappings has the service remove every wrapping of the data key but
// keep's, and says how many it removed.
func (c *Client) RemoveWrappings(ctx context.Context, keep string) (int, error) {
	var resp struct{ Removed int }
	err := c.do(ctx, http.MethodDelete, "/v1/datakey/wrappings?keep="+url.QueryEscape(keep), nil, &resp)
	return resp.Removed, err
}

// Remove deletes the deployment's secrets from the registry and the older
// file.
func (c *Client) Remove(ctx context.Context, deployment string) error {
	if err := c.do(ctx, http.MethodDelete, "/v1/secrets/"+deployment, nil, nil); err != nil {
		return err
	}
	if c.ImportDir != "" {
		return secrets.RemoveFile(c.ImportDir, deployment)
	}
	return nil
}

// Rotate asks the registry for a new value of one secret.
func (c *Client) Rotate(ctx context.Context, deployment, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/secrets/"+deployment+"/"+name+"/rotate", struct{}{}, nil)
}

// StartDeploy records the start through the service.
func (c *Client) StartDeploy(ctx context.Context, d registry.DeployStart) (registry.Revision, error) {
	var rev registry.Revision
	err := c.do(ctx, http.MethodPost, "/v1/revisions/"+d.Deployment, d, &rev)
	return rev, err
}

// EndDeploy records the outcome through the service.
func (c *Client) EndDeploy(ctx context.Context, deployment string, revision int64, mutations int, deployErr string) error {
	return c.do(ctx, http.MethodPost, fmt.Sprintf("/v1/revisions/%s/%d", deployment, revision),
		endRequest{Mutations: mutations, Error: deployErr}, nil)
}

// History lists the revisions through the service.
func (c *Client) History(ctx context.Context, deployment string) ([]registry.Revision, error) {
	var revs []registry.Revision
	err := c.do(ctx, http.MethodGet, "/v1/revisions/"+deployment, nil, &revs)
	return revs, err
}
