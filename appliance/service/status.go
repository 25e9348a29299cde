package service

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/appliance/cluster"
	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/handoff/config"
)

// ReadStatus reads what the host's first boot last recorded in stateDir
// (an earlier ssbuild's files too, see cluster.ReadStatus).
func ReadStatus(stateDir string) (*cluster.Status, error) {
	return cluster.ReadStatus(stateDir)
}

// Report is `ssbuild appliance status`: what this host's LXD, this host's
// registry node and its status file say.
type Report struct {
	Host string `json:"host"`
	// LXDMembers are the cluster members as this host's LXD lists them;
	// LXDError says why there are none.
	LXDMembers []LXDMember `json:"lxdMembers"`
	LXDError   string      `json:"lxdError,omitempty"`
	// Registry is the registry as this host's node sees it; nil when it
	// does not answer, and RegistryError says why.
	Registry      *RegistryView `json:"registry,omitempty"`
	RegistryError string        `json:"registryError,omitempty"`
	// Hosts is every configured host's step and last error, from the
	// registry when it answers; else only this host's, from its status file.
	Hosts []HostStatus `json:"hosts"`
}

// LXDMember is one LXD cluster member.
type LXDMember struct {
	Name    string   `json:"name"`
	URL     string   `json:"url"`
	Roles   []string `json:"roles"`
	Status  string   `json:"status"` // Online, Offline, Evacuated...
	Message string   `json:"message,omitempty"`
}

// Sources of a HostStatus.
const (
	FromRegistry   = "registry"
	FromStatusFile = "local status file"
	FromNowhere    = "unknown"
)

// HostStatus is where one host is.
type HostStatus struct {
	Name      string    `json:"name"`
	Step      string    `json:"step,omitempty"`
	Detail    string    `json:"detail,omitempty"` // this host's only, from its status file (e.g. what a deploy did)
	State     string    `json:"state,omitempty"`
	LastError string    `json:"lastError,omitempty"`
	Updated   time.Time `json:"updated,omitzero"`
	Source    string    `json:"source"` // FromRegistry, FromStatusFile or FromNowhere
}

// Status collects the report; lxdc may be nil when LXD cannot be reached
// (lxdErr says why). It fails only for what it cannot report at all.
func Status(ctx context.Context, a *config.Appliance, lxdc lxd.InstanceServer, lxdErr error) *Report {
	r := &Report{Host: a.Host.Name, LXDMembers: []LXDMember{}}
	if lxdc == nil {
		r.LXDError = fmt.Sprintf("LXD not answering: %v", lxdErr)
	} else if members, err := lxdc.GetClusterMembers(); err != nil {
		r.LXDError = fmt.Sprintf("list members (GET /1.0/cluster/members): %v", err)
	} else {
		for _, m := range members {
			r.LXDMembers = append(r.LXDMembers, LXDMember{Name: m.ServerName, URL: m.URL, Roles: m.Roles, Status: m.Status, Message: m.Message})
		}
		slices.SortFunc(r.LXDMembers, func(x, y LXDMember) int { return strings.Compare(x.Name, y.Name) })
	}
	var err error
	if r.Registry, err = askRegistry(ctx, filepath.Join(a.StateDir, SocketName)); err != nil {
		r.RegistryError = err.Error()
	}
	for _, m := range a.Cluster.Members {
		r.Hosts = append(r.Hosts, hostStatus(a, m.Name, r.Registry))
	}
	return r
}

func hostStatus(a *config.Appliance, name string, v *RegistryView) HostStatus {
	if v != nil {
		for _, h := range v.Hosts {
			if h.Name == name {
				hs := HostStatus{Name: name, Step: h.Step, State: h.State, LastError: h.LastError, Updated: h.UpdatedAt, Source: FromRegistry}
				// The registry keeps no detail; this host's file has it.
				if st, err := ReadStatus(a.StateDir); err == nil && name == a.Host.Name && string(st.Step) == h.Step {
					hs.Detail = st.Detail
				}
				return hs
			}
		}
	}
	if name == a.Host.Name {
		if st, err := ReadStatus(a.StateDir); err == nil {
			return HostStatus{Name: name, Step: string(st.Step), Detail: st.Detail, LastError: st.LastError, Updated: st.Updated, Source: FromStatusFile}
		}
	}
	return HostStatus{Name: name, Source: FromNowhere}
}

