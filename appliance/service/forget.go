package service

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/config"
)

// forgetPath is the status socket's endpoint that drops a removed host from
// the registry (its node and its row): `ssbuild host remove` asks it.
const forgetPath = "/v1/forget"

func (s *svc) handleForget(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("host")
	addr := r.URL.Query().Get("address")
	if name == "" || addr == "" {
		http.Error(w, "host and address are required", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
	defer cancel()
	if err := s.forget(ctx, name, addr); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"forgotten": name})
}

// Forget asks the service on this host (its status socket) to drop host
// name, whose address is address, from the registry: its node and its row.
func Forget(ctx context.Context, a *config.Appliance, name, address string) error {
	sock := filepath.Join(a.StateDir, SocketName)
	ctx, cancel := context.WithTimeout(ctx, writeTimeout+5*time.Second)
	defer cancel()
	c := socketClient(sock)
	defer c.CloseIdleConnections()
	q := url.Values{"host": {name}, "address": {address}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://service"+forgetPath+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("forget %s in the registry: service not serving on %s: %w", name, sock, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("forget %s in the registry: %s", name, strings.TrimSpace(string(body)))
	}
	return nil
}
