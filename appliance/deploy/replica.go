package deploy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/appliance/cluster"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// Labels on a replica volume: a copy, on another member, of a deployed
// instance's custom volume, under the same name (LXD keeps a local pool's
// volumes per member, so the names do not collide). Deploy never places an
// instance by a replica; host replace promotes the replicas of a lost
// member's instances (removes these keys), and the next deploy creates
// the instances where they are.
// The keys are cluster's: its volume moves (host remove, migrate) must tell
// a replica from the volume it copies.
const (
	KeyReplicaOf        = cluster.KeyReplicaOf
	KeyReplicaInstance  = cluster.KeyReplicaInstance
	KeyReplicaRefreshed = cluster.KeyReplicaRefreshed
)

// ReplicaReport is one instance's refreshed replica.
type ReplicaReport struct {
	Project, Instance string
	From, To          string // members
	Volumes           []string
	At                time.Time     // the replica's data is as of then
	Frozen            time.Duration // the instance was frozen this long for a consistent copy
	Took              time.Duration
}

// Replicate refreshes, for every deployed instance, a replica of its
// custom volumes on another online member (the one that has it, else the
// one with the fewest instances). The copy is consistent: the instance is
// frozen (its processes, Docker's included, stopped in place) while its
// volumes are copied with LXD's refresh, so the replica is what a power cut
// at that moment would have left; a first copy is made unfrozen before,
// so the frozen one only sends what changed. LXD 5.0 cannot copy a custom
// volume between members inside the cluster, and its network copy needs the
// members to reach this client's address; relay mode streams both sides
// through this LXD's unix socket instead. An instance without another
// online member is skipped, said in the error.
func Replicate(ctx context.Context, c lxd.InstanceServer, log *progress.Reporter) ([]ReplicaReport, error) {
	log = cmp.Or(log, progress.Discard())
	online, err := members(ctx, c)
	if err != nil {
		return nil, err
	}
	all, err := c.GetInstancesAllProjects(api.InstanceTypeAny)
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	load := map[string]int{}
	for _, in := range all {
		load[in.Location]++
	}
	var reps []ReplicaReport
	var errs []error
	for _, in := range all {
		if in.Config[keyDeployment] == "" {
			continue
		}
		r, err := replicateInstance(ctx, c, in, online, load)
		if err != nil {
			errs = append(errs, fmt.Errorf("replica of %s/%s: %w", in.Project, in.Name, err))
			continue
		}
		log.Info("%s/%s: replica of %d volumes on %s refreshed (as of %s, frozen %s, %s)", r.Project, r.Instance, len(r.Volumes), r.To,
			r.At.Format(time.RFC3339), r.Frozen.Round(time.Millisecond), r.Took.Round(time.Millisecond))
		reps = append(reps, r)
	}
	return reps, errors.Join(errs...)
}

// instanceVolumes are the custom volumes an instance's disks use, by pool.
func instanceVolumes(in api.Instance) [][2]string {
	var out [][2]string
	for _, d := range in.ExpandedDevices {
		if d["type"] == "disk" && d["pool"] != "" && d["source"] != "" && d["path"] != "/" {
			out = append(out, [2]string{d["pool"], strings.TrimPrefix(d["source"], "custom/")})
		}
	}
	slices.SortFunc(out, func(a, b [2]string) int { return cmp.Compare(a[0]+"/"+a[1], b[0]+"/"+b[1]) })
	return out
}

// replicas are the marked copies of the project's volumes, by pool and
// name, with their members.
func replicas(c lxd.InstanceServer, project string, pools []string) (map[[2]string][]api.StorageVolume, error) {
	out := map[[2]string][]api.StorageVolume{}
	for _, pool := range pools {
		vols, err := c.UseProject(project).GetStoragePoolVolumes(pool)
		if err != nil {
			return nil, fmt.Errorf("volumes of %s on pool %s: %w", project, pool, err)
		}
		for _, v := range vols {
			if v.Type == "custom" && v.Config[KeyReplicaOf] != "" {
				k := [2]string{pool, v.Name}
				out[k] = append(out[k], v)
			}
		}
	}
	return out, nil
}

