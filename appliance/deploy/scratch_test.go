package deploy

import (
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/recipes"
)

// A restore test's scratch copy has its own name and project, no instance
// binding a port of its member, no pinned MAC; a scratch deploy refuses
// the live deployment, and a plain deploy refuses the scratch copy (it
// would start its Lightning node).
func TestScratchCopy(t *testing.T) {
	r, err := recipes.Open("default")
	if err != nil {
		t.Fatal(err)
	}
	live := r.Deployments[0]
	live.Instances.BTCPay.MAC = "02:00:00:00:00:01"
	s := Scratch(live)
	if s.Name != live.Name+"-restore-test" || s.Project() == live.Project() || !IsScratch(s) || IsScratch(live) {
		t.Fatalf("scratch copy %s (project %s) of %s", s.Name, s.Project(), live.Name)
	}
	if !live.Instances.WWW.IsEnabled() || live.Instances.BTCPay.MAC == "" {
		t.Error("Scratch changed the live deployment")
	}
	if s.Instances.WWW.IsEnabled() || !s.Instances.BTCPay.IsEnabled() || s.Instances.BTCPay.MAC != "" {
		t.Errorf("scratch instances: www %v, btcpay %v mac %q; want www left out, btcpay without its MAC",
			s.Instances.WWW.IsEnabled(), s.Instances.BTCPay.IsEnabled(), s.Instances.BTCPay.MAC)
	}
	tg := Target{Pool: "ss-base", Driver: "zfs", Network: "lxdbr0"}
	specs, err := Specs(r, s, tg)
	if err != nil {
		t.Fatal(err)
	}
	link(specs, "10.0.0.2", LinkPortBase)
	if err := checkScratch([]recipes.Deployment{s}, specs); err != nil {
		t.Errorf("the scratch copy's specs: %v", err)
	}
	liveSpecs, _ := Specs(r, live, tg)
	if err := checkScratch([]recipes.Deployment{s}, liveSpecs); err == nil || !strings.Contains(err.Error(), "would bind a port of its member") {
		t.Errorf("specs binding host ports: %v; want a refusal", err)
	}
	if err := checkScratch([]recipes.Deployment{live}, specs); err == nil || !strings.Contains(err.Error(), "not a restore test's scratch copy") {
		t.Errorf("a scratch deploy of the live deployment: %v; want a refusal", err)
	}
	if got, err := FindDeployment(r, s.Project()); err != nil || got.Name != s.Name || got.Instances.WWW.IsEnabled() {
		t.Errorf("FindDeployment(%s) = %s, %v; want the scratch copy (for down --purge)", s.Project(), got.Name, err)
	}
	o := Options{Recipe: r, Deployments: []string{s.Name}}
	if _, err := o.selected(); err == nil || !strings.Contains(err.Error(), "only ssbuild backup test deploys it") {
		t.Errorf("a plain deploy of a scratch copy: %v; want a refusal", err)
	}
	o.Scratch = true
	if deps, err := o.selected(); err != nil || len(deps) != 1 || deps[0].Name != s.Name {
		t.Errorf("a scratch deploy of the scratch copy selects %v, %v", deps, err)
	}
}
