package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// Move is where one instance of a host that is being removed goes, with
// the custom volumes it uses (storage is local to each member: they are
// copied over, then deleted on the old member).
type Move struct {
	Project, Instance string
	To                string
	Running           bool
	Volumes           []VolumeRef
	Bytes             int64 // root disk and volumes, as LXD counts them
}

// VolumeRef is a custom volume on a pool.
type VolumeRef struct{ Pool, Name string }

// RemovalRefused lists why the other members cannot take a host's
// instances; nothing was changed.
type RemovalRefused struct{ Problems []string }

func (e *RemovalRefused) Error() string {
	return "the other members cannot take its instances: " + strings.Join(e.Problems, "; ")
}

// PlanRemoval says where each instance of member name goes: to the online
// member with the fewest instances that has room on each pool for its root
// disk and volumes, never a second deployment's www onto a member that has
// one (the deploy rule). It changes nothing.
func PlanRemoval(c lxd.InstanceServer, name string) ([]Move, error) {
	members, err := c.GetClusterMembers()
	if err != nil {
		return nil, fmt.Errorf("list members (GET /1.0/cluster/members): %w", err)
	}
	var targets []string
	found := false
	for _, m := range members {
		switch {
		case m.ServerName == name:
			found = true
		case m.Status == "Online":
			targets = append(targets, m.ServerName)
		}
	}
	if !found {
		return nil, fmt.Errorf("%s is not a member of this cluster", name)
	}
	insts, err := c.GetInstancesAllProjects(api.InstanceTypeAny)
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	count := map[string]int{}
	www := map[string]bool{}
	var mine []api.Instance
	for _, in := range insts {
		if in.Location == name {
			mine = append(mine, in)
			continue
		}
		count[in.Location]++
		if in.Name == "www" {
			www[in.Location] = true
		}
	}
	if len(mine) > 0 && len(targets) == 0 {
		return nil, &RemovalRefused{[]string{"no other member is online"}}
	}
	free := map[string]map[string]int64{} // member -> pool -> bytes free
	room := func(member, pool string) int64 {
		if free[member] == nil {
			free[member] = map[string]int64{}
		}
		if v, ok := free[member][pool]; ok {
			return v
		}
		v := PoolFree(c, member, pool)
		free[member][pool] = v
		return v
	}
	var moves []Move
	need := map[int]map[string]int64{} // move index -> pool -> bytes
	for _, in := range mine {
		mv, pools := PlanMove(c, in, name)
		need[len(moves)] = pools
		moves = append(moves, mv)
	}
	// The biggest first: they have the fewest places to go.
	order := make([]int, len(moves))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(moves[b].Bytes, moves[a].Bytes) })
	var problems []string
	for _, i := range order {
		mv := &moves[i]
		cands := slices.Clone(targets)
		slices.SortStableFunc(cands, func(a, b string) int { return cmp.Compare(count[a], count[b]) })
		var why []string
		for _, t := range cands {
			if mv.Instance == "www" && www[t] {
				why = append(why, t+" runs another deployment's www")
				continue
			}
			if short := NoRoom(t, need[i], room); len(short) > 0 {
				why = append(why, short...)
				continue
			}
			mv.To = t
			count[t]++
			if mv.Instance == "www" {
				www[t] = true
			}
			for pool, b := range need[i] {
				free[t][pool] -= b
			}
			break
		}
		if mv.To == "" {
			problems = append(problems, fmt.Sprintf("%s/%s: %s", mv.Project, mv.Instance, strings.Join(why, ", ")))
		}
	}
	if len(problems) > 0 {
		return moves, &RemovalRefused{problems}
	}
	return moves, nil
}

// PlanMove is the Move of instance in, on member from, with its custom
// volumes and how many bytes each pool holds of it (To left empty). It
// changes nothing.
func PlanMove(c lxd.InstanceServer, in api.Instance, from string) (Move, map[string]int64) {
	mv := Move{Project: in.Project, Instance: in.Name, Running: in.StatusCode == api.Running || in.StatusCode == api.Frozen}
	pools := map[string]int64{}
	pc := c.UseProject(in.Project)
	state, _, err := pc.GetInstanceState(in.Name)
	for dev, d := range in.ExpandedDevices {
		if d["type"] != "disk" || d["pool"] == "" {
			continue
		}
		if d["path"] == "/" {
			if err == nil {
				pools[d["pool"]] += state.Disk[dev].Usage
			}
			continue
		}
		if d["source"] == "" {
			continue
		}
		v := VolumeRef{Pool: d["pool"], Name: strings.TrimPrefix(d["source"], "custom/")}
		mv.Volumes = append(mv.Volumes, v)
		if st, err := pc.UseTarget(from).GetStoragePoolVolumeState(v.Pool, "custom", v.Name); err == nil && st.Usage != nil {
			pools[v.Pool] += int64(st.Usage.Used)
		}
	}
	for _, b := range pools {
		mv.Bytes += b
	}
	slices.SortFunc(mv.Volumes, func(a, b VolumeRef) int { return cmp.Compare(a.Pool+"/"+a.Name, b.Pool+"/"+b.Name) })
	return mv, pools
}