func replicateInstance(ctx context.Context, c lxd.InstanceServer, in api.Instance, online []string, load map[string]int) (ReplicaReport, error) {
	began := time.Now()
	r := ReplicaReport{Project: in.Project, Instance: in.Name, From: in.Location}
	vols := instanceVolumes(in)
	var pools []string
	for _, v := range vols {
		if !slices.Contains(pools, v[0]) {
			pools = append(pools, v[0])
		}
		r.Volumes = append(r.Volumes, v[1])
	}
	have, err := replicas(c, in.Project, pools)
	if err != nil {
		return r, err
	}
	// Where the replica is: where it already is, if that member is online
	// and is not the instance's; else the least loaded other member.
	for _, v := range vols {
		for _, rv := range have[v] {
			if rv.Location != in.Location && slices.Contains(online, rv.Location) && r.To == "" {
				r.To = rv.Location
			}
		}
	}
	if r.To == "" {
		for _, m := range online {
			if m != in.Location && (r.To == "" || load[m] < load[r.To]) {
				r.To = m
			}
		}
		if r.To == "" {
			return r, errors.New("no other member is online to hold it")
		}
		load[r.To]++
	}
	pc := c.UseProject(in.Project)
	src, dst := pc.UseTarget(in.Location), pc.UseTarget(r.To)
	// Replicas elsewhere (an earlier choice) would shadow the fresh one.
	for _, v := range vols {
		for _, rv := range have[v] {
			if rv.Location != r.To && rv.Location != in.Location {
				if err := pc.UseTarget(rv.Location).DeleteStoragePoolVolume(v[0], "custom", v[1]); err != nil && !isNotFound(err) {
					return r, fmt.Errorf("delete the older replica %s on %s: %w", v[1], rv.Location, err)
				}
			}
		}
	}
	// A first copy runs live, so the frozen refresh after it is short.
	for _, v := range vols {
		if _, _, err := dst.GetStoragePoolVolume(v[0], "custom", v[1]); isNotFound(err) {
			if err := copyReplica(ctx, src, dst, v, in.Location, in.Name, time.Now()); err != nil {
				return r, err
			}
		}
	}
	running := in.StatusCode == api.Running
	if running {
		if err := wait(pc.UpdateInstanceState(in.Name, api.InstanceStatePut{Action: "freeze", Timeout: -1}, "")); err != nil {
			return r, fmt.Errorf("freeze for a consistent copy: %w", err)
		}
	}
	r.At = time.Now()
	var errs []error
	for _, v := range vols {
		if err := copyReplica(ctx, src, dst, v, in.Location, in.Name, r.At); err != nil {
			errs = append(errs, err)
			break
		}
	}
	if running {
		if err := wait(pc.UpdateInstanceState(in.Name, api.InstanceStatePut{Action: "unfreeze", Timeout: -1}, "")); err != nil {
			errs = append(errs, fmt.Errorf("unfreeze: %w", err))
		}
		r.Frozen = time.Since(r.At)
	}
	r.Took = time.Since(began)
	return r, errors.Join(errs...)
}

