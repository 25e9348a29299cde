package testbed

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"strings"

	"github.com/sovereign-stack/ssbuild/internal/command"
)

// pickSubnet picks a random /24 in 10.0.0.0/8 that no route or address on
// the machine overlaps, so a host's address never shadows a real network.
func pickSubnet(ctx context.Context) (netip.Prefix, error) {
	used, err := machinePrefixes(ctx)
	if err != nil {
		return netip.Prefix{}, err
	}
	for range 100 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + mrand.IntN(150)), byte(mrand.IntN(256)), 0}), 24)
		if !overlapsAny(p, used) {
			return p, nil
		}
	}
	return netip.Prefix{}, errors.New("no free /24 in 10.100.0.0-10.249.255.0: every candidate is routed on this machine")
}

func overlapsAny(p netip.Prefix, used []netip.Prefix) bool {
	for _, u := range used {
		if p.Overlaps(u) {
			return true
		}
	}
	return false
}

// machinePrefixes lists the IPv4 destinations of every route (all tables)
// and every address on the machine. Default routes are left out: they
// claim no subnet.
func machinePrefixes(ctx context.Context) ([]netip.Prefix, error) {
	routes, err := command.Output(ctx, "ip", "-4", "-o", "route", "show", "table", "all")
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	addrs, err := command.Output(ctx, "ip", "-4", "-o", "addr", "show")
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var out []netip.Prefix
	routeTypes := map[string]bool{"unicast": true, "local": true, "broadcast": true, "multicast": true,
		"unreachable": true, "prohibit": true, "blackhole": true, "throw": true, "anycast": true, "nat": true}
	for _, line := range strings.Split(routes, "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && routeTypes[f[0]] {
			f = f[1:]
		}
		if len(f) == 0 || f[0] == "default" {
			continue
		}
		if p, ok := parsePrefix(f[0]); ok {
			out = append(out, p)
		}
	}
	// "2: eth0    inet 192.0.2.2/24 brd ..."
	for _, line := range strings.Split(addrs, "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" {
				if p, ok := parsePrefix(f[i+1]); ok {
					out = append(out, p.Masked())
				}
			}
		}
	}
	return out, nil
}

func parsePrefix(s string) (netip.Prefix, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	return netip.Prefix{}, false
}

// createBridge makes the bed's bridge: up, no address, no IPv6 link-local,
// so the machine itself takes no part in the hosts' network.
func (b *Bed) createBridge(ctx context.Context) error {
	if _, err := command.Output(ctx, "ip", "link", "add", "name", b.Bridge, "type", "bridge"); err != nil {
		return fmt.Errorf("create bridge %s: %w", b.Bridge, err)
	}
	disableIPv6(b.Bridge)
	if _, err := command.Output(ctx, "ip", "link", "set", b.Bridge, "up"); err != nil {
		return fmt.Errorf("bring bridge %s up: %w", b.Bridge, err)
	}
	// With br_netfilter loaded (dockerd loads it and sets FORWARD to DROP),
	// traffic between bridge ports goes through iptables' FORWARD chain.
	if v, err := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil && strings.TrimSpace(string(v)) == "1" {
		rule := b.forwardRuleSpec()
		if _, err := command.Output(ctx, "iptables", append([]string{"-I"}, rule...)...); err != nil {
			return fmt.Errorf("allow forwarding on bridge %s (br_netfilter is loaded): %w", b.Bridge, err)
		}
		b.forwardRule = rule
	}
	return nil
}

// forwardRuleSpec is the FORWARD rule that lets the bed's bridge forward
// between its ports, named after the bed.
func (b *Bed) forwardRuleSpec() []string {
	return []string{"FORWARD", "-i", b.Bridge, "-o", b.Bridge, "-j", "ACCEPT",
		"-m", "comment", "--comment", "ssbuild testbed " + b.ID}
}

func (b *Bed) removeBridge(ctx context.Context) error {
	var errs []error
	if b.forwardRule != nil {
		if _, err := command.Output(ctx, "iptables", append([]string{"-D"}, b.forwardRule...)...); err != nil {
			errs = append(errs, fmt.Errorf("remove forwarding rule of bridge %s: %w", b.Bridge, err))
		} else {
			b.forwardRule = nil
		}
	}
	if linkExists(b.Bridge) {
		if _, err := command.Output(ctx, "ip", "link", "del", b.Bridge); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w", b.Bridge, err))
		}
	}
	return errors.Join(errs...)
}

// linkExists reports whether the machine's network namespace has the link.
func linkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}

// disableIPv6 keeps the kernel from giving a machine-side link an IPv6
// link-local address. Best effort: without IPv6 there is nothing to disable.
func disableIPv6(link string) {
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+link+"/disable_ipv6", []byte("1"), 0o644)
}
