package dockerpreload_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/sovereign-stack/ssbuild/images/dockerpreload"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/testdocker"
	"github.com/sovereign-stack/ssbuild/internal/testenv"
)

const (
	refOne = "ssbuild-test/one:1"
	refTwo = "ssbuild-test/two:1"
)

// source starts daemon A with the two test images and returns it with
// their image IDs.
func source(t *testing.T) (*testdocker.Daemon, map[string]string) {
	t.Helper()
	testenv.Short(t)
	a := testdocker.Start(t)
	return a, map[string]string{
		refOne: testdocker.ImportBusybox(t, a.Client, refOne, "one"),
		refTwo: testdocker.ImportBusybox(t, a.Client, refTwo, "two"),
	}
}

// saved saves both test images from a fresh daemon A into a new directory.
func saved(t *testing.T) (string, map[string]string) {
	t.Helper()
	a, ids := source(t)
	dir := filepath.Join(t.TempDir(), "images")
	// Recipe order is not the manifest's order: refs are sorted.
	if _, err := dockerpreload.Save(context.Background(), a.Client, []dockerpreload.Image{{Ref: refTwo}, {Ref: refOne, Digest: ids[refOne]}}, dir, nil); err != nil {
		t.Fatal(err)
	}
	return dir, ids
}

// events records the progress a run reports, and calls onDone (when set) at
// each finished task.
type events struct {
	mu     sync.Mutex
	list   []progress.Event
	onDone func(progress.Event)
}

func (e *events) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		var ev progress.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return 0, err
		}
		e.mu.Lock()
		e.list = append(e.list, ev)
		e.mu.Unlock()
		if ev.Event == "done" && e.onDone != nil {
			e.onDone(ev)
		}
	}
	return len(p), nil
}

func (e *events) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var s []string
	for _, ev := range e.list {
		s = append(s, ev.Event+" "+ev.Task+" "+ev.Message)
	}
	return strings.Join(s, "\n")
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestSaveLoadRun is the whole path: two images saved from daemon A, loaded
// into a fresh daemon B on "first boot", a container run from one of them;
// a second boot does nothing.
func TestSaveLoadRun(t *testing.T) {
	ctx := context.Background()
	dir, ids := saved(t)

	// The manifest lists both, sorted, with what sha256sum says of each file.
	m, err := dockerpreload.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Images) != 2 || m.Images[0].Ref != refOne || m.Images[1].Ref != refTwo {
		t.Fatalf("manifest images %+v, want %s then %s", m.Images, refOne, refTwo)
	}
	files := []string{dockerpreload.ManifestName}
	for _, e := range m.Images {
		if e.ImageID != ids[e.Ref] {
			t.Errorf("%s: manifest image ID %s, daemon A has %s", e.Ref, e.ImageID, ids[e.Ref])
		}
		path := filepath.Join(dir, e.File)
		out, err := command.Output(ctx, "sha256sum", path)
		if err != nil {
			t.Fatal(err)
		}
		if sum := strings.Fields(out)[0]; sum != e.SHA256 {
			t.Errorf("%s: sha256sum %s, manifest %s", e.File, sum, e.SHA256)
		}
		if st, err := os.Stat(path); err != nil || st.Size() != e.Size {
			t.Errorf("%s: size %v (%v), manifest %d", e.File, st.Size(), err, e.Size)
		}
		// A user would list it with tar: a docker save archive.
		if list, err := command.Output(ctx, "tar", "-tf", path); err != nil || !strings.Contains(list, "manifest.json") {
			t.Errorf("%s: tar -tf: %v\n%s", e.File, err, list)
		}
		files = append(files, e.File)
	}
	if m.Images[0].Digest != ids[refOne] || m.Images[1].Digest != "" {
		t.Errorf("manifest pins %q, %q; want the recipe's: %q and none", m.Images[0].Digest, m.Images[1].Digest, ids[refOne])
	}
	if got := listDir(t, dir); len(got) != len(files) {
		t.Errorf("directory holds %v, want only %v", got, files)
	}

	b := testdocker.Start(t)
	var ev events
	if err := dockerpreload.LoadAll(ctx, b.Client, dir, progress.New(&ev, progress.JSON)); err != nil {
		t.Fatal(err)
	}
	for ref, id := range ids {
		got, err := b.Client.ImageInspect(ctx, ref)
		if err != nil {
			t.Fatalf("daemon B after LoadAll: %v", err)
		}
		if got.ID != id {
			t.Errorf("daemon B has %s as %s, daemon A had %s", ref, got.ID, id)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, dockerpreload.StampName)); err != nil {
		t.Errorf("no stamp after LoadAll: %v", err)
	}
	if out := run(t, b, refTwo, "cat", "/marker"); out != "two\n" {
		t.Errorf("container from %s printed %q, want %q", refTwo, out, "two\n")
	}

	// Second boot: nothing is read or loaded, even with the archives gone.
	for _, e := range m.Images {
		os.Remove(filepath.Join(dir, e.File))
	}
	var again events
	if err := dockerpreload.LoadAll(ctx, b.Client, dir, progress.New(&again, progress.JSON)); err != nil {
		t.Fatalf("second LoadAll: %v", err)
	}
	if s := again.String(); s != "" {
		t.Errorf("second LoadAll reported work:\n%s", s)
	}
}

// run runs /bin/busybox args... in a container from ref on d, without a
// network, and returns what it printed.
func run(t *testing.T, d *testdocker.Daemon, ref string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := d.Client.ContainerCreate(ctx, &container.Config{Image: ref, Cmd: append([]string{"/bin/busybox"}, args...)},
		&container.HostConfig{NetworkMode: "none"}, nil, nil, "")
	if err != nil {
		t.Fatalf("create container from %s: %v", ref, err)
	}
	defer d.Client.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
	if err := d.Client.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatalf("start container from %s: %v", ref, err)
	}
	waitC, errC := d.Client.ContainerWait(ctx, c.ID, container.WaitConditionNotRunning)
	select {
	case w := <-waitC:
		if w.StatusCode != 0 {
			t.Errorf("container from %s exited %d", ref, w.StatusCode)
		}
	case err := <-errC:
		t.Fatalf("wait for container from %s: %v", ref, err)
	}
	logs, err := d.Client.ContainerLogs(ctx, c.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, &stderr, logs); err != nil {
		t.Fatal(err)
	}
	if stderr.Len() > 0 {
		t.Logf("container stderr: %s", stderr.String())
	}
	return stdout.String()
}
