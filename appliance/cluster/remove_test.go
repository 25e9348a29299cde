package cluster

import (
	"errors"
	"slices"
	"strings"
	"testing"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"
)

// placeLXD is the part of LXD PlanRemoval reads: members, instances with
// their root disk usage, and each member's free space on the pool.
type placeLXD struct {
	lxd.InstanceServer
	members []api.ClusterMember
	insts   []api.Instance
	free    map[string]uint64 // member -> free bytes on pool "local"
	target  string
}

func (f *placeLXD) GetClusterMembers() ([]api.ClusterMember, error) { return f.members, nil }
func (f *placeLXD) GetInstancesAllProjects(api.InstanceType) ([]api.Instance, error) {
	return f.insts, nil
}
func (f *placeLXD) UseProject(string) lxd.InstanceServer { return f }
func (f *placeLXD) UseTarget(t string) lxd.InstanceServer {
	c := *f
	c.target = t
	return &c
}
func (f *placeLXD) GetInstanceState(string) (*api.InstanceState, string, error) {
	return &api.InstanceState{Disk: map[string]api.InstanceStateDisk{"root": {Usage: 100}}}, "", nil
}
func (f *placeLXD) GetStoragePoolResources(string) (*api.ResourcesStoragePool, error) {
	return &api.ResourcesStoragePool{Space: api.ResourcesStoragePoolSpace{Total: f.free[f.target] + 1000, Used: 1000}}, nil
}

func inst(project, name, member string) api.Instance {
	return api.Instance{Name: name, Project: project, Location: member, StatusCode: api.Running,
		ExpandedDevices: map[string]map[string]string{"root": {"type": "disk", "path": "/", "pool": "local"}}}
}

// TestPlanRemoval: instances go to the least loaded member with room,
// never a second www onto one member; when no member can take one, the
// plan is refused naming the instance and why for each member (here:
// host1 runs a www, host2 has no room).
func TestPlanRemoval(t *testing.T) {
	f := &placeLXD{
		members: []api.ClusterMember{{ServerName: "host1", Status: "Online"}, {ServerName: "host2", Status: "Online"},
			{ServerName: "host3", Status: "Online"}, {ServerName: "host4", Status: "Offline"}},
		insts: []api.Instance{inst("a", "www", "host1"), inst("a", "btcpay", "host1"), inst("b", "btcpay", "host2"),
			inst("b", "www", "host3"), inst("c", "www", "host3"), inst("c", "btcpay", "host3")},
		free: map[string]uint64{"host1": 1000, "host2": 50, "host4": 1000},
	}
	moves, err := PlanRemoval(f, "host3")
	var refused *RemovalRefused
	if !errors.As(err, &refused) {
		t.Fatalf("remove host3 with two www and room on host2 only: %v (%+v)", err, moves)
	}
	msg := err.Error()
	if len(refused.Problems) != 2 {
		t.Errorf("refusal %q: want b/www and c/www", msg)
	}
	for _, p := range refused.Problems {
		for _, want := range []string{"www: ", "host1 runs another deployment's www", "host2 has 50 bytes free on pool local, needs 100"} {
			if !strings.Contains(p, want) {
				t.Errorf("refusal %q lacks %q", p, want)
			}
		}
	}
	// With one www on host3 only, it goes to host2 (no www), btcpay to
	// the least loaded member that has room; the offline host4 takes none.
	f.insts = f.insts[:5]
	f.insts[4] = inst("c", "btcpay", "host3")
	f.free["host2"] = 1000
	moves, err = PlanRemoval(f, "host3")
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	to := map[string]string{}
	for _, mv := range moves {
		to[mv.Project+"/"+mv.Instance] = mv.To
	}
	if to["b/www"] != "host2" || to["c/btcpay"] == "" || to["c/btcpay"] == "host4" || len(moves) != 2 {
		t.Errorf("plan %v", to)
	}
	if _, err := PlanRemoval(f, "host9"); err == nil || !strings.Contains(err.Error(), "not a member") {
		t.Errorf("an unknown host: %v", err)
	}
}

// TestNoRoom: each pool where the member lacks room is named with both
// figures, in pool order; an unknown free space (-1) is no room, said as 0.
func TestNoRoom(t *testing.T) {
	free := map[string]int64{"a": 100, "b": 10, "c": -1}
	got := NoRoom("host2", map[string]int64{"c": 1, "a": 100, "b": 11}, func(member, pool string) int64 {
		if member != "host2" {
			t.Fatalf("asked about %s", member)
		}
		return free[pool]
	})
	want := []string{"host2 has 10 bytes free on pool b, needs 11", "host2 has 0 bytes free on pool c, needs 1"}
	if !slices.Equal(got, want) {
		t.Errorf("NoRoom: %q, want %q", got, want)
	}
	if got := NoRoom("host2", map[string]int64{"a": 100}, func(string, string) int64 { return 100 }); len(got) != 0 {
		t.Errorf("room enough: %q", got)
	}
}
