package deploy

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"
	"github.com/sovereign-stack/ssbuild/handoff/imagedir"
)

// mutations counts the changing calls made to LXD and Docker, so a
// re-deploy with no change can show it made none.
type mutations struct{ n atomic.Int64 }

func (m *mutations) add(n int) { m.n.Add(int64(n)) }

func isNotFound(err error) bool { return api.StatusErrorCheck(err, http.StatusNotFound) }

func wait(op lxd.Operation, err error) error {
	if err != nil {
		return err
	}
	return op.Wait()
}

// ensureProject creates the deployment's project when missing. It keeps
// its own profiles and custom volumes, and uses the default project's
// images, so the base image is imported once for every deployment.
func ensureProject(c lxd.InstanceServer, name string, m *mutations) error {
	if _, _, err := c.GetProject(name); err == nil {
		return nil
	} else if !isNotFound(err) {
		return fmt.Errorf("project %s: %w", name, err)
	}
	err := c.CreateProject(api.ProjectsPost{Name: name, ProjectPut: api.ProjectPut{
		Description: "ssbuild deployment " + name,
		Config: map[string]string{
			"features.images": "false", "features.profiles": "true",
			"features.storage.volumes": "true", "features.networks": "false",
		},
	}})
	if err != nil {
		return fmt.Errorf("create project %s: %w", name, err)
	}
	m.add(1)
	return nil
}

// ensureBaseImage makes sure BaseImageAlias exists in the default project,
// importing it from dir (an `ssbuild image` output) when missing.
func ensureBaseImage(c lxd.InstanceServer, dir string, m *mutations) error {
	if _, _, err := c.GetImageAlias(BaseImageAlias); err == nil {
		return nil
	} else if !isNotFound(err) {
		return fmt.Errorf("base image %s: %w", BaseImageAlias, err)
	}
	if dir == "" {
		return fmt.Errorf("base image %s is not in LXD: pass --image DIR, the output folder of `ssbuild image`", BaseImageAlias)
	}
	imageDir := filepath.Join(dir, imagedir.ImageDir)
	if _, err := os.Stat(filepath.Join(imageDir, imagedir.MetadataFile)); err != nil {
		imageDir = dir // the image folder itself
	}
	meta, err := os.Open(filepath.Join(imageDir, imagedir.MetadataFile))
	if err != nil {
		return fmt.Errorf("base image: %w (is %s the output of `ssbuild image`?)", err, dir)
	}
	defer meta.Close()
	rootfs, err := os.Open(filepath.Join(imageDir, imagedir.SquashfsFile))
	if err != nil {
		return fmt.Errorf("base image: %w (the image must include the container format)", err)
	}
	defer rootfs.Close()
	op, err := c.CreateImage(api.ImagesPost{}, &lxd.ImageCreateArgs{
		MetaFile: meta, MetaName: imagedir.MetadataFile, RootfsFile: rootfs, RootfsName: imagedir.SquashfsFile})
	if err := wait(op, err); err != nil {
		return fmt.Errorf("import base image from %s: %w", imageDir, err)
	}
	m.add(1)
	fp, _ := op.Get().Metadata["fingerprint"].(string)
	err = c.CreateImageAlias(api.ImageAliasesPost{ImageAliasesEntry: api.ImageAliasesEntry{
		Name: BaseImageAlias, Type: "container", Target: fp}})
	if err != nil {
		return fmt.Errorf("alias base image %s as %s: %w", fp, BaseImageAlias, err)
	}
	m.add(1)
	return nil
}