// PoolFree is how many bytes member has free on pool, as LXD says (-1
// when it cannot say: taken as no room).
func PoolFree(c lxd.InstanceServer, member, pool string) int64 {
	res, err := c.UseTarget(member).GetStoragePoolResources(pool)
	if err != nil {
		return -1
	}
	return int64(res.Space.Total) - int64(res.Space.Used)
}

// NoRoom says, per pool of need (bytes), where member lacks the room
// (free gives what it has: PoolFree, or a plan's running count); none
// when it has room on every pool.
func NoRoom(member string, need map[string]int64, free func(member, pool string) int64) []string {
	var short []string
	for _, pool := range slices.Sorted(maps.Keys(need)) {
		if r := free(member, pool); r < need[pool] {
			short = append(short, fmt.Sprintf("%s has %d bytes free on pool %s, needs %d", member, max(r, 0), pool, need[pool]))
		}
	}
	return short
}

// RemoveHost takes member name out of the cluster: its instances, stopped
// first, and their custom volumes move to the other members as
// PlanRemoval says (a running instance is started again there); then
// forget (when set) drops the host from whatever else knows it (the
// registry), and LXD removes the member. It refuses, before any change,
// when the others cannot take the instances. The host's own LXD must be up
// (its storage is local): a dead host is replaced instead.
func RemoveHost(ctx context.Context, c lxd.InstanceServer, name string, forget func(context.Context) error, log *progress.Reporter) error {
	log = cmp.Or(log, progress.Discard())
	moves, err := PlanRemoval(c, name)
	if err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	for _, mv := range moves {
		if err := MoveInstance(ctx, c, name, mv); err != nil {
			return fmt.Errorf("remove %s: move %s/%s to %s: %w", name, mv.Project, mv.Instance, mv.To, err)
		}
		log.Info("%s/%s moved from %s to %s (%d volumes)", mv.Project, mv.Instance, name, mv.To, len(mv.Volumes))
	}
	if forget != nil {
		if err := forget(ctx); err != nil {
			return fmt.Errorf("remove %s: %w", name, err)
		}
	}
	if err := c.DeleteClusterMember(name, false); err != nil && !api.StatusErrorCheck(err, http.StatusNotFound) {
		return fmt.Errorf("remove %s from the LXD cluster (DELETE /1.0/cluster/members/%s): %w", name, name, err)
	}
	log.Info("%s removed from the cluster", name)
	return nil
}

// MoveInstance moves one instance from member from to mv.To: stopped
// first when it runs, its custom volumes copied over (export and import),
// the instance moved, the old volumes deleted, then started there again
// when it ran. An interrupted run can be run again (it copies the volumes
// again).
func MoveInstance(ctx context.Context, c lxd.InstanceServer, from string, mv Move) error {
	pc := c.UseProject(mv.Project)
	if mv.Running {
		op, err := pc.UpdateInstanceState(mv.Instance, api.InstanceStatePut{Action: "stop", Timeout: 60, Force: true}, "")
		if err == nil {
			err = op.WaitContext(ctx)
		}
		if err != nil {
			return fmt.Errorf("stop: %w", err)
		}
	}
	src, dst := pc.UseTarget(from), pc.UseTarget(mv.To)
	for _, v := range mv.Volumes {
		// A copy there is older than the volume: the replica pass's, or
		// an interrupted run's (the instance may have run on since, on
		// the old member: reusing it would lose what it wrote). Copied
		// again.
		if _, _, err := dst.GetStoragePoolVolume(v.Pool, "custom", v.Name); err == nil {
			if err := dst.DeleteStoragePoolVolume(v.Pool, "custom", v.Name); err != nil {
				return fmt.Errorf("delete the older copy of %s/%s on %s: %w", v.Pool, v.Name, mv.To, err)
			}
		}
		if err := copyVolume(ctx, src, dst, v); err != nil {
			return fmt.Errorf("copy volume %s/%s: %w", v.Pool, v.Name, err)
		}
	}
	op, err := dst.MigrateInstance(mv.Instance, api.InstancePost{Name: mv.Instance, Migration: true})
	if err == nil {
		err = op.WaitContext(ctx)
	}
	if err != nil {
		return fmt.Errorf("move the instance: %w", err)
	}
	var errs []error
	for _, v := range mv.Volumes {
		if err := src.DeleteStoragePoolVolume(v.Pool, "custom", v.Name); err != nil && !api.StatusErrorCheck(err, http.StatusNotFound) {
			errs = append(errs, fmt.Errorf("delete the old volume %s/%s on %s: %w", v.Pool, v.Name, from, err))
		}
	}
	if mv.Running {
		op, err := pc.UpdateInstanceState(mv.Instance, api.InstanceStatePut{Action: "start", Timeout: -1}, "")
		if err == nil {
			err = op.WaitContext(ctx)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("start on %s: %w", mv.To, err))
		}
	}
	return errors.Join(errs...)
}

