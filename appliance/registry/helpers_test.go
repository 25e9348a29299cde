package registry

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// opTimeout bounds every registry call in the tests; it is longer than a
// failover, so a call that spans one still succeeds.
const opTimeout = 30 * time.Second

func opCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	t.Cleanup(cancel)
	return ctx
}

// freeAddress returns a loopback address with a port nothing listens on.
func freeAddress(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// requireDqlite skips a test in a build without dqlite, or fails it under
// CI, where the Makefile builds with it.
func requireDqlite(t testing.TB) {
	t.Helper()
	if withDqlite {
		return
	}
	if testenv.InCI() {
		t.Fatalf("CI=true but %v (scripts/install-deps.sh and the Makefile's GOFLAGS should provide it)", ErrNoDqlite)
	}
	t.Skip(ErrNoDqlite)
}

// testNode is one registry node a test started, in this process.
type testNode struct {
	cfg Config
	reg *Registry
}

// startNode opens a node and stops it when the test ends (Close, which
// hands over; the test's TempDir removes its files).
func startNode(t testing.TB, cfg Config) *testNode {
	t.Helper()
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	requireDqlite(t)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	reg, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open node %s: %v", cfg.Address, err)
	}
	n := &testNode{cfg: cfg, reg: reg}
	t.Cleanup(func() { n.stop(t) })
	return n
}

// stop closes the node gracefully (handover); a stopped node is skipped.
// The handover gets a short deadline: at the end of a test the others may
// be gone, and then there is no one to hand over to.
func (n *testNode) stop(t testing.TB) {
	if n.reg == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := n.reg.Close(ctx); err != nil {
		t.Logf("close %s: %v", n.cfg.Address, err)
	}
	n.reg = nil
}

// crash stops the node without handing over, as when its host dies.
func (n *testNode) crash(t testing.TB) {
	_ = n.reg.db.Close()
	if err := n.reg.node.close(); err != nil {
		t.Logf("stop %s: %v", n.cfg.Address, err)
	}
	n.reg = nil
}

// restart opens the node again on its directory and address.
func (n *testNode) restart(t testing.TB) {
	t.Helper()
	m := startNode(t, n.cfg)
	n.reg = m.reg
	m.reg = nil // n's own cleanup stops it
}

// The helper process: TestMain runs one registry node in a child process
// when the parent sets registryNodeEnv, so a test can SIGKILL a node the
// way a host dies (no Close, no handover, no flush beyond what dqlite did).
const registryNodeEnv = "SSBUILD_TEST_REGISTRY_NODE" // dir|address|join,join

func TestMain(m *testing.M) {
	if spec := os.Getenv(registryNodeEnv); spec != "" {
		os.Exit(runChildNode(spec))
	}
	os.Exit(m.Run())
}

// runChildNode opens the node, says "ready" on stdout and serves until
// killed. Each line on stdin is a host name to put, answered with "ok".
// It exits at the end of stdin, so it cannot outlive a test process that
// died before its cleanup ran.
func runChildNode(spec string) int {
	parts := strings.Split(spec, "|")
	cfg := Config{Dir: parts[0], Address: parts[1]}
	if parts[2] != "" {
		cfg.Join = strings.Split(parts[2], ",")
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	reg, err := Open(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		err := reg.PutHost(ctx, Host{Name: in.Text(), Address: "10.0.0.1:8443", State: "member"})
		cancel()
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Println("ok")
	}
	return 0
}

// childNode is a registry node in a child process.
type childNode struct {
	cfg   Config
	cmd   *exec.Cmd
	stdin *os.File
	out   *bufio.Scanner
}

// startChildNode starts a node in a child process and waits until it is
// ready. The test's cleanup kills it if the test did not.
func startChildNode(t testing.TB, cfg Config) *childNode {
	t.Helper()
	c := spawnChildNode(t, cfg)
	if line := c.readLine(t); line != "ready" {
		t.Fatalf("node %s in child process: got %q, want ready", cfg.Address, line)
	}
	return c
}

// spawnChildNode starts a node in a child process without waiting for it.
func spawnChildNode(t testing.TB, cfg Config) *childNode {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), registryNodeEnv+"="+cfg.Dir+"|"+cfg.Address+"|"+strings.Join(cfg.Join, ","))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = r
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	c := &childNode{cfg: cfg, cmd: cmd, stdin: w, out: bufio.NewScanner(stdout)}
	t.Cleanup(c.kill)
	return c
}

func (c *childNode) readLine(t testing.TB) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		if c.out.Scan() {
			got <- c.out.Text()
		}
		close(got)
	}()
	select {
	case line := <-got:
		return line
	case <-time.After(opTimeout + 5*time.Second):
		t.Fatalf("node %s in child process: no answer", c.cfg.Address)
		return ""
	}
}

// putHost asks the child to write a host.
func (c *childNode) putHost(t testing.TB, name string) {
	t.Helper()
	fmt.Fprintln(c.stdin, name)
	if line := c.readLine(t); line != "ok" {
		t.Fatalf("node %s in child process: put host %s: %s", c.cfg.Address, name, line)
	}
}

// kill ends the child with SIGKILL, as a host that loses power.
func (c *childNode) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	_ = c.cmd.Wait()
	c.stdin.Close()
}

// selfSigned makes a certificate like LXD's: self-signed, ECDSA P-384.
func selfSigned(t testing.TB, name string) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: parsed}, parsed
}
