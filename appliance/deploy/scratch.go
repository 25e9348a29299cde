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

// publishesHostPorts says whether instance role of deployment d binds
// ports of its member: the live www (Specs gives it the proxy devices of
// ports 80 and 443), never a scratch copy's, which serves no public domain.
func publishesHostPorts(d recipes.Deployment, role string) bool {
	return role == "www" && !IsScratch(d)
}

// Scratch is the scratch copy of deployment d a restore test deploys: its
// own name (so project, volumes and secrets), every instance the live one
// has, but without a pinned MAC (the live instance holds it on the same
// network) or a pinned host. Deploy it with Options.Scratch, which keeps
// it off the outside and the live deployment: no instance binds a port of
// its member (Specs), no www → btcpay link is made (its btcpay side would
// listen on the member's address), the www stack gets no certificate from
// an ACME CA and reaches nothing beyond its instance (scratchStack), and
// no Lightning node runs.
func Scratch(d recipes.Deployment) recipes.Deployment {
	s := d
	s.Name = d.Name + ScratchSuffix
	for _, role := range s.Instances.Roles() {
		in := *role.Instance
		in.MAC, in.Host = "", ""
		*role.Instance = in
	}
	return s
}

// IsScratch says whether d is a scratch copy (by its name).
func IsScratch(d recipes.Deployment) bool { return strings.HasSuffix(d.Name, ScratchSuffix) }

// isScratchProject says whether an LXD project is a scratch copy's
// (<name>-restore-test-<chain>; a chain has no dash).
func isScratchProject(project string) bool {
	i := strings.LastIndex(project, "-")
	return i > 0 && strings.HasSuffix(project[:i], ScratchSuffix)
}

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

// scratchStack is what a scratch copy runs of an instance's rendered
// stack (rendered with stack.Options.Scratch, so the www proxy takes its
// certificates from its own local CA, never from an ACME CA for the live
// domains). It never has the Lightning node: a second copy of a node with
// the same seed online could lose the channels' funds, so a scratch copy
// never has one (nor a generation of it). The www stack, whose restored
// Ghost, Nextcloud and Gitea would otherwise act on the outside with the
// live site's data (scheduled posts and newsletters, push mirrors; the
// live domains resolve to the live site), publishes no port and has only
// internal networks: its services reach each other and nothing else.
func scratchStack(s *stack.Stack) {
	var keep []stack.Service
	for _, svc := range s.Services {
		if svc.Lightning != nil {
			continue
		}
		if s.Instance == "www" {
			svc.Ports = nil
		}
		keep = append(keep, svc)
	}
	s.Services = keep
	if s.Instance == "www" {
		for i := range s.Networks {
			s.Networks[i].Internal = true
		}
	}
}
