// Package command is the one place where ssbuild runs external tools
// (debootstrap, mksquashfs, sgdisk, qemu-img, ...). Every failure names the
// tool, its arguments and the tail of what it wrote to stderr, so the user
// sees why a step failed without re-running it by hand.
package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
)

// stderrTail is how much of a failed tool's stderr goes into the error:
// enough for the real message, not a whole build log.
const stderrTail = 4096

// Cmd describes one run of an external tool.
type Cmd struct {
	Name  string    // program, looked up in PATH
	Args  []string  // arguments, without the program
	Dir   string    // working directory; empty means the current one
	Env   []string  // extra KEY=value entries added to the inherited environment
	Unset []string  // variables left out of the inherited environment
	Stdin io.Reader // optional
	// Stdout receives the tool's standard output. When nil, it is captured
	// and returned by Run.
	Stdout io.Writer
	// Log, when set, also receives stderr as it is written (for progress).
	Log io.Writer
}

// Error is returned when a tool could not start or exited non-zero.
type Error struct {
	Cmd    string // program and arguments as one line
	Err    error  // the exec error (exit status, not found, killed)
	Stderr string // tail of the tool's stderr
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s: %v", e.Cmd, e.Err)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Run runs c and returns its standard output when c.Stdout is nil. The
// context ends the tool (SIGKILL) when cancelled.
func Run(ctx context.Context, c Cmd) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.Name, c.Args...)
	cmd.Dir = c.Dir
	if len(c.Env) > 0 || len(c.Unset) > 0 {
		cmd.Env = nil
		for _, kv := range cmd.Environ() {
			if !slices.Contains(c.Unset, strings.SplitN(kv, "=", 2)[0]) {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, c.Env...)
	}
	cmd.Stdin = c.Stdin
	var stdout bytes.Buffer
	if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	} else {
		cmd.Stdout = &stdout
	}
	stderr := &tailBuffer{max: stderrTail}
	if c.Log != nil {
		cmd.Stderr = io.MultiWriter(stderr, c.Log)
	} else {
		cmd.Stderr = stderr
	}
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%v)", ctxErr, err)
		}
		return stdout.Bytes(), &Error{Cmd: line(c), Err: err, Stderr: stderr.String()}
	}
	return stdout.Bytes(), nil
}

// Output runs a tool and returns its trimmed standard output.
func Output(ctx context.Context, name string, args ...string) (string, error) {
	out, err := Run(ctx, Cmd{Name: name, Args: args})
	return strings.TrimSpace(string(out)), err
}

func line(c Cmd) string {
	return strings.TrimSpace(c.Name + " " + strings.Join(c.Args, " "))
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }
