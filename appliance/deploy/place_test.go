package deploy

import (
	"strings"
	"testing"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/recipes"
)

func instance(project, name, member string) api.Instance {
	return api.Instance{Name: name, Project: project, Location: member,
		Config: map[string]string{keyDeployment: project}}
}

// TestChooseSpreadsAndKeepsWWWApart: a deployment's instances go to the
// least-loaded members, existing ones stay, and a second deployment's www
// never shares a member (and its ports 80 and 443) with the first's.
func TestChooseSpreadsAndKeepsWWWApart(t *testing.T) {
	members := []string{"h1", "h2", "h3"}
	specs := func(project string) []InstanceSpec {
		return []InstanceSpec{{Project: project, Name: "www"}, {Project: project, Name: "btcpay"}, {Project: project, Name: "clams"}}
	}
	first, err := choose(members, nil, nil, specs("a-mainnet"))
	if err != nil {
		t.Fatal(err)
	}
	if first["www"] != "h1" || first["btcpay"] != "h2" || first["clams"] != "h3" {
		t.Fatalf("first deployment placed %v, want one instance per member", first)
	}
	all := []api.Instance{instance("a-mainnet", "www", "h1"), instance("a-mainnet", "btcpay", "h2"), instance("a-mainnet", "clams", "h3"),
		instance("b-mainnet", "btcpay", "h3")} // b's btcpay exists already
	second, err := choose(members, all, nil, specs("b-mainnet"))
	if err != nil {
		t.Fatal(err)
	}
	if second["btcpay"] != "h3" {
		t.Errorf("b's existing btcpay moved to %s", second["btcpay"])
	}
	if second["www"] == "h1" {
		t.Errorf("b's www placed on h1, where a's www owns ports 80 and 443: %v", second)
	}

	all = append(all, instance("b-mainnet", "www", "h2"), instance("c-mainnet", "www", "h3"))
	_, err = choose(members, all, nil, specs("d-mainnet"))
	if err == nil || !strings.Contains(err.Error(), "no member is free for www of d-mainnet") || !strings.Contains(err.Error(), "a-mainnet on h1") {
		t.Errorf("a fourth www on three members: %v", err)
	}

	// A restore test's scratch copy: its www binds no port of its member,
	// so it fits where every member runs a www, and keeps no www away.
	scratch := Scratch(recipes.Deployment{Name: "a", Chain: "mainnet"}).Project()
	if !isScratchProject(scratch) || isScratchProject("a-mainnet") || isScratchProject("restore-test-mainnet") {
		t.Fatalf("isScratchProject(%s) false, or true for a live project", scratch)
	}
	where, err := choose(members, all, nil, specs(scratch))
	if err != nil || where["www"] == "" {
		t.Fatalf("the scratch copy of a on a cluster whose every member runs a www: %v, %v", where, err)
	}
	withScratch := append(all[:len(all)-1:len(all)-1], instance(scratch, "www", "h3"))
	if where, err := choose(members, withScratch, nil, specs("d-mainnet")); err != nil || where["www"] != "h3" {
		t.Errorf("a new www beside only a scratch copy's www on h3: %v, %v; want it placed there", where, err)
	}
}

