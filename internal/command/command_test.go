package command

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestOutput(t *testing.T) {
	out, err := Output(context.Background(), "sh", "-c", "echo hello; echo noise >&2")
	if err != nil || out != "hello" {
		t.Fatalf("Output = %q, %v", out, err)
	}
}

func TestFailureNamesToolAndStderr(t *testing.T) {
	_, err := Run(context.Background(), Cmd{Name: "sh", Args: []string{"-c", "echo 'E: Unable to locate package nosuch' >&2; exit 100"}})
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %T %v is not a *command.Error", err, err)
	}
	msg := err.Error()
	for _, want := range []string{"sh -c", "exit status 100", "E: Unable to locate package nosuch"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 100 {
		t.Errorf("exit code not reachable through the error: %v", err)
	}
}

func TestStderrIsTruncatedToItsTail(t *testing.T) {
	_, err := Run(context.Background(), Cmd{Name: "sh", Args: []string{"-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; echo THE-END >&2; exit 1"}})
	msg := err.Error()
	if len(msg) > stderrTail+200 || !strings.HasSuffix(msg, "THE-END") {
		t.Errorf("error is %d bytes, ends %q", len(msg), msg[len(msg)-20:])
	}
}

func TestMissingTool(t *testing.T) {
	_, err := Run(context.Background(), Cmd{Name: "ssbuild-no-such-tool"})
	if err == nil || !strings.Contains(err.Error(), "ssbuild-no-such-tool") || !errors.Is(err, exec.ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
}

func TestCancelStopsTheTool(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Run(ctx, Cmd{Name: "sleep", Args: []string{"30"}})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("tool not stopped on cancel")
	}
}
