package stack

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/go-connections/nat"
	"golang.org/x/sync/errgroup"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// StopTimeout is how long a container gets to stop (databases flush) before
// it is killed, when it is recreated or taken down.
const StopTimeout = 30 * time.Second

// Parallel is how many services of one instance Apply changes at once.
const Parallel = 4

// Result says what Apply or Down did, by service (containers), network and
// volume name as in the stack file.
type Result struct {
	Created   []string // services whose container was made (none existed)
	Recreated []string // services whose container was replaced: config or image changed
	Started   []string // services whose unchanged container was not running
	Unchanged []string // services left as they were
	Removed   []string // services (and, for Down, networks and volumes) removed
	// Mutations counts the mutating Docker API calls made (create, start,
	// stop, remove, connect, copy): 0 when there was nothing to do.
	Mutations int
}

// Apply makes the instance's Docker run the stack: it creates missing
// networks and volumes, creates or recreates the containers whose spec hash
// differs, starts stopped ones, and removes the containers (and networks)
// of the project and instance that are no longer in the stack. Volumes are
// never removed here. Images must already be in Docker (pre-loaded): a
// missing one is an error naming it, before anything changes. A Lightning
// service starts only after the stack's Fence check; one the check refuses
// stays down (a running one is stopped), the rest is applied, and the
// refusal is the error returned.
func Apply(ctx context.Context, c client.APIClient, s *Stack, rep *progress.Reporter) (Result, error) {
	var res Result
	if rep == nil {
		rep = progress.Discard()
	}
	where := s.Project + "/" + s.Instance

	// Images first: nothing changes when one is missing.
	imageIDs := map[string]string{}
	for _, ref := range s.Images() {
		id, err := imageID(ctx, c, s, ref)
		if err != nil {
			return res, err
		}
		imageIDs[ref] = id
	}

	own := filters.NewArgs(filters.Arg("label", LabelProject+"="+s.Project), filters.Arg("label", LabelInstance+"="+s.Instance))
	existing, err := c.ContainerList(ctx, container.ListOptions{All: true, Filters: own})
	if err != nil {
		return res, s.errorf("%s: list containers: %w", where, err)
	}
	networkIDs, replaced, err := ensureNetworks(ctx, c, s, own, existing, &res)
	if err != nil {
		return res, err
	}
	if err := ensureVolumes(ctx, c, s, own, &res); err != nil {
		return res, err
	}
	byService := map[string][]container.Summary{}
	for _, ct := range existing {
		if !replaced[ct.ID] {
			byService[ct.Labels[LabelService]] = append(byService[ct.Labels[LabelService]], ct)
		}
	}
	wasReplaced := map[string]bool{}
	for _, ct := range existing {
		if replaced[ct.ID] {
			wasReplaced[ct.Labels[LabelService]] = true
		}
	}

	// Decide per service, then do the work in parallel (Docker creates
	// and starts containers concurrently; on a busy host this is most of
	// the time of a cold Apply).
	type job struct {
		svc   *Service
		hash  string
		cts   []container.Summary // to remove first
		start *container.Summary  // unchanged but stopped: start it
		verb  string
	}
	var jobs []job
	for i := range s.Services {
		svc := &s.Services[i]
		hash := specHash(svc, imageIDs[svc.Image])
		cts := byService[svc.Name]
		delete(byService, svc.Name)
		var keep *container.Summary
		for j := range cts {
			if cts[j].Labels[LabelSpec] == hash && len(cts[j].Names) > 0 && strings.TrimPrefix(cts[j].Names[0], "/") == s.ContainerName(svc.Name) {
				keep = &cts[j]
			}
		}
		switch {
		case keep != nil && len(cts) == 1 && (keep.State == "running" || keep.State == "restarting"):
			res.Unchanged = append(res.Unchanged, svc.Name)
			rep.Info("%s: %s unchanged", where, svc.Name)
			if svc.Lightning != nil {
				// A running node is checked too: a copy started behind
				// ssbuild's back is stopped.
				jobs = append(jobs, job{svc: svc, start: keep, verb: "check"})
			}
		case keep != nil && len(cts) == 1:
			jobs = append(jobs, job{svc: svc, start: keep, verb: "start"})
		case len(cts) > 0 || wasReplaced[svc.Name]:
			jobs = append(jobs, job{svc: svc, hash: hash, cts: cts, verb: "recreate"})
		default:
			jobs = append(jobs, job{svc: svc, hash: hash, verb: "create"})
		}
	}
	var mu sync.Mutex
	var fenceErr error // a Lightning node not started: said at the end
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(Parallel)
	for _, j := range jobs {
		g.Go(func() error {
			var one Result
			if j.verb == "check" {
				err := fenced(gctx, c, s, j.svc, j.start.ID)
				if err == nil {
					return nil
				}
				mu.Lock()
				defer mu.Unlock()
				if errors.Is(err, ErrFenced) {
					timeout := int(StopTimeout / time.Second)
					res.Mutations++
					if serr := c.ContainerStop(gctx, j.start.ID, container.StopOptions{Timeout: &timeout}); serr != nil {
						err = fmt.Errorf("%w; stopping it failed: %w", err, serr)
					} else {
						err = fmt.Errorf("%w; stopped", err)
					}
				}
				fenceErr = s.errorf("%s: check %s: %w", where, j.svc.Name, err)
				return nil
			}
			task := rep.Start(fmt.Sprintf("%s: %s %s", where, j.verb, j.svc.Name), 0, "")
			var err error
			if j.start != nil {
				err = fenced(gctx, c, s, j.svc, j.start.ID)
				if err == nil {
					one.Mutations++
					err = c.ContainerStart(gctx, j.start.ID, container.StartOptions{})
				}
			} else {
				err = removeContainers(gctx, c, j.cts, &one)
				if err == nil {
					err = createService(gctx, c, s, j.svc, j.hash, networkIDs, &one)
				}
			}
			if err != nil {
				err = s.errorf("%s: %s %s: %w", where, j.verb, j.svc.Name, err)
			}
			task.Done(err)
			mu.Lock()
			defer mu.Unlock()
			res.Mutations += one.Mutations
			if fe := (*fenceError)(nil); errors.As(err, &fe) {
				// The node stays down; the other services go on.
				fenceErr = err
				return nil
			}
			if err != nil {
				return err
			}
			switch j.verb {
			case "start":
				res.Started = append(res.Started, j.svc.Name)
			case "create":
				res.Created = append(res.Created, j.svc.Name)
			default:
				res.Recreated = append(res.Recreated, j.svc.Name)
			}
			return nil
		})
	}
	err = g.Wait()
	for _, l := range [][]string{res.Created, res.Recreated, res.Started, res.Unchanged} {
		sort.Strings(l)
	}
	if err != nil {
		return res, err
	}

	// Services no longer in the stack.
	for _, name := range sortedKeys(byService) {
		task := rep.Start(fmt.Sprintf("%s: remove %s", where, name), 0, "")
		err := removeContainers(ctx, c, byService[name], &res)
		if err != nil {
			err = s.errorf("%s: remove %s: %w", where, name, err)
		}
		task.Done(err)
		if err != nil {
			return res, err
		}
		res.Removed = append(res.Removed, name)
	}
	// Networks no longer in the stack (their containers are gone now).
	nets, err := c.NetworkList(ctx, network.ListOptions{Filters: own})
	if err != nil {
		return res, s.errorf("%s: list networks: %w", where, err)
	}
	for _, n := range nets {
		if s.network(n.Labels[LabelNetwork]) != nil {
			continue
		}
		res.Mutations++
		if err := c.NetworkRemove(ctx, n.ID); err != nil {
			return res, s.errorf("%s: remove network %s: %w", where, n.Name, err)
		}
		rep.Info("%s: network %s removed", where, n.Name)
		res.Removed = append(res.Removed, "network "+n.Labels[LabelNetwork])
	}
	return res, fenceErr
}

