package deploy

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/instancedocker"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
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
	// Revision is the current revision from the state store (the
	// registry on a cluster); History every revision, with --history.
	// RevisionError says why they could not be read.
	Revision      *RevisionState  `json:"revision,omitempty"`
	History       []RevisionState `json:"history,omitempty"`
	RevisionError string          `json:"revisionError,omitempty"`
	// RestoreTest is the last restore test of its backups (ssbuild backup
	// test); nil when none ran. RestoreTestError says why it could not be
	// read.
	RestoreTest      *registry.RestoreTest `json:"restoreTest,omitempty"`
	RestoreTestError string                `json:"restoreTestError,omitempty"`
}

// RevisionState is one revision of a deployment: the recipe it deployed
// and what its last deploy did.
type RevisionState struct {
	Revision     int64     `json:"revision"`
	RecipeDigest string    `json:"recipeDigest"`
	State        string    `json:"state"` // deploying, deployed or failed
	Member       string    `json:"member"`
	Started      time.Time `json:"started,omitzero"`
	Ended        time.Time `json:"ended,omitzero"`
	Mutations    int       `json:"mutations"`
	Error        string    `json:"error,omitempty"`
	Recipe       string    `json:"recipe,omitempty"` // the recipe's text (--json --history)
}

func revisionState(r registry.Revision, withRecipe bool) RevisionState {
	rs := RevisionState{Revision: r.Revision, RecipeDigest: r.SpecHash, State: r.State, Member: r.Member,
		Started: r.StartedAt, Ended: r.EndedAt, Mutations: r.Mutations, Error: r.Error}
	if withRecipe {
		rs.Recipe = r.Recipe
	}
	return rs
}

// ShowOptions choose what Show adds.
type ShowOptions struct {
	History bool // every revision, not only the current one
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
// instances, where they run, their addresses and services with health,
// and their current revision.
func Show(ctx context.Context, o Options) (State, error) {
	return ShowWith(ctx, o, ShowOptions{})
}

// ShowWith is Show with options.
func ShowWith(ctx context.Context, o Options, so ShowOptions) (State, error) {
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
		if revs, err := o.State.History(ctx, d.Project()); err != nil {
			ds.RevisionError = err.Error()
		} else if len(revs) > 0 {
			cur := revisionState(revs[len(revs)-1], false)
			ds.Revision = &cur
			if so.History {
				for _, r := range revs {
					ds.History = append(ds.History, revisionState(r, true))
				}
			}
		}
		if rt, err := o.State.LastRestoreTest(ctx, d.Project()); err != nil {
			ds.RestoreTestError = err.Error()
		} else {
			ds.RestoreTest = rt
		}
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
			fmt.Fprintf(tw, "deployment %s (project %s): not deployed\n", d.Name, d.Project)
			writeRevisions(tw, d)
			writeRestoreTest(tw, d)
			fmt.Fprintln(tw)
			continue
		}
		var urls []string
		for _, u := range d.URLs {
			urls = append(urls, u.URL)
		}
		fmt.Fprintf(tw, "deployment %s (project %s): %s\n", d.Name, d.Project, strings.Join(urls, " "))
		writeRevisions(tw, d)
		writeRestoreTest(tw, d)
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

// writeRevisions prints the current revision, or the history when it was
// asked for.
func writeRevisions(w io.Writer, d DeploymentState) {
	switch {
	case d.RevisionError != "":
		fmt.Fprintf(w, "revision: unknown: %s\n", d.RevisionError)
	case d.Revision == nil:
		fmt.Fprintln(w, "revision: none recorded")
	case len(d.History) == 0:
		fmt.Fprintf(w, "revision %s\n", revisionLine(*d.Revision))
	default:
		fmt.Fprintln(w, "REVISION\tSTATE\tMEMBER\tSTARTED\tENDED\tCHANGES\tRECIPE\tERROR")
		for _, r := range d.History {
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.Revision, r.State, runner(r.Member),
				stamp(r.Started), stamp(r.Ended), r.Mutations, shortDigest(r.RecipeDigest), r.Error)
		}
	}
}

func revisionLine(r RevisionState) string {
	line := fmt.Sprintf("%d: %s on %s, started %s", r.Revision, r.State, runner(r.Member), stamp(r.Started))
	if !r.Ended.IsZero() {
		line += fmt.Sprintf(", ended %s, %d changes", stamp(r.Ended), r.Mutations)
	}
	line += " (recipe " + shortDigest(r.RecipeDigest) + ")"
	if r.Error != "" {
		line += ": " + r.Error
	}
	return line
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// shortDigest keeps the algorithm and 12 hex digits, as a person compares.
func shortDigest(d string) string {
	if alg, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return alg + ":" + hex[:12]
	}
	return d
}

// runner is the host that ran a deploy, "-" when not known.
func runner(m string) string {
	if m == "" {
		return "-"
	}
	return m
}

func writeRestoreTest(w io.Writer, d DeploymentState) {
	if d.RestoreTestError != "" {
		fmt.Fprintf(w, "restore test: unknown: %s\n", d.RestoreTestError)
		return
	}
	fmt.Fprintln(w, RestoreTestLine(d.RestoreTest, time.Now()))
}

// RestoreTestLine says a deployment's last restore test for a person, its
// times relative to now: "restore test: backups/NAME (taken 3 h ago)
// restored OK 20 min ago in 41 s", or "restore test: never".
func RestoreTestLine(rt *registry.RestoreTest, now time.Time) string {
	if rt == nil {
		return "restore test: never"
	}
	backup := rt.Backup
	if backup == "" {
		backup = "no backup"
	}
	if !rt.Taken.IsZero() {
		backup += " (taken " + Ago(now.Sub(rt.Taken)) + ")"
	}
	took := Took(rt.Ended.Sub(rt.Started))
	if rt.Error != "" {
		// One line: verify lists its problems a line each.
		msg := ""
		for _, l := range strings.Split(rt.Error, "\n") {
			if l = strings.TrimSpace(l); l == "" {
				continue
			}
			if msg != "" && !strings.HasSuffix(msg, ":") {
				msg += ";"
			}
			msg += " " + l
		}
		msg = strings.TrimSpace(msg)
		return fmt.Sprintf("restore test: %s FAILED %s after %s: %s", backup, Ago(now.Sub(rt.Ended)), took, msg)
	}
	return fmt.Sprintf("restore test: %s restored OK %s in %s", backup, Ago(now.Sub(rt.Ended)), took)
}

// Ago says how long ago something was, to the unit a person reads.
func Ago(d time.Duration) string {
	switch {
	case d < 0:
		return "in the future (clocks differ)"
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d/time.Hour))
	default:
		return fmt.Sprintf("%d days ago", int(d/(24*time.Hour)))
	}
}

// Took says how long a run took: seconds, or minutes and seconds.
func Took(d time.Duration) string {
	s := int(d.Round(time.Second) / time.Second)
	if s < 120 {
		return fmt.Sprintf("%d s", s)
	}
	return fmt.Sprintf("%d min %d s", s/60, s%60)
}