// members returns the online cluster members by name, or "" alone for a
// standalone server. The member asked is up, so a list with none online is
// LXD's view in flux (a new database leader after the old one was lost,
// before its heartbeats): it is asked again for up to membersSettle.
func members(ctx context.Context, c lxd.InstanceServer) ([]string, error) {
	cl, _, err := c.GetCluster()
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if !cl.Enabled {
		return []string{""}, nil
	}
	for deadline := time.Now().Add(membersSettle); ; {
		ms, err := c.GetClusterMembers()
		if err != nil {
			return nil, fmt.Errorf("cluster members: %w", err)
		}
		var out, all []string
		for _, mb := range ms {
			if mb.Status == "Online" {
				out = append(out, mb.ServerName)
			}
			all = append(all, mb.ServerName+" "+mb.Status)
		}
		if len(out) > 0 {
			sort.Strings(out)
			return out, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no cluster member is online (%s) after %s", strings.Join(all, ", "), membersSettle)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// membersSettle bounds members' wait for LXD to list a member online.
const membersSettle = 2 * time.Minute

// planner places the instances of one deployment after another, each
// seeing where the earlier ones went (see choose).
type planner struct {
	members []string // online members; "" alone for a standalone server
	all     []api.Instance
}

func newPlanner(ctx context.Context, c lxd.InstanceServer) (*planner, error) {
	names, err := members(ctx, c)
	if err != nil {
		return nil, err
	}
	p := &planner{members: names}
	if len(names) == 1 && names[0] == "" {
		return p, nil
	}
	if p.all, err = c.GetInstancesAllProjects(api.InstanceTypeAny); err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	return p, nil
}

// place chooses a member for every instance in specs (kept: where their
// volumes are, see keptVolumes) and counts them as there for the
// deployments placed after.
func (p *planner) place(specs []InstanceSpec, kept map[string]string) (map[string]string, error) {
	if len(p.members) == 1 && p.members[0] == "" {
		where := map[string]string{}
		for _, s := range specs {
			where[s.Name] = ""
		}
		return where, nil
	}
	where, err := choose(p.members, p.all, kept, specs)
	if err != nil {
		return nil, err
	}
	for _, s := range specs {
		if !slices.ContainsFunc(p.all, func(in api.Instance) bool { return in.Project == s.Project && in.Name == s.Name }) {
			p.all = append(p.all, api.Instance{Name: s.Name, Project: s.Project, Location: where[s.Name],
				Config: map[string]string{keyDeployment: s.Project}})
		}
	}
	return where, nil
}

// keptVolumes says, per instance name, on which member the deployment
// still has that instance's volumes (kept by down, or by a recipe that
// turned the instance off): a local pool's volume lives on one member, so
// the instance must come back there to find its data.
func keptVolumes(c lxd.InstanceServer, pool string, specs []InstanceSpec) (map[string]string, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	vols, err := customVolumes(c, pool, specs[0].Project)
	if err != nil {
		return nil, err
	}
	kept := map[string]string{}
	for _, s := range specs {
		for _, want := range s.Volumes {
			for _, v := range vols {
				// A replica is a copy on another member, not where the
				// instance's data lives (host replace promotes it).
				if v.Name == want.Name && v.Location != "" && v.Location != "none" && v.Config[KeyReplicaOf] == "" {
					kept[s.Name] = v.Location
				}
			}
		}
	}
	return kept, nil
}

// choose places specs (one deployment's instances) on members: an instance
// that exists stays where it is (also when its host says otherwise:
// nothing running moves); one whose volumes were kept goes back to their
// member (also when its host is lost: `host replace` brings it up where
// its replica was promoted); a new one goes to its host when the recipe
// names one (a host a later revision added, say), else to the member with
// the fewest instances (in every project), ties by name, so a
// deployment's instances spread over the cluster. A www instance owns its member's ports 80 and 443, so
// it never goes where another deployment's www is; a scratch copy's www owns none (Specs): it goes
// anywhere and keeps no www from a member.
func choose(members []string, all []api.Instance, kept map[string]string, specs []InstanceSpec) (map[string]string, error) {
	where := map[string]string{}
	load := map[string]int{}
	for _, n := range members {
		load[n] = 0
	}
	wwwOf := map[string]string{} // member -> project whose www runs there
	for _, in := range all {
		if _, ok := load[in.Location]; ok {
			load[in.Location]++
		}
		if len(specs) > 0 && in.Project == specs[0].Project {
			where[in.Name] = in.Location
		} else if in.Name == "www" && in.Config[keyDeployment] != "" && !isScratchProject(in.Project) {
			wwwOf[in.Location] = in.Project
		}
	}
	for _, s := range specs {
		if _, ok := where[s.Name]; ok {
			continue
		}
		if m, ok := kept[s.Name]; ok {
			if _, online := load[m]; !online {
				return nil, fmt.Errorf("%s/%s: its volumes are on member %s, which is not online; bring it back (or move the volumes) first", s.Project, s.Name, m)
			}
			// A host that is no online member (lost, replaced) cannot
			// hold it: the instance comes back to its data. An online one
			// that differs is the owner's conflicting wish: refused.
			if _, hostOnline := load[s.Host]; s.Host != "" && s.Host != m && hostOnline {
				return nil, fmt.Errorf("%s/%s: its host is %s, but its volumes are on member %s (local storage); remove host or move the volumes", s.Project, s.Name, s.Host, m)
			}
			where[s.Name] = m
			load[m]++
			continue
		}
		if s.Host != "" {
			if _, online := load[s.Host]; !online {
				return nil, fmt.Errorf("%s/%s: its host %s is not an online cluster member (online: %s)", s.Project, s.Name, s.Host, strings.Join(members, ", "))
			}
			if s.Name == "www" && wwwOf[s.Host] != "" && !isScratchProject(s.Project) {
				return nil, fmt.Errorf("%s/www: its host %s already runs the www of %s, which owns the member's ports 80 and 443", s.Project, s.Host, wwwOf[s.Host])
			}
			where[s.Name] = s.Host
			load[s.Host]++
			continue
		}
		best := ""
		for _, n := range members {
			if s.Name == "www" && wwwOf[n] != "" && !isScratchProject(s.Project) {
				continue
			}
			if best == "" || load[n] < load[best] {
				best = n
			}
		}
		if best == "" {
			return nil, fmt.Errorf("no member is free for www of %s: a www instance takes its member's ports 80 and 443, and every online member has another deployment's www (%s); add a host or deploy fewer deployments",
				s.Project, wwwList(wwwOf))
		}
		where[s.Name] = best
		load[best]++
	}
	return where, nil
}

func wwwList(wwwOf map[string]string) string {
	var out []string
	for m, p := range wwwOf {
		out = append(out, p+" on "+m)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// ensureVolumes creates the instance's custom volumes on its member.
func ensureVolumes(c lxd.InstanceServer, pool string, s InstanceSpec, member string, m *mutations) error {
	pc := scoped(c.UseProject(s.Project), member)
	for _, v := range s.Volumes {
		if cur, etag, err := pc.GetStoragePoolVolume(pool, "custom", v.Name); err == nil {
			// Existing volumes get the snapshot keys a later recipe (or
			// ssbuild) sets; other keys are LXD's or fixed at creation.
			if !configMatches(cur.Config, snapshotKeys(v.Config)) {
				put := cur.Writable()
				maps.Copy(put.Config, snapshotKeys(v.Config))
				if err := pc.UpdateStoragePoolVolume(pool, "custom", v.Name, put, etag); err != nil {
					return fmt.Errorf("volume %s/%s: set its snapshot schedule: %w", s.Project, v.Name, err)
				}
				m.add(1)
			}
			continue
		} else if !isNotFound(err) {
			return fmt.Errorf("volume %s/%s: %w", s.Project, v.Name, err)
		}
		err := pc.CreateStoragePoolVolume(pool, api.StorageVolumesPost{Name: v.Name, Type: "custom",
			StorageVolumePut: api.StorageVolumePut{Config: v.Config, Description: "ssbuild " + v.Kind + " volume of " + s.Name}})
		if err != nil {
			return fmt.Errorf("create volume %s/%s on %s: %w", s.Project, v.Name, memberName(member), err)
		}
		m.add(1)
	}
	return nil
}

// snapshotKeys is the part of a volume's config that applies to an
// existing volume too.
func snapshotKeys(c map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range c {
		if strings.HasPrefix(k, "snapshots.") {
			out[k] = v
		}
	}
	return out
}

// ensureInstance creates the instance on member when missing, brings its
// managed config and devices to the spec, and starts it.
func ensureInstance(c lxd.InstanceServer, s InstanceSpec, member string, m *mutations) error {
	pc := c.UseProject(s.Project)
	cur, etag, err := pc.GetInstance(s.Name)
	switch {
	case isNotFound(err):
		op, err := scoped(pc, member).CreateInstance(api.InstancesPost{Name: s.Name, Type: api.InstanceType(s.Type),
			Source:      api.InstanceSource{Type: "image", Alias: BaseImageAlias},
			InstancePut: api.InstancePut{Config: s.Config, Devices: s.Devices, Profiles: []string{"default"}}})
		if err := wait(op, err); err != nil {
			return fmt.Errorf("create instance %s/%s on %s: %w", s.Project, s.Name, memberName(member), err)
		}
		m.add(1)
		if cur, etag, err = pc.GetInstance(s.Name); err != nil {
			return fmt.Errorf("instance %s/%s: %w", s.Project, s.Name, err)
		}
	case err != nil:
		return fmt.Errorf("instance %s/%s: %w", s.Project, s.Name, err)
	default:
		if !configMatches(cur.Config, s.Config) || !maps.EqualFunc(cur.Devices, s.Devices, maps.Equal) {
			put := cur.Writable()
			maps.Copy(put.Config, s.Config)
			put.Devices = s.Devices
			if err := wait(pc.UpdateInstance(s.Name, put, etag)); err != nil {
				return fmt.Errorf("update instance %s/%s: %w", s.Project, s.Name, err)
			}
			m.add(1)
		}
	}
	if cur.StatusCode != api.Running {
		op, err := pc.UpdateInstanceState(s.Name, api.InstanceStatePut{Action: "start", Timeout: -1}, "")
		if err := wait(op, err); err != nil {
			return fmt.Errorf("start instance %s/%s: %w", s.Project, s.Name, err)
		}
		m.add(1)
	}
	return nil
}

// configMatches reports whether every key the spec sets has its value
// (LXD adds volatile keys of its own, which are not ours to compare).
func configMatches(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func memberName(m string) string {
	if m == "" {
		return "the server"
	}
	return "member " + m
}

// instancesOf lists the instances of a project that ssbuild made, by name.
func instancesOf(c lxd.InstanceServer, project string) ([]api.Instance, error) {
	all, err := c.UseProject(project).GetInstances(api.InstanceTypeAny)
	if err != nil {
		return nil, fmt.Errorf("list instances of %s: %w", project, err)
	}
	var out []api.Instance
	for _, in := range all {
		if in.Config[keyDeployment] == project {
			out = append(out, in)
		}
	}
	slices.SortFunc(out, func(a, b api.Instance) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// scoped aims c at member; "" (a standalone server) leaves it as it is.
func scoped(c lxd.InstanceServer, member string) lxd.InstanceServer {
	if member == "" {
		return c
	}
	return c.UseTarget(member)
}
