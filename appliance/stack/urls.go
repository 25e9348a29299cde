package stack

import (
	"github.com/sovereign-stack/ssbuild/recipes"
)

// SiteURL is one public address of a deployment and what serves it.
type SiteURL struct {
	Site    string `json:"site"`
	Service string `json:"service"` // ghost, nextcloud, gitea, nostr-relay, btcpay
	URL     string `json:"url"`
}

// URLs lists the addresses the deployment's www reverse proxy answers for,
// site by site: what `ssbuild show` prints. The demo stack serves plain
// HTTP, the sovereign stack HTTPS (wss for the relay).
func URLs(d recipes.Deployment) []SiteURL {
	scheme, ws := "https://", "wss://"
	if d.Stack == "demo" {
		scheme, ws = "http://", "ws://"
	}
	var out []SiteURL
	for _, s := range d.Sites {
		if s.Has("ghost") {
			out = append(out, SiteURL{s.Domain, "ghost", scheme + "www." + s.Domain + "/"})
			for _, l := range s.Languages[min(1, len(s.Languages)):] {
				out = append(out, SiteURL{s.Domain, "ghost", scheme + "www." + s.Domain + "/" + l + "/"})
			}
		}
		if s.Has("nextcloud") {
			out = append(out, SiteURL{s.Domain, "nextcloud", scheme + "nextcloud." + s.Domain + "/"})
		}
		if s.Has("gitea") {
			out = append(out, SiteURL{s.Domain, "gitea", scheme + "git." + s.Domain + "/"})
		}
		if s.Has("nostr-relay") {
			out = append(out, SiteURL{s.Domain, "nostr-relay", ws + "relay." + s.Domain + "/"})
		}
		if d.Instances.BTCPay.IsEnabled() {
			out = append(out, SiteURL{s.Domain, "btcpay", scheme + "btcpay." + s.Domain + "/"})
			for _, alt := range s.BTCPayAltNames {
				out = append(out, SiteURL{s.Domain, "btcpay", scheme + alt + "." + s.Domain + "/"})
			}
		}
	}
	return out
}
