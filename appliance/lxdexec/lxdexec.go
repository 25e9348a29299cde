// Package lxdexec runs a command in an LXD instance and collects its
// output, the way `lxc exec` does.
package lxdexec

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"time"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"
)

// Run runs command in the instance and returns its stdout, stderr and
// exit code. err is about the exec itself (the instance is missing or
// stopped, LXD failed), not about the command's exit code.
//
// LXD 5.0.2 under load sometimes loses the PID of the process it started
// ("Failed to retrieve PID of executing child process"). Its forkexec
// may have started the command by then, so Run tries again (a few times,
// with a short pause) and a command may run twice: pass only commands safe
// to repeat (reads, checks, idempotent writes).
func Run(c lxd.InstanceServer, instance string, command ...string) (stdout, stderr string, code int, err error) {
	var out, errOut bytes.Buffer
	code, err = retried(func() (int, error) {
		out.Reset()
		errOut.Reset()
		return execOnce(c, instance, command, nil, &out, &errOut)
	}, func() bool { return true })
	if err != nil {
		return "", "", -1, err
	}
	return out.String(), errOut.String(), code, nil
}

// Stream runs command in the instance with stdin on its standard input
// and its stdout copied to stdout as it comes; it returns the end of its
// stderr and its exit code. As Run, it tries again when LXD lost the PID
// of the process it started, but only while nothing reached stdout (the
// whole stdin is sent again): pass only read-only commands.
func Stream(c lxd.InstanceServer, instance string, command []string, stdin []byte, stdout io.Writer) (stderr string, code int, err error) {
	cw := &countWriter{w: stdout}
	var errOut *tailWriter
	code, err = retried(func() (int, error) {
		errOut = &tailWriter{max: stderrTail}
		// The reader's EOF closes the command's standard input.
		return execOnce(c, instance, command, bytes.NewReader(stdin), cw, errOut)
	}, func() bool { return cw.n == 0 })
	if err != nil {
		return "", -1, err
	}
	return string(errOut.b), code, nil
}

// notStarted is LXD's error for an exec whose process it could not start.
const notStarted = "Failed to retrieve PID of executing child process"

// retried runs once again, a few times with a short pause, while it fails
// with notStarted and again says it may.
func retried(once func() (int, error), again func() bool) (int, error) {
	for attempt := 1; ; attempt++ {
		code, err := once()
		if err == nil || attempt == 5 || !again() || !strings.Contains(err.Error(), notStarted) {
			return code, err
		}
		time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// execOnce runs the command once; stdin nil gives it none.
func execOnce(c lxd.InstanceServer, instance string, command []string, stdin io.Reader, stdout, stderr io.Writer) (code int, err error) {
	done := make(chan bool)
	op, err := c.ExecInstance(instance, api.InstanceExecPost{Command: command, WaitForWS: true},
		&lxd.InstanceExecArgs{Stdin: stdin, Stdout: stdout, Stderr: stderr, DataDone: done})
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		return -1, fmt.Errorf("exec %s in %s: %w", strings.Join(command, " "), instance, err)
	}
	<-done // the output is complete only once the data streams are
	if rc, ok := op.Get().Metadata["return"].(float64); ok {
		return int(rc), nil
	}
	return -1, nil
}

// stderrTail is how much of a streamed command's stderr Stream returns:
// its end says why it failed.
const stderrTail = 2048

// tailWriter keeps the last max bytes written to it and never holds
// more: a streamed command may write without end to its stderr (tar
// warning about every file of a large tree).
type tailWriter struct {
	max int
	b   []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= t.max {
		t.b = append(t.b[:0], p[len(p)-t.max:]...)
		return n, nil
	}
	if over := len(t.b) + len(p) - t.max; over > 0 {
		t.b = t.b[:copy(t.b, t.b[over:])]
	}
	t.b = append(t.b, p...)
	return n, nil
}