// imageID finds a pre-loaded image and checks the recipe's pin.
func imageID(ctx context.Context, c client.APIClient, s *Stack, ref string) (string, error) {
	info, err := c.ImageInspect(ctx, ref)
	if errdefs.IsNotFound(err) {
		var users []string
		for _, svc := range s.Services {
			if svc.Image == ref {
				users = append(users, svc.Name)
			}
		}
		return "", s.errorf("%s/%s: image %s (services %s) is not in this Docker: it is pre-loaded from the base image (ssbuild load-docker-images); no registry is used",
			s.Project, s.Instance, ref, strings.Join(users, ", "))
	}
	if err != nil {
		return "", s.errorf("%s/%s: inspect image %s: %w", s.Project, s.Instance, ref, err)
	}
	for _, svc := range s.Services {
		if svc.Image != ref || svc.ImageDigest == "" || svc.ImageDigest == info.ID {
			continue
		}
		ok := false
		for _, rd := range info.RepoDigests {
			if strings.HasSuffix(rd, "@"+svc.ImageDigest) {
				ok = true
			}
		}
		if !ok {
			return "", s.errorf("%s/%s: image %s is %s, not the digest %s pinned in the recipe's image.dockerImages",
				s.Project, s.Instance, ref, info.ID, svc.ImageDigest)
		}
	}
	return info.ID, nil
}

