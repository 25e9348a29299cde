package deploy

import (
	"fmt"
	"strings"

	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// ScratchSuffix ends the name of a restore test's scratch copy of a
// deployment: <name>-restore-test, so its own LXD project
// (<name>-restore-test-<chain>) and its own secrets.
const ScratchSuffix = "-restore-test"

// publishesHostPorts says whether an instance role binds ports of its
// member (Specs gives www the proxy devices of ports 80 and 443): a
// scratch copy leaves it out, so it serves no public domain.
func publishesHostPorts(role string) bool { return role == "www" }

// Scratch is the scratch copy of deployment d a restore test deploys: its
// own name (so project and secrets), without the instances that bind host
// ports (it serves no domain; without www there is no www → btcpay link
// either), no pinned MAC (the live instance holds it on the same network)
// and no pinned host. Deploy it with Options.Scratch, which also leaves
// out every Lightning node.
func Scratch(d recipes.Deployment) recipes.Deployment {
	s := d
	s.Name = d.Name + ScratchSuffix
	off := false
	for _, role := range s.Instances.Roles() {
		in := *role.Instance
		in.MAC, in.Host = "", ""
		if publishesHostPorts(role.Name) {
			in.Enabled = &off
		}
		*role.Instance = in
	}
	return s
}

// IsScratch says whether d is a scratch copy (by its name).
func IsScratch(d recipes.Deployment) bool { return strings.HasSuffix(d.Name, ScratchSuffix) }

// checkScratch refuses, before any change, a scratch deploy of a
// deployment that is not a scratch copy, or whose instances would bind a
// port of their member.
func checkScratch(deps []recipes.Deployment, specs []InstanceSpec) error {
	for _, d := range deps {
		if !IsScratch(d) {
			return fmt.Errorf("deploy: %s is not a restore test's scratch copy (its name lacks %s): refused", d.Name, ScratchSuffix)
		}
	}
	for _, s := range specs {
		for name, dev := range s.Devices {
			if dev["type"] == "proxy" && dev["bind"] == "host" {
				return fmt.Errorf("deploy: scratch copy %s/%s would bind a port of its member (device %s): refused", s.Project, s.Name, name)
			}
		}
	}
	return nil
}

// withoutLightning drops the stack's Lightning node: a second copy of a
// node with the same seed online could lose the channels' funds, so a
// scratch copy never has one (nor a generation of it).
func withoutLightning(s *stack.Stack) {
	var keep []stack.Service
	for _, svc := range s.Services {
		if svc.Lightning == nil {
			keep = append(keep, svc)
		}
	}
	s.Services = keep
}
