package dockerpreload_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/sovereign-stack/ssbuild/images/dockerpreload"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/testdocker"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
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

// TestWrongPinRefused: a pin that matches neither the image ID nor a repo
// digest stops the save before anything is written.
func TestWrongPinRefused(t *testing.T) {
	a, ids := source(t)
	dir := filepath.Join(t.TempDir(), "images")
	wrong := "sha256:" + strings.Repeat("ab", 32)
	_, err := dockerpreload.Save(context.Background(), a.Client,
		[]dockerpreload.Image{{Ref: refOne, Digest: ids[refOne]}, {Ref: refTwo, Digest: wrong}}, dir, nil)
	if err == nil {
		t.Fatal("Save accepted a wrong pin")
	}
	for _, want := range []string{refTwo, wrong, ids[refTwo]} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Errorf("a refused save wrote %v", got)
	}
	if _, err := dockerpreload.ReadManifest(dir); err == nil {
		t.Error("a refused save left a manifest")
	}
}

// TestInterruptedSaveIsNotComplete: a save cancelled after its first archive
// leaves no manifest, also where an earlier save had left one.
func TestInterruptedSaveIsNotComplete(t *testing.T) {
	a, _ := source(t)
	dir := filepath.Join(t.TempDir(), "images")
	images := []dockerpreload.Image{{Ref: refOne}, {Ref: refTwo}}
	if _, err := dockerpreload.Save(context.Background(), a.Client, images, dir, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := &events{onDone: func(progress.Event) { cancel() }}
	_, err := dockerpreload.Save(ctx, a.Client, images, dir, progress.New(ev, progress.JSON))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Save after cancel: %v, want context canceled", err)
	}
	if _, err := dockerpreload.ReadManifest(dir); err == nil {
		t.Errorf("interrupted save left a manifest; directory holds %v", listDir(t, dir))
	}
	for _, name := range listDir(t, dir) {
		if strings.HasSuffix(name, ".partial") {
			t.Errorf("interrupted save left %s", name)
		}
	}
}

// TestPullFromUnreachableRegistry: an image the daemon lacks is pulled; with
// no registry there, the error names the image.
func TestPullFromUnreachableRegistry(t *testing.T) {
	testenv.Short(t)
	a := testdocker.Start(t)
	// Port 1 on loopback: nothing listens, the daemon's pull fails at once.
	ref := "127.0.0.1:1/ssbuild-test/absent:1"
	dir := filepath.Join(t.TempDir(), "images")
	_, err := dockerpreload.Save(context.Background(), a.Client, []dockerpreload.Image{{Ref: ref}}, dir, nil)
	if err == nil || !strings.Contains(err.Error(), ref) || !strings.Contains(err.Error(), "pull") {
		t.Fatalf("Save of an image on an unreachable registry: %v; want an error naming %s and the pull", err, ref)
	}
	t.Logf("error: %v", err)
	if got := listDir(t, dir); len(got) != 0 {
		t.Errorf("a failed save wrote %v", got)
	}
}

// TestCorruptedArchiveRefused: one flipped byte in an archive stops the load
// before the daemon gets it, naming the file; no stamp is written.
func TestCorruptedArchiveRefused(t *testing.T) {
	dir, _ := saved(t)
	m, err := dockerpreload.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, m.Images[1].File)
	b, err := os.ReadFile(bad)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(bad, b, 0o644); err != nil {
		t.Fatal(err)
	}
	d := testdocker.Start(t)
	ctx := context.Background()
	err = dockerpreload.LoadAll(ctx, d.Client, dir, nil)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "corrupted") {
		t.Fatalf("LoadAll with a corrupted archive: %v; want an error naming %s", err, bad)
	}
	if _, err := d.Client.ImageInspect(ctx, m.Images[1].Ref); err == nil {
		t.Errorf("%s was loaded from a corrupted archive", m.Images[1].Ref)
	}
	if _, err := os.Stat(filepath.Join(dir, dockerpreload.StampName)); err == nil {
		t.Error("stamp written although an image was refused")
	}
}

// TestLoadResumesAfterInterruption: a first boot cut off after the first
// image; the next run loads the rest, skipping what is in.
func TestLoadResumesAfterInterruption(t *testing.T) {
	dir, ids := saved(t)
	d := testdocker.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := &events{onDone: func(progress.Event) { cancel() }}
	if err := dockerpreload.LoadAll(ctx, d.Client, dir, progress.New(ev, progress.JSON)); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted LoadAll: %v, want context canceled", err)
	}
	bg := context.Background()
	if _, err := d.Client.ImageInspect(bg, refOne); err != nil {
		t.Fatalf("first image not loaded before the interruption: %v", err)
	}
	if _, err := d.Client.ImageInspect(bg, refTwo); err == nil {
		t.Fatal("second image loaded although LoadAll was cancelled before it")
	}
	if _, err := os.Stat(filepath.Join(dir, dockerpreload.StampName)); err == nil {
		t.Fatal("stamp written by an interrupted LoadAll")
	}

	var again events
	if err := dockerpreload.LoadAll(bg, d.Client, dir, progress.New(&again, progress.JSON)); err != nil {
		t.Fatalf("LoadAll after the interruption: %v", err)
	}
	for ref, id := range ids {
		if got, err := d.Client.ImageInspect(bg, ref); err != nil || got.ID != id {
			t.Errorf("%s after the re-run: %s (%v), want %s", ref, got.ID, err, id)
		}
	}
	if s := again.String(); !strings.Contains(s, refOne+": already loaded") || strings.Contains(s, "load docker image "+refOne) {
		t.Errorf("re-run did not skip %s:\n%s", refOne, s)
	}
	if _, err := os.Stat(filepath.Join(dir, dockerpreload.StampName)); err != nil {
		t.Errorf("no stamp after the re-run: %v", err)
	}
}