// specHash covers everything Apply puts into a container: the rendered
// service and the image ID its ref points at.
func specHash(svc *Service, imageID string) string {
	b, _ := json.Marshal(struct {
		S       *Service
		ImageID string
	}{svc, imageID})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

func (s *Stack) labels(kind, name string) map[string]string {
	return map[string]string{LabelProject: s.Project, LabelInstance: s.Instance, kind: name}
}

// ensureNetworks creates the stack's missing networks and replaces those
// whose settings changed; the containers on a replaced network are removed
// first (their IDs are returned) so Apply recreates them.
func ensureNetworks(ctx context.Context, c client.APIClient, s *Stack, own filters.Args, existing []container.Summary, res *Result) (map[string]string, map[string]bool, error) {
	where := s.Project + "/" + s.Instance
	list, err := c.NetworkList(ctx, network.ListOptions{Filters: own})
	if err != nil {
		return nil, nil, s.errorf("%s: list networks: %w", where, err)
	}
	ids := map[string]string{}
	replaced := map[string]bool{}
	for _, n := range list {
		name := n.Labels[LabelNetwork]
		want := s.network(name)
		if want == nil || n.Labels[LabelSpec] == networkHash(*want) {
			ids[name] = n.ID
			continue
		}
		var on []container.Summary
		for _, ct := range existing {
			if ct.NetworkSettings != nil && ct.NetworkSettings.Networks[n.Name] != nil {
				on = append(on, ct)
				replaced[ct.ID] = true
			}
		}
		if err := removeContainers(ctx, c, on, res); err != nil {
			return nil, nil, s.errorf("%s: replace network %s: %w", where, n.Name, err)
		}
		res.Mutations++
		if err := c.NetworkRemove(ctx, n.ID); err != nil {
			return nil, nil, s.errorf("%s: replace network %s: %w", where, n.Name, err)
		}
	}
	for _, n := range s.Networks {
		if _, ok := ids[n.Name]; ok {
			continue
		}
		labels := s.labels(LabelNetwork, n.Name)
		labels[LabelSpec] = networkHash(n)
		res.Mutations++
		resp, err := c.NetworkCreate(ctx, s.NetworkName(n.Name), network.CreateOptions{
			Driver: "bridge", Internal: n.Internal, Labels: labels})
		if err != nil {
			return nil, nil, s.errorf("%s: create network %s: %w", where, s.NetworkName(n.Name), err)
		}
		ids[n.Name] = resp.ID
	}
	return ids, replaced, nil
}

func (s *Stack) network(name string) *Network {
	for i := range s.Networks {
		if s.Networks[i].Name == name {
			return &s.Networks[i]
		}
	}
	return nil
}

func networkHash(n Network) string {
	b, _ := json.Marshal(n)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

func ensureVolumes(ctx context.Context, c client.APIClient, s *Stack, own filters.Args, res *Result) error {
	list, err := c.VolumeList(ctx, volume.ListOptions{Filters: own})
	if err != nil {
		return s.errorf("%s/%s: list volumes: %w", s.Project, s.Instance, err)
	}
	have := map[string]bool{}
	for _, v := range list.Volumes {
		have[v.Name] = true
	}
	for _, v := range s.Volumes {
		if have[s.VolumeName(v.Name)] {
			continue
		}
		res.Mutations++
		if _, err := c.VolumeCreate(ctx, volume.CreateOptions{Name: s.VolumeName(v.Name), Labels: s.labels(LabelVolume, v.Name)}); err != nil {
			return s.errorf("%s/%s: create volume %s: %w", s.Project, s.Instance, s.VolumeName(v.Name), err)
		}
	}
	return nil
}

// removeContainers stops (with StopTimeout) and removes containers; their
// volumes stay.
func removeContainers(ctx context.Context, c client.APIClient, cts []container.Summary, res *Result) error {
	for _, ct := range cts {
		if ct.State == "running" || ct.State == "restarting" {
			secs := int(StopTimeout / time.Second)
			res.Mutations++
			if err := c.ContainerStop(ctx, ct.ID, container.StopOptions{Timeout: &secs}); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("stop container %s: %w", strings.Join(ct.Names, ","), err)
			}
		}
		res.Mutations++
		if err := c.ContainerRemove(ctx, ct.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove container %s: %w", strings.Join(ct.Names, ","), err)
		}
	}
	return nil
}

func createService(ctx context.Context, c client.APIClient, s *Stack, svc *Service, hash string, networkIDs map[string]string, res *Result) error {
	labels := map[string]string{}
	for k, v := range svc.Labels {
		labels[k] = v
	}
	for k, v := range s.labels(LabelService, svc.Name) {
		labels[k] = v
	}
	labels[LabelSpec] = hash

	env := make([]string, 0, len(svc.Environment))
	for _, k := range sortedKeys(svc.Environment) {
		env = append(env, k+"="+svc.Environment[k])
	}
	exposed := nat.PortSet{}
	bindings := nat.PortMap{}
	for _, p := range svc.Ports {
		port := nat.Port(strconv.Itoa(p.ContainerPort) + "/" + p.Protocol)
		exposed[port] = struct{}{}
		bindings[port] = append(bindings[port], nat.PortBinding{HostIP: p.HostIP, HostPort: strconv.Itoa(p.HostPort)})
	}
	var mounts []mount.Mount
	for _, m := range svc.Mounts {
		mm := mount.Mount{Type: mount.TypeVolume, Source: s.VolumeName(m.Source), Target: m.Target, ReadOnly: m.ReadOnly}
		if m.Type == "bind" {
			mm.Type, mm.Source = mount.TypeBind, m.Source
		}
		mounts = append(mounts, mm)
	}
	cfg := &container.Config{
		Hostname: svc.Name, Image: svc.Image, Env: env, Labels: labels, ExposedPorts: exposed,
		Entrypoint: svc.Entrypoint, Cmd: svc.Command,
	}
	host := &container.HostConfig{
		Mounts: mounts, PortBindings: bindings, ExtraHosts: svc.ExtraHosts,
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyMode(svc.Restart)},
	}
	if h := svc.Healthcheck; h != nil {
		cfg.Healthcheck = &container.HealthConfig{Test: append([]string{"CMD"}, h.Test...),
			Interval: h.Interval, Timeout: h.Timeout, Retries: h.Retries, StartPeriod: h.StartPeriod}
	}
	if svc.Init {
		yes := true
		host.Init = &yes
	}
	if svc.Restart == "" {
		host.RestartPolicy.Name = container.RestartPolicyDisabled
	}
	// Docker before API 1.44 takes one network at create; the others are
	// connected before the container starts.
	endpoint := func(n ServiceNetwork) *network.EndpointSettings {
		return &network.EndpointSettings{NetworkID: networkIDs[n.Name], Aliases: append([]string{svc.Name}, n.Aliases...)}
	}
	var netCfg *network.NetworkingConfig
	if len(svc.Networks) > 0 {
		first := svc.Networks[0]
		host.NetworkMode = container.NetworkMode(s.NetworkName(first.Name))
		netCfg = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{s.NetworkName(first.Name): endpoint(first)}}
	}
	res.Mutations++
	created, err := c.ContainerCreate(ctx, cfg, host, netCfg, nil, s.ContainerName(svc.Name))
	if err != nil {
		return fmt.Errorf("create container %s: %w", s.ContainerName(svc.Name), err)
	}
	for _, n := range svc.Networks[min(1, len(svc.Networks)):] {
		res.Mutations++
		if err := c.NetworkConnect(ctx, networkIDs[n.Name], created.ID, endpoint(n)); err != nil {
			return fmt.Errorf("connect %s to network %s: %w", s.ContainerName(svc.Name), s.NetworkName(n.Name), err)
		}
	}
	for _, f := range svc.Files {
		// Into the existing parent directory: the image's directories keep
		// their owners and modes.
		archive, err := fileTar(f)
		if err != nil {
			return err
		}
		res.Mutations++
		if err := c.CopyToContainer(ctx, created.ID, "/", archive, container.CopyToContainerOptions{}); err != nil {
			return fmt.Errorf("copy %s into %s: %w", f.Path, s.ContainerName(svc.Name), err)
		}
	}
	if err := fenced(ctx, c, s, svc, created.ID); err != nil {
		return err
	}
	res.Mutations++
	if err := c.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("start %s: %w", s.ContainerName(svc.Name), err)
	}
	return nil
}

