package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// A restore test's scratch copy has its own name and project, every
// instance of the live deployment (www too) but none binding a port of its
// member, no pinned MAC; a scratch deploy refuses the live deployment, and
// a plain deploy refuses the scratch copy (it would start its Lightning
// node).
func TestScratchCopy(t *testing.T) {
	r, err := recipes.Open("default")
	if err != nil {
		t.Fatal(err)
	}
	live := r.Deployments[0]
	live.Instances.BTCPay.MAC = "02:00:00:00:00:01"
	live.Instances.WWW.MAC = "02:00:00:00:00:02"
	s := Scratch(live)
	if s.Name != live.Name+"-restore-test" || s.Project() == live.Project() || !IsScratch(s) || IsScratch(live) {
		t.Fatalf("scratch copy %s (project %s) of %s", s.Name, s.Project(), live.Name)
	}
	if live.Instances.BTCPay.MAC == "" || live.Instances.WWW.MAC == "" {
		t.Error("Scratch changed the live deployment")
	}
	if !s.Instances.WWW.IsEnabled() || !s.Instances.BTCPay.IsEnabled() || s.Instances.BTCPay.MAC != "" || s.Instances.WWW.MAC != "" {
		t.Errorf("scratch instances: www %v mac %q, btcpay %v mac %q; want both, without their MACs",
			s.Instances.WWW.IsEnabled(), s.Instances.WWW.MAC, s.Instances.BTCPay.IsEnabled(), s.Instances.BTCPay.MAC)
	}
	tg := Target{Pool: "ss-base", Driver: "zfs", Network: "lxdbr0"}
	specs, err := Specs(r, s, tg)
	if err != nil {
		t.Fatal(err)
	}
	var www *InstanceSpec
	for i, sp := range specs {
		if sp.Name == "www" {
			www = &specs[i]
		}
		if sp.Project != s.Project() {
			t.Errorf("scratch instance %s in project %s", sp.Name, sp.Project)
		}
		for _, v := range sp.Volumes {
			if v.Name != sp.Name+"-"+v.Kind {
				t.Errorf("scratch volume %s", v.Name) // in the scratch project, beside nothing of the live one's
			}
		}
		for name, dev := range sp.Devices {
			if dev["type"] == "proxy" || dev["hwaddr"] != "" {
				t.Errorf("scratch instance %s has device %s %v; want no proxy device and no pinned MAC", sp.Name, name, dev)
			}
		}
	}
	if www == nil {
		t.Fatalf("the scratch copy's specs lack www: %+v", specs)
	}
	if err := checkScratch([]recipes.Deployment{s}, specs); err != nil {
		t.Errorf("the scratch copy's specs: %v", err)
	}
	// The guard stays: the live specs (www's ports 80 and 443), and the
	// link a plain deploy adds (btcpay listening on its member), are
	// refused.
	liveSpecs, _ := Specs(r, live, tg)
	if err := checkScratch([]recipes.Deployment{s}, liveSpecs); err == nil || !strings.Contains(err.Error(), "would bind a port of its member") {
		t.Errorf("specs binding host ports: %v; want a refusal", err)
	}
	linked, _ := Specs(r, s, tg)
	link(linked, "10.0.0.2", LinkPortBase)
	if err := checkScratch([]recipes.Deployment{s}, linked); err == nil || !strings.Contains(err.Error(), "btcpay would bind a port of its member (device btcpay-link)") {
		t.Errorf("scratch specs with the www → btcpay link: %v; want a refusal", err)
	}
	if err := checkScratch([]recipes.Deployment{live}, specs); err == nil || !strings.Contains(err.Error(), "not a restore test's scratch copy") {
		t.Errorf("a scratch deploy of the live deployment: %v; want a refusal", err)
	}
	if got, err := FindDeployment(r, s.Project()); err != nil || got.Name != s.Name || !got.Instances.WWW.IsEnabled() {
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

// The scratch copy's stacks of the default (mainnet) deployment: www's
// Caddy asks no ACME CA (Caddy itself adapts the rendered Caddyfile: every
// TLS policy's issuer is its local CA, where the live one's are ACME and
// ZeroSSL), publishes no port and has only internal networks, and keeps
// every backed-up service; btcpay has no Lightning node and is otherwise
// the live one's.
func TestScratchStacks(t *testing.T) {
	r, err := recipes.Open("default")
	if err != nil {
		t.Fatal(err)
	}
	live := r.Deployments[0]
	if live.Chain != "mainnet" {
		t.Fatalf("the default deployment's chain is %s; the test wants mainnet (automatic certificates)", live.Chain)
	}
	s := Scratch(live)
	render := func(d recipes.Deployment, role string, scratch bool) *stack.Stack {
		t.Helper()
		names, err := stack.SecretNames(d)
		if err != nil {
			t.Fatal(err)
		}
		vals := map[string]string{}
		for _, n := range names {
			vals[n] = "scratch-test-" + n
		}
		opts := stack.DefaultOptions
		opts.Scratch = scratch
		st, err := stack.RenderWith(r, d, role, secrets.New(d.Project(), vals), opts)
		if err != nil {
			t.Fatal(err)
		}
		if scratch {
			scratchStack(st)
		}
		return st
	}
	liveWWW, www := render(live, "www", false), render(s, "www", true)
	for _, svc := range www.Services {
		if len(svc.Ports) > 0 {
			t.Errorf("scratch www service %s publishes %v", svc.Name, svc.Ports)
		}
	}
	for _, n := range www.Networks {
		if !n.Internal {
			t.Errorf("scratch www network %s is not internal", n.Name)
		}
	}
	backedUp := func(st *stack.Stack) (n int) {
		for _, svc := range st.Services {
			if svc.Backup != nil {
				n++
			}
		}
		return n
	}
	if len(www.Services) != len(liveWWW.Services) || backedUp(www) != backedUp(liveWWW) || backedUp(www) == 0 {
		t.Errorf("scratch www has %d services (%d backed up), the live one %d (%d)", len(www.Services), backedUp(www), len(liveWWW.Services), backedUp(liveWWW))
	}
	if c := liveWWW.Service("caddy"); c == nil || len(c.Ports) != 2 {
		t.Errorf("scratchStack changed the live www's caddy: %+v", c)
	}
	btcpay, liveBTCPay := render(s, "btcpay", true), render(live, "btcpay", false)
	if btcpay.LightningService() != nil || liveBTCPay.LightningService() == nil || len(btcpay.Services) != len(liveBTCPay.Services)-1 {
		t.Errorf("scratch btcpay has %d services (Lightning %v), the live one %d", len(btcpay.Services), btcpay.LightningService() != nil, len(liveBTCPay.Services))
	}

	testenv.RequireTools(t, "caddy")
	issuers := func(st *stack.Stack) []string {
		t.Helper()
		c := st.Service("caddy")
		if c == nil || len(c.Files) == 0 {
			t.Fatalf("www has no caddy with its Caddyfile: %+v", c)
		}
		f := filepath.Join(t.TempDir(), "Caddyfile")
		if err := os.WriteFile(f, []byte(c.Files[0].Content), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("caddy", "adapt", "--adapter", "caddyfile", "--config", f)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "XDG_DATA_HOME="+t.TempDir(), "XDG_CONFIG_HOME="+t.TempDir())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("caddy adapt: %v", err)
		}
		var cfg struct {
			Apps struct {
				TLS struct {
					Automation struct {
						Policies []struct {
							Issuers []struct {
								Module string `json:"module"`
							} `json:"issuers"`
						} `json:"policies"`
					} `json:"automation"`
				} `json:"tls"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("caddy adapt's JSON: %v", err)
		}
		var mods []string
		for _, p := range cfg.Apps.TLS.Automation.Policies {
			if len(p.Issuers) == 0 {
				mods = append(mods, "default (acme)") // Caddy's default issuers are ACME CAs
			}
			for _, is := range p.Issuers {
				mods = append(mods, is.Module)
			}
		}
		return mods
	}
	got := issuers(www)
	if len(got) == 0 {
		t.Errorf("the scratch Caddyfile has no TLS policy: Caddy's default is automatic ACME certificates")
	}
	for _, m := range got {
		if m != "internal" {
			t.Errorf("the scratch www's Caddy would use issuer %s; want only its local CA (internal)", m)
		}
	}
	if got := strings.Join(issuers(liveWWW), " "); !strings.Contains(got, "acme") {
		t.Errorf("the live www's issuers: %s; want ACME (else this test proves nothing)", got)
	}
}
