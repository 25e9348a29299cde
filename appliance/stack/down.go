package stack

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// Down stops and removes the project's containers and networks in this
// Docker, all instances' alike. Volumes (the sites' data) are kept unless
// purge is set. Containers stop in parallel, each with StopTimeout.
func Down(ctx context.Context, c client.APIClient, project string, purge bool, rep *progress.Reporter) (Result, error) {
	var res Result
	if rep == nil {
		rep = progress.Discard()
	}
	own := filters.NewArgs(filters.Arg("label", LabelProject+"="+project))
	cts, err := c.ContainerList(ctx, container.ListOptions{All: true, Filters: own})
	if err != nil {
		return res, fmt.Errorf("%s: list containers: %w", project, err)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, ct := range cts {
		wg.Add(1)
		go func(ct container.Summary) {
			defer wg.Done()
			name := ct.Labels[LabelService]
			task := rep.Start(fmt.Sprintf("%s/%s: remove %s", project, ct.Labels[LabelInstance], name), 0, "")
			var one Result
			err := removeContainers(ctx, c, []container.Summary{ct}, &one)
			if err != nil {
				err = fmt.Errorf("%s: %w", project, err)
			}
			task.Done(err)
			mu.Lock()
			defer mu.Unlock()
			res.Mutations += one.Mutations
			if err != nil {
				errs = append(errs, err)
				return
			}
			res.Removed = append(res.Removed, name)
		}(ct)
	}
	wg.Wait()
	sort.Strings(res.Removed)
	if len(errs) > 0 {
		return res, errs[0]
	}
	nets, err := c.NetworkList(ctx, network.ListOptions{Filters: own})
	if err != nil {
		return res, fmt.Errorf("%s: list networks: %w", project, err)
	}
	for _, n := range nets {
		res.Mutations++
		if err := c.NetworkRemove(ctx, n.ID); err != nil {
			return res, fmt.Errorf("%s: remove network %s: %w", project, n.Name, err)
		}
		res.Removed = append(res.Removed, "network "+n.Name)
	}
	if !purge {
		return res, nil
	}
	vols, err := c.VolumeList(ctx, volume.ListOptions{Filters: own})
	if err != nil {
		return res, fmt.Errorf("%s: list volumes: %w", project, err)
	}
	for _, v := range vols.Volumes {
		res.Mutations++
		if err := c.VolumeRemove(ctx, v.Name, false); err != nil {
			return res, fmt.Errorf("%s: remove volume %s: %w", project, v.Name, err)
		}
		rep.Info("%s: volume %s removed", project, v.Name)
		res.Removed = append(res.Removed, "volume "+v.Name)
	}
	return res, nil
}

// Objects is what a project has in one Docker.
type Objects struct {
	Project    string            `json:"project"`
	Containers []ContainerStatus `json:"containers"`
	Networks   []string          `json:"networks"`
	Volumes    []VolumeStatus    `json:"volumes"`
}

// ContainerStatus is one service's container.
type ContainerStatus struct {
	Instance string   `json:"instance"`
	Service  string   `json:"service"`
	Name     string   `json:"name"`
	ID       string   `json:"id"`
	Image    string   `json:"image"`
	State    string   `json:"state"`            // running, exited, restarting, created, ...
	Health   string   `json:"health,omitempty"` // healthy, unhealthy, starting; empty without a health check
	Status   string   `json:"status"`           // Docker's human text, e.g. "Up 3 minutes"
	Ports    []string `json:"ports,omitempty"`  // published, HOSTIP:HOSTPORT->PORT/PROTO
}

// VolumeStatus is one volume of the project.
type VolumeStatus struct {
	Instance string `json:"instance"`
	Name     string `json:"name"`   // Docker's name
	Volume   string `json:"volume"` // name in the stack file
}

// Inventory lists the project's containers (with state and health),
// networks and volumes in this Docker: what `ssbuild show` reports and
// `down --purge` lists before deleting.
func Inventory(ctx context.Context, c client.APIClient, project string) (Objects, error) {
	obj := Objects{Project: project}
	own := filters.NewArgs(filters.Arg("label", LabelProject+"="+project))
	cts, err := c.ContainerList(ctx, container.ListOptions{All: true, Filters: own})
	if err != nil {
		return obj, fmt.Errorf("%s: list containers: %w", project, err)
	}
	for _, ct := range cts {
		cs := ContainerStatus{Instance: ct.Labels[LabelInstance], Service: ct.Labels[LabelService], ID: ct.ID,
			Image: ct.Image, State: ct.State, Status: ct.Status}
		if len(ct.Names) > 0 {
			cs.Name = strings.TrimPrefix(ct.Names[0], "/")
		}
		if ct.State == "running" && strings.Contains(ct.Status, "(") {
			info, err := c.ContainerInspect(ctx, ct.ID)
			if err == nil && info.State != nil && info.State.Health != nil {
				cs.Health = info.State.Health.Status
			}
		}
		for _, p := range ct.Ports {
			if p.PublicPort != 0 {
				cs.Ports = append(cs.Ports, fmt.Sprintf("%s:%d->%d/%s", p.IP, p.PublicPort, p.PrivatePort, p.Type))
			}
		}
		obj.Containers = append(obj.Containers, cs)
	}
	sort.Slice(obj.Containers, func(i, j int) bool { return obj.Containers[i].Name < obj.Containers[j].Name })
	nets, err := c.NetworkList(ctx, network.ListOptions{Filters: own})
	if err != nil {
		return obj, fmt.Errorf("%s: list networks: %w", project, err)
	}
	for _, n := range nets {
		obj.Networks = append(obj.Networks, n.Name)
	}
	sort.Strings(obj.Networks)
	vols, err := c.VolumeList(ctx, volume.ListOptions{Filters: own})
	if err != nil {
		return obj, fmt.Errorf("%s: list volumes: %w", project, err)
	}
	for _, v := range vols.Volumes {
		obj.Volumes = append(obj.Volumes, VolumeStatus{Instance: v.Labels[LabelInstance], Name: v.Name, Volume: v.Labels[LabelVolume]})
	}
	sort.Slice(obj.Volumes, func(i, j int) bool { return obj.Volumes[i].Name < obj.Volumes[j].Name })
	return obj, nil
}
