package deploy

import (
	"fmt"
	"net"
	"net/url"
	"strconv"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/recipes"
)

// LinkPortBase is the first port of the www → btcpay links: deployment i of
// the recipe uses LinkPortBase+i, so deployments sharing a member differ.
const LinkPortBase = 18080

// linkDevice names a link's device on both instances.
const linkDevice = "btcpay-link"

// linkPort is the link port of deployment d.
func linkPort(r *recipes.Recipe, d recipes.Deployment) int {
	for i, x := range r.Deployments {
		if x.Project() == d.Project() {
			return LinkPortBase + i
		}
	}
	return LinkPortBase
}

// link lets the www instance's reverse proxy reach BTCPay on whichever
// member each runs, without instance networking: every member's bridge is
// its own (same subnet, no route between them), so the link is two LXD
// proxy devices. On btcpay, the member's address:port leads to the
// instance's port 80; on www, the instance's own port leads there (the
// stack maps the BTCPay host name to the instance with host-gateway).
// btcpayAddr is the address of btcpay's member. Without both instances
// there is nothing to link.
func link(specs []InstanceSpec, btcpayAddr string, port int) {
	var www, btcpay *InstanceSpec
	for i := range specs {
		switch specs[i].Name {
		case "www":
			www = &specs[i]
		case "btcpay":
			btcpay = &specs[i]
		}
	}
	if www == nil || btcpay == nil {
		return
	}
	hop := "tcp:" + net.JoinHostPort(btcpayAddr, strconv.Itoa(port))
	btcpay.Devices[linkDevice] = map[string]string{"type": "proxy", "bind": "host",
		"listen": hop, "connect": "tcp:127.0.0.1:80"}
	www.Devices[linkDevice] = map[string]string{"type": "proxy", "bind": "instance",
		"listen": "tcp:0.0.0.0:" + strconv.Itoa(port), "connect": hop}
}

// memberAddress is the address other members reach member on (from its
// cluster URL); a standalone server is its own loopback.
func memberAddress(c lxd.InstanceServer, member string) (string, error) {
	if member == "" {
		return "127.0.0.1", nil
	}
	m, _, err := c.GetClusterMember(member)
	if err != nil {
		return "", fmt.Errorf("cluster member %s: %w", member, err)
	}
	u, err := url.Parse(m.URL)
	if err != nil || u.Hostname() == "" {
		return "", fmt.Errorf("cluster member %s: no address in its URL %q", member, m.URL)
	}
	return u.Hostname(), nil
}
