package testbed_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// A test starts three hosts, talks to each one's LXD, runs a service inside
// a host and calls it from another host, as the machines would.
func ExampleNew() {
	var t *testing.T                                 // the test's own
	bed := testbed.New(t, testbed.Options{Hosts: 3}) // closed when the test ends
	h1, h2 := bed.Hosts[0], bed.Hosts[1]

	server, _, err := h1.LXD().GetServer() // over host1's unix socket
	if err != nil {
		t.Fatal(err)
	}
	_ = server.Environment.ServerName // "host1"

	// The service under test, inside host2's namespaces (LXD_DIR is set).
	svc := h2.Command(context.Background(), "/path/to/ssbuild", "appliance", "--config", h2.Dir+"/appliance.yaml")
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	defer svc.Process.Kill() // Close also kills whatever is left in the host

	// An HTTP client whose connections start on host1.
	client := &http.Client{Transport: &http.Transport{DialContext: h1.DialContext}}
	_, _ = client.Get("http://" + h2.Address.String() + ":9000/status")

	// Host loss and return.
	_ = h2.KillLXD()
	_ = h2.Disconnect(context.Background())
	_ = h2.Reconnect(context.Background())
	_ = h2.StartLXD(context.Background())
}