// copyVolume copies a custom volume from one member to another through a
// backup export and import: LXD 5.0 has no cluster-internal copy of a
// custom volume (cluster_internal_custom_volume_copy), and its copy
// between members over the network needs this client on the network.
// The tarball passes through a temporary file here.
func copyVolume(ctx context.Context, src, dst lxd.InstanceServer, v VolumeRef) (err error) {
	const backup = "ssbuild-host-remove"
	op, err := src.CreateStoragePoolVolumeBackup(v.Pool, v.Name, api.StoragePoolVolumeBackupsPost{
		Name: backup, ExpiresAt: time.Now().Add(24 * time.Hour), VolumeOnly: true})
	if err == nil {
		err = op.WaitContext(ctx)
	}
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer func() {
		if op, derr := src.DeleteStoragePoolVolumeBackup(v.Pool, v.Name, backup); derr == nil {
			_ = op.Wait()
		}
	}()
	f, err := os.CreateTemp("", "ssbuild-volume-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := src.GetStoragePoolVolumeBackupFile(v.Pool, v.Name, backup, &lxd.BackupFileRequest{BackupFile: f}); err != nil {
		return fmt.Errorf("download the export: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	op, err = dst.CreateStoragePoolVolumeFromBackup(v.Pool, lxd.StoragePoolVolumeBackupArgs{BackupFile: f, Name: v.Name})
	if err == nil {
		err = op.WaitContext(ctx)
	}
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	return nil
}

// The labels of a replica volume (appliance/deploy's replica pass makes
// them): a copy of an instance's custom volume on another member, under
// the same name.
const (
	KeyReplicaOf        = "user.ssbuild.replica-of"        // the member the original is on
	KeyReplicaInstance  = "user.ssbuild.replica-instance"  // the instance that uses the original
	KeyReplicaRefreshed = "user.ssbuild.replica-refreshed" // RFC 3339: the data is as of then
)

// ReplaceDead force-removes member name, which must be offline (dead, or
// being re-installed), from LXD after forget (when set) dropped it from
// the registry. Its instances and their volumes are lost with it: they are
// returned, for the caller to say so before (dry run: remove false) and to
// bring them up elsewhere (the next deploy creates them empty). The
// re-installed machine then joins as a new member, with the same stick.
func ReplaceDead(ctx context.Context, c lxd.InstanceServer, name string, remove bool, forget func(context.Context) error) (lost []string, err error) {
	m, _, err := c.GetClusterMember(name)
	if err != nil {
		return nil, fmt.Errorf("replace %s: %w", name, err)
	}
	if m.Status == "Online" {
		return nil, fmt.Errorf("replace %s: it is online: remove it with its instances instead (host remove), or wait until LXD sees it offline", name)
	}
	s := &Service{o: Options{Host: Host{LXD: c}}}
	lost = s.instancesOn(name)
	if !remove {
		return lost, nil
	}
	if forget != nil {
		if err := forget(ctx); err != nil {
			return lost, fmt.Errorf("replace %s: %w", name, err)
		}
	}
	// Soon after the member was lost (when it led LXD's database) LXD's
	// database calls may still fail while another member takes over
	// ("Failed to begin transaction ... receive: header: EOF"): the
	// removal is asked again until settleBound.
	for deadline := time.Now().Add(settleBound); ; {
		err := c.DeleteClusterMember(name, true)
		if err == nil || api.StatusErrorCheck(err, http.StatusNotFound) {
			break
		}
		if time.Now().After(deadline) {
			return lost, fmt.Errorf("replace %s: remove the member (DELETE /1.0/cluster/members/%s?force=1): %w", name, name, err)
		}
		select {
		case <-ctx.Done():
			return lost, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	if err := settle(ctx, c); err != nil {
		return lost, fmt.Errorf("replace %s: removed, but %w", name, err)
	}
	return lost, nil
}

// Settling after a forced removal: LXD then hands the lost member's
// database role to another member, and while it does its database calls
// can fail ("receive: header: EOF") and it may list every member offline.
const (
	settleFor   = 10 * time.Second // the same view this long
	settleBound = 3 * time.Minute
)

// settle waits until LXD has listed every member online, with the same
// database roles, for settleFor.
func settle(ctx context.Context, c lxd.InstanceServer) error {
	var last, seen string
	var since time.Time
	for deadline := time.Now().Add(settleBound); ; {
		view, err := membersView(c)
		switch {
		case err != nil:
			seen, since = "", time.Time{}
			last = err.Error()
		case view != seen:
			seen, since, last = view, time.Now(), view
		case time.Since(since) >= settleFor && !strings.Contains(view, "not online"):
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("LXD's members did not settle within %s (%s)", settleBound, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// membersView says each member's status and roles, in a comparable line.
func membersView(c lxd.InstanceServer) (string, error) {
	ms, err := c.GetClusterMembers()
	if err != nil {
		return "", err
	}
	var parts []string
	for _, m := range ms {
		state := "online"
		if m.Status != "Online" {
			state = "not online (" + m.Status + ")"
		}
		parts = append(parts, fmt.Sprintf("%s %s %s", m.ServerName, state, strings.Join(slices.Sorted(slices.Values(m.Roles)), "+")))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", "), nil
}