// fenced runs the stack's fence check before a Lightning service starts:
// without a check it never starts.
func fenced(ctx context.Context, c client.APIClient, s *Stack, svc *Service, id string) error {
	if svc.Lightning == nil {
		return nil
	}
	if s.Fence == nil {
		return &fenceError{fmt.Errorf("%s runs a Lightning node and no fence check was given: not started", s.ContainerName(svc.Name))}
	}
	if err := s.Fence(ctx, c, s, svc, id); err != nil {
		return &fenceError{err}
	}
	return nil
}

// fenceError is a Lightning node the fence check kept from starting: Apply
// goes on with the other services and returns it at the end.
type fenceError struct{ err error }

func (e *fenceError) Error() string { return e.err.Error() }
func (e *fenceError) Unwrap() error { return e.err }

// fileTar packs one file for extraction in its parent directory.
func fileTar(f File) (*bytes.Reader, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	// Extracted at /, with its parent folders, so the image need not have them.
	rel := strings.TrimPrefix(path.Clean(f.Path), "/")
	var dirs []string
	for d := path.Dir(rel); d != "."; d = path.Dir(d) {
		dirs = append([]string{d}, dirs...)
	}
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
	}
	hdr := &tar.Header{Name: rel, Typeflag: tar.TypeReg, Mode: f.Mode, Size: int64(len(f.Content)), ModTime: time.Unix(0, 0)}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write([]byte(f.Content)); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return bytes.NewReader(b.Bytes()), nil
}
