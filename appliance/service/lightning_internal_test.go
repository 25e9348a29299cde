package service

import (
	"encoding/json"
	"testing"

	"github.com/canonical/lxd/shared/api"
)

// Only an instance start on this member is looked at; the project comes
// from the event, else from the source's query (an older LXD).
func TestStartedHere(t *testing.T) {
	event := func(location, project, action, source string) api.Event {
		md, _ := json.Marshal(api.EventLifecycle{Action: action, Source: source})
		return api.Event{Type: api.EventTypeLifecycle, Location: location, Project: project, Metadata: md}
	}
	for _, c := range []struct {
		name string
		e    api.Event
		want instanceRef
		ok   bool
	}{
		{"started here", event("host1", "demo-regtest", "instance-started", "/1.0/instances/btcpay?project=demo-regtest"), instanceRef{"demo-regtest", "btcpay"}, true},
		{"restarted here", event("host1", "demo-regtest", "instance-restarted", "/1.0/instances/btcpay"), instanceRef{"demo-regtest", "btcpay"}, true},
		{"project from the source", event("host1", "", "instance-started", "/1.0/instances/www?project=demo-regtest"), instanceRef{"demo-regtest", "www"}, true},
		{"standalone LXD", event("", "p", "instance-started", "/1.0/instances/btcpay"), instanceRef{"p", "btcpay"}, true},
		{"another member", event("host2", "demo-regtest", "instance-started", "/1.0/instances/btcpay"), instanceRef{}, false},
		{"stopped", event("host1", "demo-regtest", "instance-stopped", "/1.0/instances/btcpay"), instanceRef{}, false},
		{"a snapshot", event("host1", "demo-regtest", "instance-started", "/1.0/instances/btcpay/snapshots/snap0"), instanceRef{}, false},
		{"no project", event("host1", "", "instance-started", "/1.0/instances/btcpay"), instanceRef{}, false},
	} {
		got, ok := startedHere(c.e, "host1")
		if got != c.want || ok != c.ok {
			t.Errorf("%s: got %+v, %v; want %+v, %v", c.name, got, ok, c.want, c.ok)
		}
	}
}
