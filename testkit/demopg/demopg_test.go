package demopg_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/sovereign-stack/ssbuild/testkit/demopg"
	"github.com/sovereign-stack/ssbuild/testkit/testdocker"
)

// TestDatabaseAnswers: a container of the image starts a new cluster with
// the given password and database, psql writes and reads a row, and
// pg_dump's output holds it.
func TestDatabaseAnswers(t *testing.T) {
	d := testdocker.Start(t)
	start := time.Now()
	demopg.Import(t, d.Client)
	t.Logf("image built and imported in %s", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := d.Client
	created, err := c.ContainerCreate(ctx, &container.Config{Image: demopg.Ref,
		Env: []string{"POSTGRES_PASSWORD=not-a-default-123", "POSTGRES_DB=demo"}},
		&container.HostConfig{NetworkMode: "none", Init: ptr(true)}, nil, nil, "demopg-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.ContainerRemove(context.Background(), created.ID, container.RemoveOptions{Force: true}) })
	if err := c.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	exec := func(cmd ...string) (string, error) {
		ex, err := c.ContainerExecCreate(ctx, created.ID, container.ExecOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
		if err != nil {
			return "", err
		}
		att, err := c.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
		if err != nil {
			return "", err
		}
		defer att.Close()
		var out, errOut bytes.Buffer
		stdcopy.StdCopy(&out, &errOut, att.Reader)
		insp, err := c.ContainerExecInspect(ctx, ex.ID)
		if err == nil && insp.ExitCode != 0 {
			err = &exitError{code: insp.ExitCode, out: errOut.String()}
		}
		return out.String(), err
	}
	var last error
	for range 60 {
		if _, last = exec("pg_isready", "-h", "/tmp", "-U", "postgres"); last == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if last != nil {
		logs, _ := c.ContainerLogs(ctx, created.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
		var b bytes.Buffer
		if logs != nil {
			stdcopy.StdCopy(&b, &b, logs)
		}
		t.Fatalf("the database did not become ready: %v\n%s", last, b.String())
	}
	if _, err := exec("psql", "-h", "/tmp", "-U", "postgres", "-d", "demo", "-v", "ON_ERROR_STOP=1", "-c",
		"CREATE TABLE notes (body text); INSERT INTO notes VALUES ('written by the test');"); err != nil {
		t.Fatal(err)
	}
	out, err := exec("psql", "-h", "/tmp", "-U", "postgres", "-d", "demo", "-tA", "-c", "SELECT body FROM notes")
	if err != nil || strings.TrimSpace(out) != "written by the test" {
		t.Fatalf("select: %q, %v", out, err)
	}
	dump, err := exec("pg_dump", "-h", "/tmp", "-U", "postgres", "demo")
	if err != nil || !strings.Contains(dump, "written by the test") {
		t.Fatalf("pg_dump: %v; dump holds the row: %v", err, strings.Contains(dump, "written by the test"))
	}
	// The password is required over TCP.
	if _, err := exec("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "demo", "-w", "-c", "SELECT 1"); err == nil {
		t.Error("psql over TCP without the password was let in")
	}
}

type exitError struct {
	code int
	out  string
}

func (e *exitError) Error() string { return fmt.Sprintf("exit %d: %s", e.code, e.out) }

func ptr[T any](v T) *T { return &v }