// TestPlannerSeesEarlierDeployments: two new deployments planned in one
// run spread together, their www instances on different members.
func TestPlannerSeesEarlierDeployments(t *testing.T) {
	p := &planner{members: []string{"h1", "h2", "h3"}}
	a, err := p.place([]InstanceSpec{{Project: "a-regtest", Name: "www"}, {Project: "a-regtest", Name: "btcpay"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.place([]InstanceSpec{{Project: "b-regtest", Name: "www"}, {Project: "b-regtest", Name: "btcpay"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a["www"] == b["www"] {
		t.Errorf("both deployments' www planned on %s", a["www"])
	}
	if a["www"] != "h1" || a["btcpay"] != "h2" || b["www"] != "h3" || b["btcpay"] != "h1" {
		t.Errorf("placement a %v, b %v: want the least-loaded member each time (h1 h2, then h3 h1)", a, b)
	}
}

// TestChooseFollowsKeptVolumes: an instance coming back (after down, or
// after the recipe turned it off) goes to the member holding its volumes,
// not to the least-loaded one; with that member offline, it is an error.
func TestChooseFollowsKeptVolumes(t *testing.T) {
	members := []string{"h1", "h2", "h3"}
	specs := []InstanceSpec{{Project: "a-regtest", Name: "www"}, {Project: "a-regtest", Name: "btcpay"}}
	all := []api.Instance{instance("a-regtest", "www", "h1"), instance("x-regtest", "clams", "h2")}
	where, err := choose(members, all, map[string]string{"btcpay": "h2"}, specs)
	if err != nil {
		t.Fatal(err)
	}
	if where["btcpay"] != "h2" {
		t.Errorf("btcpay placed on %s, want h2 where its volumes are (h3 is less loaded)", where["btcpay"])
	}
	_, err = choose([]string{"h1", "h3"}, all, map[string]string{"btcpay": "h2"}, specs)
	if err == nil || !strings.Contains(err.Error(), "its volumes are on member h2, which is not online") {
		t.Errorf("btcpay's volumes on an offline member: %v", err)
	}
}

// TestChooseHonoursHost: after a fourth member joined, a new instance
// whose recipe names that host goes there even though another member is
// as empty; the existing ones stay, also one whose host now names another
// member (nothing running moves); a host that is not online, or whose www
// is another deployment's, is refused before anything changes, unless the
// instance's volumes are kept on an online member (its host was lost).
func TestChooseHonoursHost(t *testing.T) {
	members := []string{"h1", "h2", "h3", "h4"}
	all := []api.Instance{instance("a-regtest", "www", "h1"), instance("a-regtest", "btcpay", "h2")}
	specs := []InstanceSpec{{Project: "a-regtest", Name: "www"}, {Project: "a-regtest", Name: "btcpay", Host: "h3"},
		{Project: "a-regtest", Name: "clams", Host: "h4"}}
	where, err := choose(members, all, nil, specs)
	if err != nil {
		t.Fatal(err)
	}
	if where["clams"] != "h4" || where["www"] != "h1" || where["btcpay"] != "h2" {
		t.Errorf("placed %v; want clams on its host h4, www and btcpay where they run", where)
	}
	if where, err := choose(members, all, nil, specs[2:]); err != nil || where["clams"] != "h4" {
		t.Errorf("clams alone: %v, %v", where, err)
	}
	specs[2].Host = "h5"
	if _, err := choose(members, all, nil, specs); err == nil || !strings.Contains(err.Error(), "a-regtest/clams: its host h5 is not an online cluster member") {
		t.Errorf("clams on a host that is no member: %v", err)
	}
	specs[2].Host = "h2"
	if _, err := choose(members, all, map[string]string{"clams": "h3"}, specs); err == nil || !strings.Contains(err.Error(), "its volumes are on member h3") {
		t.Errorf("clams on h2 with its volumes kept on h3: %v", err)
	}
	// Its host lost (host replace removed h5): it comes back to its data.
	specs[2].Host = "h5"
	if where, err := choose(members, all, map[string]string{"clams": "h3"}, specs); err != nil || where["clams"] != "h3" {
		t.Errorf("clams pinned to the lost h5 with its volumes on h3: %v, %v; want h3", where, err)
	}
	_, err = choose(members, all, nil, []InstanceSpec{{Project: "b-regtest", Name: "www", Host: "h1"}})
	if err == nil || !strings.Contains(err.Error(), "already runs the www of a-regtest") {
		t.Errorf("b's www on a's www member: %v", err)
	}
}

// volumesLXD answers keptVolumes' two questions: the project exists, and
// its custom volumes with their members and labels.
type volumesLXD struct {
	lxd.InstanceServer
	vols []api.StorageVolume
}

func (f *volumesLXD) GetProject(string) (*api.Project, string, error) { return &api.Project{}, "", nil }
func (f *volumesLXD) UseProject(string) lxd.InstanceServer            { return f }
func (f *volumesLXD) GetStoragePoolVolumes(string) ([]api.StorageVolume, error) {
	return f.vols, nil
}

// TestKeptVolumesIgnoreReplicas: a replica of btcpay's volumes on
// another member (same name, labelled) never decides where btcpay comes
// back; once host replace promoted it (label removed), it does.
func TestKeptVolumesIgnoreReplicas(t *testing.T) {
	specs := []InstanceSpec{{Project: "a-regtest", Name: "btcpay", Volumes: []VolumeSpec{{Name: "btcpay-data"}}}}
	replica := api.StorageVolume{Name: "btcpay-data", Type: "custom", Location: "h3", Config: map[string]string{KeyReplicaOf: "h2"}}
	f := &volumesLXD{vols: []api.StorageVolume{{Name: "btcpay-data", Type: "custom", Location: "h2", Config: map[string]string{}}, replica}}
	kept, err := keptVolumes(f, "local", specs)
	if err != nil || kept["btcpay"] != "h2" {
		t.Errorf("kept volumes with a replica on h3: %v, %v; want btcpay on h2", kept, err)
	}
	f.vols = []api.StorageVolume{replica}
	if kept, _ := keptVolumes(f, "local", specs); kept["btcpay"] != "" {
		t.Errorf("an unpromoted replica placed btcpay on %s", kept["btcpay"])
	}
	f.vols[0].Config = map[string]string{}
	if kept, _ := keptVolumes(f, "local", specs); kept["btcpay"] != "h3" {
		t.Errorf("the promoted replica on h3: btcpay kept on %q", kept["btcpay"])
	}
}

// TestSnapshotConfig: LXD's schedule and expiry from the recipe's
// minutes and keep.
func TestSnapshotConfig(t *testing.T) {
	for _, c := range []struct {
		minutes, keep    int
		schedule, expiry string
	}{{15, 4, "*/15 * * * *", "60M"}, {1, 3, "*/1 * * * *", "3M"}, {60, 24, "0 * * * *", "1440M"}} {
		r := &recipes.Recipe{Backup: recipes.Backup{Snapshots: recipes.Snapshots{Minutes: c.minutes, Keep: c.keep}}}
		got := SnapshotConfig(r)
		if got["snapshots.schedule"] != c.schedule || got["snapshots.expiry"] != c.expiry {
			t.Errorf("minutes %d keep %d: %v, want %q and %q", c.minutes, c.keep, got, c.schedule, c.expiry)
		}
	}
}
