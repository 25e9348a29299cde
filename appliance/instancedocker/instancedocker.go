// Package instancedocker gives a Docker API client for the daemon inside an
// LXD instance. Every connection is an LXD exec of `docker system
// dial-stdio` in the instance (the Docker CLI's own stdio bridge, which the
// base image has), so it reaches an instance on any cluster member through
// the LXD API and its authentication, and no Docker socket is ever exposed
// on a host or the network.
package instancedocker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"
	"github.com/docker/docker/client"
)

// Client returns a Docker client for instance's daemon, reached through c
// (scoped to the instance's project), with the API version agreed with the
// daemon already: the client's lazy negotiation races when the first
// requests go out in parallel, and one may go out with a version the
// daemon refuses. Close it when done.
func Client(ctx context.Context, c lxd.InstanceServer, instance string) (*client.Client, error) {
	cli, err := client.NewClientWithOpts(
		// The host name is never resolved: every connection is dialled below.
		client.WithHost("http://docker"),
		client.WithDialContext(func(ctx context.Context, _, _ string) (net.Conn, error) {
			return Dial(ctx, c, instance)
		}),
		client.WithAPIVersionNegotiation(),
	)
	if err != nil {
		return nil, fmt.Errorf("docker client for instance %s: %w", instance, err)
	}
	ping, err := cli.Ping(ctx)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("docker in instance %s: %w", instance, err)
	}
	cli.NegotiateAPIVersionPing(ping)
	return cli, nil
}

// ready is what the exec prints before it becomes dial-stdio: reading it
// proves the process started, so an exec LXD failed to start (5.0.2 under
// load: "Failed to retrieve PID of executing child process") is retried
// before a request is sent into it.
const ready = "ssbuild-dial-stdio\n"

// Dial opens one byte stream to the Docker daemon of instance.
func Dial(ctx context.Context, c lxd.InstanceServer, instance string) (net.Conn, error) {
	var err error
	for attempt := 1; attempt <= 5; attempt++ {
		var cn net.Conn
		if cn, err = dialOnce(ctx, c, instance); err == nil {
			return cn, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
		}
	}
	return nil, err
}

func dialOnce(ctx context.Context, c lxd.InstanceServer, instance string) (net.Conn, error) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	cn := &conn{in: inW, out: outR, instance: instance}
	done := make(chan bool)
	op, err := c.ExecInstance(instance, api.InstanceExecPost{
		Command:   []string{"sh", "-c", "printf '" + strings.TrimSpace(ready) + "\\n' && exec docker system dial-stdio"},
		WaitForWS: true,
	}, &lxd.InstanceExecArgs{Stdin: inR, Stdout: outW, Stderr: &cn.stderr, DataDone: done})
	if err != nil {
		inW.Close()
		outW.Close()
		return nil, fmt.Errorf("instance %s: exec docker system dial-stdio: %w", instance, err)
	}
	go func() {
		<-done
		err := op.Wait()
		if err == nil {
			if rc, ok := op.Get().Metadata["return"].(float64); ok && rc != 0 {
				err = fmt.Errorf("docker system dial-stdio exited %d: %s", int(rc), strings.TrimSpace(cn.stderr.String()))
			}
		}
		if err != nil {
			err = fmt.Errorf("instance %s: %w", instance, err)
		} else {
			err = io.EOF
		}
		outW.CloseWithError(err)
		inR.CloseWithError(err)
	}()
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, len(ready))
		_, err := io.ReadFull(outR, buf)
		if err == nil && string(buf) != ready {
			err = fmt.Errorf("instance %s: unexpected start of the Docker stream %q", instance, buf)
		}
		got <- err
	}()
	select {
	case err = <-got:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		cn.Close()
		return nil, err
	}
	return cn, nil
}

// conn is the exec's stdin and stdout as a net.Conn. Deadlines are not
// supported (as with Docker's own command connections); contexts bound the
// requests instead.
type conn struct {
	in       *io.PipeWriter
	out      *io.PipeReader
	instance string
	stderr   lockedBuffer
	once     sync.Once
}

func (c *conn) Read(p []byte) (int, error)  { return c.out.Read(p) }
func (c *conn) Write(p []byte) (int, error) { return c.in.Write(p) }

// Close ends stdin (dial-stdio then closes its side to the daemon and
// exits) and stops reading.
func (c *conn) Close() error {
	c.once.Do(func() {
		c.in.Close()
		c.out.CloseWithError(net.ErrClosed)
	})
	return nil
}

func (c *conn) LocalAddr() net.Addr              { return addr("ssbuild") }
func (c *conn) RemoteAddr() net.Addr             { return addr(c.instance) }
func (c *conn) SetDeadline(time.Time) error      { return nil }
func (c *conn) SetReadDeadline(time.Time) error  { return nil }
func (c *conn) SetWriteDeadline(time.Time) error { return nil }
func (c *conn) CloseWrite() error                { return c.in.Close() }
func (c *conn) String() string                   { return "docker in " + c.instance }

type addr string

func (a addr) Network() string { return "lxd-exec" }
func (a addr) String() string  { return string(a) }

// lockedBuffer keeps the first KiB of stderr for the error message.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := 1024 - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
