package registry

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// Nodes that pin the cluster certificate replicate over TLS; a host with
// another certificate can neither join nor talk to a node.
func TestPinnedTLS(t *testing.T) {
	testenv.Short(t)
	cert, parsed := selfSigned(t, "cluster")
	pinned := PinnedTLS(cert, parsed)
	n1 := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t), TLS: pinned})
	join := []string{n1.cfg.Address}
	n2 := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t), Join: join, TLS: pinned})
	n3 := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t), Join: join, TLS: pinned})
	if err := n3.reg.PutHost(opCtx(t), Host{Name: "h3", Address: "10.0.0.13:8443", State: "member"}); err != nil {
		t.Fatal(err)
	}
	wantHost(t, n1.reg, "h3")
	wantHost(t, n2.reg, "h3")

	strangerCert, strangerParsed := selfSigned(t, "stranger")

	// A stranger that trusts the cluster's certificate but presents its own
	// is refused at the TLS layer.
	dial := PinnedTLS(strangerCert, parsed).Dial
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", n1.cfg.Address, dial)
	if err == nil {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Write([]byte("hello"))
		if err == nil {
			_, err = conn.Read(make([]byte, 1))
		}
		conn.Close()
	}
	// The node's TLS alert, not an EOF from dqlite after a handshake.
	if err == nil || !strings.Contains(err.Error(), "remote error: tls") {
		t.Errorf("a client with an unpinned certificate: %v, want a TLS alert from %s", err, n1.cfg.Address)
	}

	// A stranger node cannot join: Open waits and gives up at its deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	stranger := Config{Dir: t.TempDir(), Address: freeAddress(t), Join: join,
		TLS: PinnedTLS(strangerCert, strangerParsed, parsed), Logf: func(string, ...any) {}}
	if reg, err := Open(ctx, stranger); err == nil {
		reg.Close(ctx)
		t.Fatal("a node with an unpinned certificate joined")
	}
	if got := roles(t, n1.reg); strings.Count(got, "=voter") != 3 || strings.Contains(got, stranger.Address) {
		t.Errorf("members after the stranger's attempt: %s", got)
	}
}
