package deploy

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/instancedocker"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// State is what `ssbuild show` reports.
type State struct {
	Members     []MemberState     `json:"members"`
	Deployments []DeploymentState `json:"deployments"`
}

// MemberState is one LXD cluster member.
type MemberState struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	URL    string `json:"url"`
}

// DeploymentState is one deployment of the recipe as found on the cluster.
type DeploymentState struct {
	Name      string          `json:"name"`
	Project   string          `json:"project"`
	Deployed  bool            `json:"deployed"` // the LXD project exists
	URLs      []stack.SiteURL `json:"urls"`
	Instances []InstanceState `json:"instances"`
}

// InstanceState is one instance with its services.
type InstanceState struct {
	Name      string                  `json:"name"`
	Member    string                  `json:"member"`
	Status    string                  `json:"status"`
	Addresses []string                `json:"addresses,omitempty"`
	Services  []stack.ContainerStatus `json:"services,omitempty"`
	Error     string                  `json:"error,omitempty"` // why services could not be read
}

// Show reads the cluster's members and the recipe's deployments: their
// instances, where they run, their addresses and services with health.
func Show(ctx context.Context, o Options) (State, error) {
	if err := o.defaults(); err != nil {
		return State{}, err
	}
	var st State
	if cl, _, err := o.LXD.GetCluster(); err == nil && cl.Enabled {
		ms, err := o.LXD.GetClusterMembers()
		if err != nil {
			return st, fmt.Errorf("cluster members: %w", err)
		}
		for _, m := range ms {
			st.Members = append(st.Members, MemberState{Name: m.ServerName, Status: m.Status, URL: m.URL})
		}
		sort.Slice(st.Members, func(i, j int) bool { return st.Members[i].Name < st.Members[j].Name })
	}
	for _, d := range o.Recipe.Deployments {
		ds := DeploymentState{Name: d.Name, Project: d.Project(), URLs: stack.URLs(d)}
		if _, _, err := o.LXD.GetProject(d.Project()); isNotFound(err) {
			st.Deployments = append(st.Deployments, ds)
			continue
		} else if err != nil {
			return st, fmt.Errorf("project %s: %w", d.Project(), err)
		}
		ds.Deployed = true
		pc := o.LXD.UseProject(d.Project())
		instances, err := instancesOf(o.LXD, d.Project())
		if err != nil {
			return st, err
		}
		for _, in := range instances {
			is := InstanceState{Name: in.Name, Member: in.Location, Status: in.Status}
			if in.StatusCode == api.Running {
				if state, _, err := pc.GetInstanceState(in.Name); err == nil {
					is.Addresses = addresses(state)
				}
				is.Services, is.Error = services(ctx, o, d, in.Name)
			}
			ds.Instances = append(ds.Instances, is)
		}
		st.Deployments = append(st.Deployments, ds)
	}
	return st, nil
}

func services(ctx context.Context, o Options, d recipes.Deployment, instance string) ([]stack.ContainerStatus, string) {
	docker, err := instancedocker.Client(ctx, o.LXD.UseProject(d.Project()), instance)
	if err != nil {
		return nil, err.Error()
	}
	defer docker.Close()
	inv, err := stack.Inventory(ctx, docker, d.Project())
	if err != nil {
		return nil, err.Error()
	}
	return inv.Containers, ""
}

// addresses lists the instance's global IPv4 addresses on eth0.
func addresses(s *api.InstanceState) []string {
	var out []string
	for _, a := range s.Network["eth0"].Addresses {
		if a.Family == "inet" && a.Scope == "global" {
			out = append(out, a.Address)
		}
	}
	return out
}

// WriteText prints the state for a person.
func (st State) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(st.Members) > 0 {
		fmt.Fprintln(tw, "MEMBER\tSTATUS\tURL")
		for _, m := range st.Members {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", m.Name, m.Status, m.URL)
		}
		fmt.Fprintln(tw)
	}
	for _, d := range st.Deployments {
		if !d.Deployed {
			fmt.Fprintf(tw, "deployment %s (project %s): not deployed\n\n", d.Name, d.Project)
			continue
		}
		var urls []string
		for _, u := range d.URLs {
			urls = append(urls, u.URL)
		}
		fmt.Fprintf(tw, "deployment %s (project %s): %s\n", d.Name, d.Project, strings.Join(urls, " "))
		fmt.Fprintln(tw, "INSTANCE\tMEMBER\tSTATUS\tADDRESS\tSERVICE\tSTATE")
		for _, in := range d.Instances {
			addr := strings.Join(in.Addresses, ",")
			if len(in.Services) == 0 {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", in.Name, in.Member, in.Status, addr, "-", in.Error)
			}
			for i, s := range in.Services {
				state := s.State
				if s.Health != "" {
					state += " (" + s.Health + ")"
				}
				if i == 0 {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", in.Name, in.Member, in.Status, addr, s.Service, state)
				} else {
					fmt.Fprintf(tw, "\t\t\t\t%s\t%s\n", s.Service, state)
				}
			}
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