// TestManifestFileNamesStayInDir: a manifest cannot make LoadAll read
// outside its directory.
func TestManifestFileNamesStayInDir(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"../etc/passwd", "/etc/passwd", ".loaded", ""} {
		m := dockerpreload.Manifest{Version: 1, Images: []dockerpreload.Entry{{
			Ref: refOne, ImageID: "sha256:" + strings.Repeat("0", 64), File: name, SHA256: strings.Repeat("0", 64)}}}
		b, _ := json.Marshal(m)
		if err := os.WriteFile(filepath.Join(dir, dockerpreload.ManifestName), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := dockerpreload.ReadManifest(dir); err == nil || !strings.Contains(err.Error(), "bad file name") {
			t.Errorf("file %q: ReadManifest: %v, want bad file name", name, err)
		}
	}
}

// TestUnit: the unit runs once, after Docker, with the stamp as condition.
func TestUnit(t *testing.T) {
	u := dockerpreload.Unit("/usr/local/bin/ssbuild", dockerpreload.DefaultDir)
	for _, want := range []string{
		"Type=oneshot\n",
		"Requires=docker.service\n",
		"After=docker.service\n",
		"ConditionPathExists=!/var/lib/ssbuild/docker-images/.loaded\n",
		"ExecStart=/usr/local/bin/ssbuild " + dockerpreload.LoadCommand + " --dir /var/lib/ssbuild/docker-images\n",
		"WantedBy=multi-user.target\n",
	} {
		if !strings.Contains(u, want) {
			t.Errorf("unit lacks %q:\n%s", want, u)
		}
	}
	if strings.Contains(u, "@") {
		t.Errorf("unit has an unreplaced placeholder:\n%s", u)
	}
}

// TestSaveIsReproducible: saving the same images twice gives byte-identical
// archives and manifests, which reproducible base images build on.
func TestSaveIsReproducible(t *testing.T) {
	a, _ := source(t)
	images := []dockerpreload.Image{{Ref: refOne}, {Ref: refTwo}}
	var manifests [2][]byte
	for i := range manifests {
		dir := filepath.Join(t.TempDir(), "images")
		if _, err := dockerpreload.Save(context.Background(), a.Client, images, dir, nil); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, dockerpreload.ManifestName))
		if err != nil {
			t.Fatal(err)
		}
		manifests[i] = b // it holds every archive's sha256
	}
	if !bytes.Equal(manifests[0], manifests[1]) {
		t.Errorf("two saves differ:\n%s\n%s", manifests[0], manifests[1])
	}
}

// TestResaveReplaces: saving a smaller set into a used directory leaves only
// that set, and removes a stamp that would stop the unit from running.
func TestResaveReplaces(t *testing.T) {
	dir, _ := saved(t)
	if err := os.WriteFile(filepath.Join(dir, dockerpreload.StampName), []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := testdocker.Start(t)
	testdocker.ImportBusybox(t, a.Client, refTwo, "two")
	m, err := dockerpreload.Save(context.Background(), a.Client, []dockerpreload.Image{{Ref: refTwo}}, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{dockerpreload.ManifestName, m.Images[0].File}
	slices.Sort(want)
	if got := listDir(t, dir); !slices.Equal(got, want) {
		t.Errorf("directory holds %v, want %v", got, want)
	}
}

// TestPullAndPinByRepoDigest: an image the daemon lacks is pulled from its
// registry (one on loopback here), and a pin by its repo digest, or by its
// image ID, holds; the archive loads into a fresh daemon as the same image.
func TestPullAndPinByRepoDigest(t *testing.T) {
	testenv.Short(t)
	ctx := context.Background()
	reg := testdocker.StartRegistry(t)
	a := testdocker.Start(t)
	ref := reg + "/ssbuild-test/pushed:1"
	id := testdocker.ImportBusybox(t, a.Client, ref, "pushed")
	repoDigest := testdocker.Push(t, a.Client, ref)
	pin := repoDigest[strings.LastIndex(repoDigest, "@")+1:]
	if pin == id {
		t.Fatalf("repo digest %s equals the image ID: the test would not tell the two rules apart", pin)
	}

	empty := testdocker.Start(t)
	dir := filepath.Join(t.TempDir(), "images")
	var ev events
	m, err := dockerpreload.Save(ctx, empty.Client, []dockerpreload.Image{{Ref: ref, Digest: pin}}, dir, progress.New(&ev, progress.JSON))
	if err != nil {
		t.Fatalf("Save with a repo digest pin: %v", err)
	}
	if !strings.Contains(ev.String(), "not in the daemon, pulling it") {
		t.Errorf("Save did not report a pull:\n%s", ev.String())
	}
	if e := m.Images[0]; e.ImageID != id || e.RepoDigest != pin || e.Digest != pin {
		t.Errorf("manifest entry %+v: want image ID %s, repo digest and pin %s", e, id, pin)
	}
	// The same image, now local, pinned by its image ID instead.
	if _, err := dockerpreload.Save(ctx, empty.Client, []dockerpreload.Image{{Ref: ref, Digest: id}}, dir, nil); err != nil {
		t.Errorf("Save with an image ID pin: %v", err)
	}
	b := testdocker.Start(t)
	if err := dockerpreload.LoadAll(ctx, b.Client, dir, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Client.ImageInspect(ctx, ref); err != nil || got.ID != id {
		t.Errorf("%s in daemon B: %s (%v), want %s", ref, got.ID, err, id)
	}
}