// socketClient is an HTTP client of the local service's socket sock.
func socketClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

// askRegistry asks the local service over its status socket.
func askRegistry(ctx context.Context, sock string) (*RegistryView, error) {
	ctx, cancel := context.WithTimeout(ctx, viewTimeout+2*time.Second)
	defer cancel()
	c := socketClient(sock)
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://service"+statusPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("registry not answering: service not serving on %s: %v", sock, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("registry not answering: read %s: %v", sock, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("registry not answering: %s", strings.TrimSpace(string(body)))
	}
	var v RegistryView
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, fmt.Errorf("registry view from %s: %w", sock, err)
	}
	return &v, nil
}

// Write renders the report for people.
func (r *Report) Write(w io.Writer, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "LXD cluster (from %s's LXD):\n", r.Host)
	if r.LXDError != "" {
		fmt.Fprintf(tw, "  %s\n", r.LXDError)
	}
	for _, m := range r.LXDMembers {
		line := fmt.Sprintf("  %s\t%s\t%s\t%s", m.Name, m.Status, strings.Join(m.Roles, ","), m.URL)
		if m.Message != "" && m.Status != "Online" {
			line += "\t" + m.Message
		}
		fmt.Fprintln(tw, line)
	}
	fmt.Fprintln(tw, "Registry:")
	if r.Registry == nil {
		fmt.Fprintf(tw, "  %s\n", r.RegistryError)
	} else {
		fmt.Fprintf(tw, "  leader %s (this host's node %s)\n", r.Registry.Leader, r.Registry.Node)
		for _, m := range r.Registry.Members {
			fmt.Fprintf(tw, "  %s\t%s\n", m.Address, m.Role)
		}
	}
	if r.Registry == nil {
		fmt.Fprintln(tw, "Hosts (registry not answering: this host's local status file only):")
	} else {
		fmt.Fprintln(tw, "Hosts (from the registry):")
	}
	for _, h := range r.Hosts {
		if h.Source == FromNowhere {
			fmt.Fprintf(tw, "  %s\t-\tnot known\n", h.Name)
			continue
		}
		line := fmt.Sprintf("  %s\t%s\t%s ago", h.Name, h.Step, now.Sub(h.Updated).Round(time.Second))
		if h.Step == string(StepDeployed) && h.Detail != "" {
			line += "\t(" + h.Detail + ")"
		}
		if h.Source != FromRegistry {
			line += "\t(" + h.Source + ")"
		}
		if h.LastError != "" {
			line += "\tlast error: " + h.LastError
		}
		fmt.Fprintln(tw, line)
	}
	if r.Registry != nil && len(r.Registry.Deployments) > 0 {
		fmt.Fprintln(tw, "Deployments (from the registry):")
		for _, d := range r.Registry.Deployments {
			line := fmt.Sprintf("  %s\trevision %d\t%s", d.Deployment, d.Revision, d.State)
			if d.Member != "" {
				line += " on " + d.Member
			}
			if !d.EndedAt.IsZero() {
				line += fmt.Sprintf(" %s ago, %d changes", now.Sub(d.EndedAt).Round(time.Second), d.Mutations)
			} else if !d.StartedAt.IsZero() {
				line += fmt.Sprintf(", started %s ago", now.Sub(d.StartedAt).Round(time.Second))
			}
			if d.Error != "" {
				line += "\tlast error: " + d.Error
			}
			fmt.Fprintln(tw, line)
			var rt *registry.RestoreTest
			for i := range r.Registry.RestoreTests {
				if r.Registry.RestoreTests[i].Deployment == d.Deployment {
					rt = &r.Registry.RestoreTests[i]
				}
			}
			fmt.Fprintf(tw, "    %s\n", deploy.RestoreTestLine(rt, now))
		}
	}
	return tw.Flush()
}
