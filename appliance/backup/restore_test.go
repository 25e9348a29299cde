package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"

	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/testdocker"
)

// A restored volume is what its service runs on afterwards: the service is
// stopped while its volume is put back and started after, so an app that
// reads its files when it starts (as Ghost or Gitea read their config and
// content) sees the restored ones, not what it read before the restore.
// A service of the instance whose volumes are not restored keeps running.
func TestRestoreVolumeRestartsItsService(t *testing.T) {
	dk := testdocker.Start(t)
	testdocker.ImportBusybox(t, dk.Client, "restore-test/busybox:1", "restore")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st := &stack.Stack{Project: "p-www", Instance: "www", Services: []stack.Service{
		{Name: "app", Image: "restore-test/busybox:1", Mounts: []stack.Mount{{Type: "volume", Source: "data", Target: "/data"}},
			Backup: &stack.Backup{Volumes: []stack.BackupPath{{Volume: "data", Path: "/"}}}},
		{Name: "other", Image: "restore-test/busybox:1"},
	}}
	// app copies its state where it keeps what it loaded at start.
	start := func(svc, cmd string, mounts ...mount.Mount) string {
		name := st.ContainerName(svc)
		created, err := dk.Client.ContainerCreate(ctx, &container.Config{Image: "restore-test/busybox:1", Cmd: []string{"sh", "-c", cmd}},
			&container.HostConfig{NetworkMode: "none", Mounts: mounts, Init: ptr(true)}, nil, nil, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := dk.Client.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		return created.ID
	}
	app := start("app", "mkdir -p /data; [ -e /data/state ] || echo before >/data/state; cp /data/state /loaded; exec sleep 1000",
		mount.Mount{Type: mount.TypeVolume, Source: st.VolumeName("data"), Target: "/data"})
	other := start("other", "exec sleep 1000")
	startedAt := func(id string) (string, bool) {
		insp, err := dk.Client.ContainerInspect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return insp.State.StartedAt, insp.State.Running
	}
	otherStarted, _ := startedAt(other)
	exec := func(id string, cmd ...string) string {
		s := &dbServer{t: t, c: dk.Client, id: id}
		out, errOut, code := s.exec(cmd...)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", cmd, code, errOut)
		}
		return strings.TrimSpace(out)
	}
	if got := exec(app, "cat", "/loaded"); got != "before" {
		t.Fatalf("app loaded %q at start", got)
	}

	// A backup of the volume as it was on the day: state "restored".
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "b")
	w, err := NewWriter(dir, Manifest{Deployment: "p", Project: "p", Created: time.Now().UTC()}, testKeys(t, "deployment secret"), []age.Recipient{id.Recipient()})
	if err != nil {
		t.Fatal(err)
	}
	it := Item{Kind: "volume", Instance: "www", Service: "app", Volume: "data", Path: "/", File: "www/app/app-data.tar.age"}
	if err := w.Add(it, func(out io.Writer) error {
		tw := tar.NewWriter(out)
		body := []byte("restored\n")
		if err := tw.WriteHeader(&tar.Header{Name: "./state", Mode: 0o644, Size: int64(len(body)), ModTime: time.Now()}); err != nil {
			return err
		}
		if _, err := tw.Write(body); err != nil {
			return err
		}
		return tw.Close()
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}

	var log bytes.Buffer
	if err := restoreInstance(ctx, dk.Client, st, dir, []age.Identity{id}, []Item{it}, progress.New(&log, progress.Plain)); err != nil {
		t.Fatalf("restore: %v\n%s", err, log.String())
	}
	if _, running := startedAt(app); !running {
		t.Fatalf("app is not running after the restore")
	}
	if got := exec(app, "cat", "/data/state"); got != "restored" {
		t.Errorf("the volume holds %q after the restore", got)
	}
	if got := exec(app, "cat", "/loaded"); got != "restored" {
		t.Errorf("app runs on what it loaded before the restore (%q): it was not restarted on the restored volume", got)
	}
	if s, running := startedAt(other); s != otherStarted || !running {
		t.Errorf("a service whose volumes are not restored was restarted (started %s, then %s)", otherStarted, s)
	}
	if !strings.Contains(log.String(), "stop p-www-app while its volumes are restored") {
		t.Errorf("the progress does not say app is stopped meanwhile:\n%s", log.String())
	}
}
