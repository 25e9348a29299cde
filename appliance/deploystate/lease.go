package deploystate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sovereign-stack/ssbuild/appliance/registry"
)

// Leases are named locks one holder keeps while it works and renews as it
// goes, so a holder that dies frees its lease within the lease's time (a
// restore test of a deployment: one at a time, whichever member or
// command starts it). On a cluster they are the registry's (every member
// sees them), in a state folder <name>.lease.json files (one host).

// HeldError says another holds the lease.
type HeldError struct{ registry.Lease }

func (e *HeldError) Error() string {
	return fmt.Sprintf("%s holds the lease %s (until %s unless it renews it)", e.Holder, e.Name, e.Expires.UTC().Format("2006-01-02 15:04:05 UTC"))
}

// HoldLease takes the named lease for holder and renews it every third of
// ttl until release is called (which gives it up). The returned context
// ends when ctx does or when the lease is lost: to another holder after
// it expired unrenewed (the state store out of reach that long), so the
// work stops rather than run beside another's. A lease another holds is a
// *HeldError.
func HoldLease(ctx context.Context, s Leases, name, holder string, ttl time.Duration) (held context.Context, release func(), err error) {
	lease, ok, err := s.AcquireLease(ctx, name, holder, ttl)
	if err != nil {
		return nil, nil, fmt.Errorf("lease %s: %w", name, err)
	}
	if !ok {
		return nil, nil, &HeldError{lease}
	}
	held, lose := context.WithCancelCause(ctx)
	stop := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		for {
			select {
			case <-stop:
				return
			case <-held.Done():
				return
			case <-time.After(ttl / 3):
			}
			wctx, cancel := context.WithTimeout(held, ttl/3)
			lease, ok, err := s.AcquireLease(wctx, name, holder, ttl)
			cancel()
			if err == nil && !ok {
				lose(fmt.Errorf("lease %s lost: %w", name, &HeldError{lease}))
				return
			}
			// An error (the store out of reach) is tried again: the lease
			// lasts ttl, three tries.
		}
	}()
	return held, func() {
		close(stop)
		<-renewed
		lose(context.Canceled)
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = s.ReleaseLease(wctx, name, holder) // else it expires
	}, nil
}

// Holder names this process as a lease's holder: the member (this host's
// name when empty), its pid and what it does ("host2 pid 812 (restore)").
func Holder(member, doing string) string {
	if member == "" {
		member, _ = os.Hostname()
	}
	return fmt.Sprintf("%s pid %d (%s)", member, os.Getpid(), doing)
}

// DeploymentLease names the lease a deploy, down, migrate, backup or
// restore of a deployment holds while it runs, on any member: one at a
// time. Else a backup could read volumes half restored (and pass for a
// good one), two restores write the same volumes, a migrate move an
// instance a restore writes into, or a deploy recreate the containers a
// restore stopped.
func DeploymentLease(project string) string { return "deployment:" + project }

// deploymentLeaseTTL is how long a deployment's lease lasts unrenewed: a
// holder that died blocks the next for at most that.
const deploymentLeaseTTL = 2 * time.Minute

// HoldDeployment holds the deployment's lease while doing runs (see
// HoldLease for the context and release); when another holds it, nothing
// is done and the error names the holder.
func HoldDeployment(ctx context.Context, s Leases, project, member, doing string) (held context.Context, release func(), err error) {
	held, release, err = HoldLease(ctx, s, DeploymentLease(project), Holder(member, doing), deploymentLeaseTTL)
	var he *HeldError
	if errors.As(err, &he) {
		return nil, nil, fmt.Errorf("%s %s not started, nothing changed: %w: one deploy, down, migrate, backup or restore of a deployment runs at a time; run it again once that one has ended", doing, project, err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", doing, project, err)
	}
	return held, release, nil
}

// AcquireLease takes or renews the lease in the registry.
func (s *Registry) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (registry.Lease, bool, error) {
	return s.Reg.AcquireLease(ctx, name, holder, ttl)
}

// ReleaseLease gives it up in the registry.
func (s *Registry) ReleaseLease(ctx context.Context, name, holder string) error {
	return s.Reg.ReleaseLease(ctx, name, holder)
}

type leaseRequest struct {
	Holder string        `json:"holder"`
	TTL    time.Duration `json:"ttl"`
}

type leaseResponse struct {
	Lease registry.Lease `json:"lease"`
	Held  bool           `json:"held"`
}

func (s *Registry) registerLeases(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/leases/{name}", func(w http.ResponseWriter, r *http.Request) {
		var req leaseRequest
		if !readJSON(w, r, &req) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		lease, ok, err := s.AcquireLease(ctx, r.PathValue("name"), req.Holder, req.TTL)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, leaseResponse{lease, ok})
	})
	mux.HandleFunc("DELETE /v1/leases/{name}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		if err := s.ReleaseLease(ctx, r.PathValue("name"), r.URL.Query().Get("holder")); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, map[string]bool{"released": true})
	})
}

// AcquireLease asks the registry through the service.
func (c *Client) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (registry.Lease, bool, error) {
	var resp leaseResponse
	err := c.do(ctx, http.MethodPost, "/v1/leases/"+url.PathEscape(name), leaseRequest{holder, ttl}, &resp)
	return resp.Lease, resp.Held, err
}

// ReleaseLease gives it up through the service.
func (c *Client) ReleaseLease(ctx context.Context, name, holder string) error {
	return c.do(ctx, http.MethodDelete, "/v1/leases/"+url.PathEscape(name)+"?holder="+url.QueryEscape(holder), nil, nil)
}

func (f Folder) leaseFile(name string) string {
	return filepath.Join(string(f.Dir), url.PathEscape(name)+".lease.json")
}

// withLeases runs fn holding the folder's lock on its lease files, so two
// commands on the host do not both take a free lease.
func (f Folder) withLeases(fn func() error) error {
	if err := os.MkdirAll(string(f.Dir), 0o700); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(string(f.Dir), "leases.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	return fn()
}

// AcquireLease takes or renews the lease in the folder, as the registry
// does: when it is free, expired or holder's already.
func (f Folder) AcquireLease(_ context.Context, name, holder string, ttl time.Duration) (lease registry.Lease, ok bool, err error) {
	if name == "" || holder == "" || ttl <= 0 {
		return lease, false, errors.New("acquire lease: name, holder and a positive ttl are required")
	}
	err = f.withLeases(func() error {
		p := f.leaseFile(name)
		var cur registry.Lease
		data, err := os.ReadFile(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return err
		default:
			if err := json.Unmarshal(data, &cur); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		now := time.Now()
		if cur.Holder != "" && cur.Holder != holder && cur.Expires.After(now) {
			lease = cur
			return nil
		}
		lease, ok = registry.Lease{Name: name, Holder: holder, Expires: now.Add(ttl).UTC()}, true
		data, err = json.Marshal(lease)
		if err != nil {
			return err
		}
		return f.write(p, data)
	})
	if err != nil {
		return registry.Lease{}, false, fmt.Errorf("lease %s: %w", name, err)
	}
	return lease, ok, nil
}

// ReleaseLease removes the folder's lease file if holder holds it.
func (f Folder) ReleaseLease(_ context.Context, name, holder string) error {
	err := f.withLeases(func() error {
		p := f.leaseFile(name)
		data, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		var cur registry.Lease
		if json.Unmarshal(data, &cur) == nil && cur.Holder != holder {
			return nil
		}
		return os.Remove(p)
	})
	if err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}