// copyReplica copies (refreshes, when it exists) volume v from src to dst
// and labels the copy: a replica of from's, as of at, without the
// original's snapshot schedule (a replica is refreshed, not snapshotted).
func copyReplica(ctx context.Context, src, dst lxd.InstanceServer, v [2]string, from, instance string, at time.Time) error {
	pool, name := v[0], v[1]
	vol, _, err := src.GetStoragePoolVolume(pool, "custom", name)
	if err != nil {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	_, _, err = dst.GetStoragePoolVolume(pool, "custom", name)
	exists := err == nil
	// volatile.idmap.* stay: they say the files are already shifted to
	// the instances' ID map; without them LXD shifts the copy again when
	// an instance attaches it, and PostgreSQL finds its data owned by
	// nobody.
	cfg := map[string]string{}
	for k, val := range vol.Config {
		if !strings.HasPrefix(k, "snapshots.") {
			cfg[k] = val
		}
	}
	cfg[KeyReplicaOf] = from
	vol.Config = cfg
	op, err := dst.CopyStoragePoolVolume(pool, src, pool, *vol, &lxd.StoragePoolVolumeCopyArgs{
		Name: name, Mode: "relay", VolumeOnly: true, Refresh: exists})
	if err == nil {
		err = op.Wait()
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("copy volume %s: %w", name, err)
	}
	cur, etag, err := dst.GetStoragePoolVolume(pool, "custom", name)
	if err != nil {
		return fmt.Errorf("replica %s: %w", name, err)
	}
	put := cur.Writable()
	for k := range put.Config {
		if strings.HasPrefix(k, "snapshots.") {
			delete(put.Config, k)
		}
	}
	maps.Copy(put.Config, map[string]string{KeyReplicaOf: from, KeyReplicaInstance: instance,
		KeyReplicaRefreshed: at.UTC().Format(time.RFC3339Nano)})
	if err := dst.UpdateStoragePoolVolume(pool, "custom", name, put, etag); err != nil {
		return fmt.Errorf("label replica %s: %w", name, err)
	}
	return nil
}

// Lost is an instance of a lost member and what its replica holds.
type Lost struct {
	Project, Instance string
	Volumes           []string
	pools             []string // each volume's pool
	// Replica is the member holding a replica of its volumes, "" when
	// there is none or some volume LXD knows has none (the instance comes
	// back without its data); Refreshed is when the oldest of them was.
	Replica   string
	Refreshed time.Time
	Missing   []string // volumes without a replica, when LXD still knows them
}

// LostWith lists the instances of member and their replicas. The member
// may be dead: LXD then lists its instances by name only (no config, no
// devices), so the replicas are found by their labels (the member and the
// instance they copy); an instance none names comes back empty.
func LostWith(c lxd.InstanceServer, member string) ([]Lost, error) {
	all, err := c.GetInstancesAllProjects(api.InstanceTypeAny)
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	pools, err := c.GetStoragePoolNames()
	if err != nil {
		return nil, fmt.Errorf("list storage pools: %w", err)
	}
	have := map[string]map[[2]string][]api.StorageVolume{} // project -> replicas
	var out []Lost
	for _, in := range all {
		if in.Location != member {
			continue
		}
		if have[in.Project] == nil {
			if have[in.Project], err = replicas(c, in.Project, pools); err != nil {
				return nil, err
			}
		}
		l := Lost{Project: in.Project, Instance: in.Name}
		for k, rvs := range have[in.Project] {
			for _, rv := range rvs {
				if rv.Config[KeyReplicaOf] != member || rv.Config[KeyReplicaInstance] != in.Name || rv.Location == member {
					continue
				}
				at, err := time.Parse(time.RFC3339Nano, rv.Config[KeyReplicaRefreshed])
				if err != nil || (l.Replica != "" && rv.Location != l.Replica) {
					continue
				}
				l.Replica = rv.Location
				l.Volumes = append(l.Volumes, k[1])
				l.pools = append(l.pools, k[0])
				if l.Refreshed.IsZero() || at.Before(l.Refreshed) {
					l.Refreshed = at
				}
			}
		}
		// The instance's own volumes, when LXD still knows its devices.
		for _, v := range instanceVolumes(in) {
			if !slices.Contains(l.Volumes, v[1]) {
				l.Missing = append(l.Missing, v[1])
			}
		}
		if len(l.Missing) > 0 {
			l.Replica, l.Refreshed, l.Volumes, l.pools = "", time.Time{}, nil, nil
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b Lost) int { return cmp.Compare(a.Project+"/"+a.Instance, b.Project+"/"+b.Instance) })
	return out, nil
}

// Promote makes the replicas of lost instances their volumes (their
// replica labels removed), once the lost member is out of the cluster:
// the next deploy then creates each instance on the replica's member, with
// that data.
//
// Soon after the lost member left, LXD's database may still answer "Failed
// to begin transaction ... receive: header: EOF" while another member
// takes its role over, even once every member is listed online: each
// volume is tried again until promoteBound (a volume that is gone is not).
func Promote(ctx context.Context, c lxd.InstanceServer, lost []Lost) error {
	var errs []error
	for _, l := range lost {
		if l.Replica == "" {
			continue
		}
		tc := c.UseProject(l.Project).UseTarget(l.Replica)
		for i, name := range l.Volumes {
			p := l.pools[i]
			promote := func() error {
				cur, etag, err := tc.GetStoragePoolVolume(p, "custom", name)
				if err != nil {
					return fmt.Errorf("replica %s/%s on %s: %w", l.Project, name, l.Replica, err)
				}
				put := cur.Writable()
				delete(put.Config, KeyReplicaOf)
				delete(put.Config, KeyReplicaInstance)
				delete(put.Config, KeyReplicaRefreshed)
				if err := tc.UpdateStoragePoolVolume(p, "custom", name, put, etag); err != nil {
					return fmt.Errorf("promote replica %s/%s on %s: %w", l.Project, name, l.Replica, err)
				}
				return nil
			}
			deadline := time.Now().Add(promoteBound)
			err := promote()
			for err != nil && !api.StatusErrorCheck(err, http.StatusNotFound) && time.Now().Before(deadline) {
				select {
				case <-ctx.Done():
					return errors.Join(append(errs, err, ctx.Err())...)
				case <-time.After(2 * time.Second):
				}
				err = promote()
			}
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// promoteBound bounds the retries of one replica's promotion.
const promoteBound = 2 * time.Minute
