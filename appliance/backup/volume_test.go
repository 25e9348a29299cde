package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"golang.org/x/sys/unix"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// volumeBed is a real directory tree backed up by AddVolume with the real
// find and tar, into one folder, with a files cache.
// testGroups are small groups, so the test trees (a few MiB) make several.
var testGroups = groupShape{bytes: 2 << 20, every: 128}

type volumeBed struct {
	t            *testing.T
	data, folder string
	cache        string
	keys         *Keys
	id           *age.X25519Identity
	n            int
	run          Runner
	lastVS       VolumeStats
	lastM        Manifest
}

const volItem = "inst/svc/data.tar.age"

func newVolumeBed(t *testing.T) *volumeBed {
	testenv.RequireRoot(t) // the reads are confined (volume.go): a mount namespace
	tmp := t.TempDir()
	id, _ := age.GenerateX25519Identity()
	b := &volumeBed{t: t, data: filepath.Join(tmp, "data"), folder: filepath.Join(tmp, "backups"),
		cache: filepath.Join(tmp, "cache"), keys: testKeys(t, "volume test secret"), id: id, run: LocalRunner{}}
	makeTree(t, b.data)
	return b
}

// makeTree writes folders, many small files and a few large ones,
// symlinks, an empty folder, a FIFO, odd modes and owners, and old mtimes.
func makeTree(t *testing.T, dir string) {
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for d := range 4 {
		sub := filepath.Join(dir, fmt.Sprintf("d%d", d), "inner")
		must(os.MkdirAll(sub, 0o755))
		for i := range 150 {
			p := filepath.Join(filepath.Dir(sub), fmt.Sprintf("f%03d.txt", i))
			if i%3 == 0 {
				p = filepath.Join(sub, fmt.Sprintf("g%03d.txt", i))
			}
			must(os.WriteFile(p, noise(uint64(d*1000+i), 1000+i*37), 0o644))
		}
	}
	for i := range 5 {
		must(os.WriteFile(filepath.Join(dir, "d1", fmt.Sprintf("mid%d.bin", i)), noise(uint64(50+i), 300<<10), 0o600))
	}
	must(os.WriteFile(filepath.Join(dir, "big.bin"), noise(99, 3<<20+123), 0o640))
	must(os.WriteFile(filepath.Join(dir, "empty"), nil, 0o644))
	must(os.Symlink("d0/f001.txt", filepath.Join(dir, "link")))
	must(os.Symlink("/nowhere", filepath.Join(dir, "d2", "dangling")))
	must(os.MkdirAll(filepath.Join(dir, "d3", "empty-dir"), 0o700))
	must(os.Chmod(filepath.Join(dir, "d2"), 0o2775))
	must(unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	must(os.Chmod(filepath.Join(dir, "d0", "f002.txt"), 0o4755))
	if os.Geteuid() == 0 { // other owners (tar -x restores them as root only)
		must(os.Lchown(filepath.Join(dir, "d0", "f004.txt"), 1234, 5678))
		must(os.Lchown(filepath.Join(dir, "link"), 1234, 5678))
	}
	old := time.Date(2020, 1, 2, 3, 4, 5, 123456789, time.UTC)
	must(filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink != 0 {
			return err
		}
		return os.Chtimes(p, old, old)
	}))
	must(os.Chtimes(filepath.Join(dir, "d2"), old.Add(time.Hour), old.Add(3*time.Hour+7)))
}

// backup takes one backup of the tree and checks it restores to exactly
// the tree.
func (b *volumeBed) backup() VolumeStats {
	b.t.Helper()
	vs := b.backupOnly()
	b.checkRestore()
	return vs
}

// backupOnly takes one backup of the tree.
func (b *volumeBed) backupOnly() VolumeStats {
	t := b.t
	t.Helper()
	b.n++
	w, err := NewWriter(b.folder, Manifest{Deployment: "d", Project: "p", Created: t0.Add(time.Duration(b.n) * time.Minute)}, b.keys, []age.Recipient{b.id.Recipient()})
	if err != nil {
		t.Fatal(err)
	}
	w.FilesCache, w.groupShape = b.cache, testGroups
	vs, err := w.AddVolume(context.Background(), Item{File: volItem, Kind: "volume", Instance: "inst", Service: "svc", Volume: "data", Path: "/"},
		VolumeSource{Run: b.run, Dir: b.data, Path: "/"})
	if err != nil {
		w.Abort()
		t.Fatal(err)
	}
	if b.lastM, err = w.Close(); err != nil {
		t.Fatal(err)
	}
	b.lastVS = vs
	return vs
}

// groupsNow lists the tree and cuts it into groups as AddVolume does.
func (b *volumeBed) groupsNow() ([]group, map[string]bool) {
	es, err := list(context.Background(), LocalRunner{}, LocalRunner{}, b.data)
	if err != nil {
		b.t.Fatal(err)
	}
	gs := (&Writer{keys: b.keys, groupShape: testGroups}).groups(namesFor(b.data, "/"), es)
	keys := map[string]bool{}
	for _, g := range gs {
		keys[g.key] = true
	}
	return gs, keys
}

// changedBytes is the file bytes of the groups no earlier listing had:
// what an incremental backup must read.
func changedBytes(gs []group, prev map[string]bool) (int64, int) {
	var n int64
	var k int
	for _, g := range gs {
		if prev[g.key] {
			continue
		}
		k++
		for _, e := range g.entries {
			if e.typ == 'f' {
				n += e.size
			}
		}
	}
	return n, k
}

// checkRestore decrypts the newest backup's item, unpacks it with tar -x
// into a new folder and compares every entry with the tree.
func (b *volumeBed) checkRestore() {
	t := b.t
	t.Helper()
	_, into, err := b.extract()
	if err != nil {
		t.Fatal(err)
	}
	compareTrees(t, b.data, into)
}

// item is the newest backup's volume item: its plain tar stream.
func (b *volumeBed) item() []byte {
	b.t.Helper()
	var out bytes.Buffer
	if err := Decrypt(b.folder, volItem, []age.Identity{b.id}, &out); err != nil {
		b.t.Fatal(err)
	}
	return out.Bytes()
}

// extract is the volume item, and a new folder tar -x put it into (or
// tar -x's error).
func (b *volumeBed) extract() (plain []byte, into string, err error) {
	b.t.Helper()
	plain, into = b.item(), b.t.TempDir()
	cmd := exec.Command("tar", "-x", "-f", "-", "-C", into)
	cmd.Stdin = bytes.NewReader(plain)
	if o, err := cmd.CombinedOutput(); err != nil {
		return plain, into, fmt.Errorf("tar -x: %w: %s", err, o)
	}
	return plain, into, nil
}

func compareTrees(t *testing.T, want, got string) {
	t.Helper()
	describe := func(root string) map[string]string {
		m := map[string]string{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			s := fmt.Sprintf("mode %o uid %d gid %d", st.Mode, st.Uid, st.Gid)
			switch st.Mode & syscall.S_IFMT {
			case syscall.S_IFLNK:
				l, _ := os.Readlink(p)
				s += " -> " + l
			case syscall.S_IFREG:
				c, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				s += fmt.Sprintf(" mtime %d size %d content %s links %d", st.Mtim.Nano(), len(c), sum(c), st.Nlink)
			case syscall.S_IFCHR, syscall.S_IFBLK:
				s += fmt.Sprintf(" device %d:%d mtime %d", unix.Major(st.Rdev), unix.Minor(st.Rdev), st.Mtim.Nano())
			default:
				s += fmt.Sprintf(" mtime %d", st.Mtim.Nano())
			}
			m[rel] = s
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	w, g := describe(want), describe(got)
	for p, s := range w {
		if g[p] != s {
			t.Errorf("restored %s: %q, want %q", p, g[p], s)
		}
	}
	for p := range g {
		if _, ok := w[p]; !ok {
			t.Errorf("restored %s, which the tree does not hold", p)
		}
	}
}

// TestVolumeFilesCache: a volume path read by find and tar -c (real
// tools, a real tree) restores to exactly the tree; an incremental backup
// after each kind of change reads only the groups that change touched,
// and nothing when nothing changed.
func TestVolumeFilesCache(t *testing.T) {
	b := newVolumeBed(t)
	start := time.Now()
	vs := b.backup()
	t.Logf("full: %d files (%d bytes) in %d groups, %d chunks, %v", vs.Files, vs.Bytes, vs.Groups, len(b.lastM.Items[0].Chunks), time.Since(start).Round(time.Millisecond))
	if vs.FilesRead != vs.Files-1 || vs.BytesRead != vs.Bytes || vs.Groups < 4 {
		t.Fatalf("first backup: %+v, want every file read (but the empty one), 4 groups or more", vs)
	}
	_, prev := b.groupsNow()

	vs = b.backup()
	if vs.FilesRead != 0 || vs.BytesRead != 0 || b.lastM.Stats.New != 0 {
		t.Fatalf("unchanged tree: %+v, %d new chunks; want nothing read or written", vs, b.lastM.Stats.New)
	}

	p := func(rel string) string { return filepath.Join(b.data, rel) }
	sameTimes := func(rel string, fn func()) {
		var st unix.Stat_t
		unix.Stat(p(rel), &st)
		fn()
		ts := time.Unix(st.Mtim.Unix())
		if err := os.Chtimes(p(rel), ts, ts); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name   string
		change func() error
	}{
		{"change one file", func() error { return os.WriteFile(p("d1/f010.txt"), []byte("changed"), 0o644) }},
		{"add one file", func() error { return os.WriteFile(p("d2/added.txt"), []byte("new file"), 0o644) }},
		{"delete one file", func() error { return os.Remove(p("d3/f020.txt")) }},
		{"rename one file", func() error { return os.Rename(p("d0/f050.txt"), p("d0/renamed.txt")) }},
		{"chmod one file", func() error { return os.Chmod(p("d2/f100.txt"), 0o600) }},
		{"touch one file", func() error {
			n := time.Date(2025, 5, 5, 5, 5, 5, 5, time.UTC)
			return os.Chtimes(p("d3/f130.txt"), n, n)
		}},
		{"same size and mtime, new content", func() error {
			var err error
			sameTimes("d1/inner/g003.txt", func() {
				c, _ := os.ReadFile(p("d1/inner/g003.txt"))
				c[0] ^= 0xff
				err = os.WriteFile(p("d1/inner/g003.txt"), c, 0o644)
			})
			return err
		}},
	}
	for _, s := range steps {
		if err := s.change(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		gs, now := b.groupsNow()
		want, groups := changedBytes(gs, prev)
		start := time.Now()
		vs := b.backup()
		t.Logf("%s: %d files (%d bytes) of %d read, %d of %d groups, %d new chunks, %v", s.name, vs.FilesRead, vs.BytesRead, vs.Files,
			vs.GroupsRead, vs.Groups, b.lastM.Stats.New, time.Since(start).Round(time.Millisecond))
		if vs.BytesRead != want || vs.GroupsRead != groups || groups == 0 || groups > 2 || vs.BytesRead > vs.Bytes/3 {
			t.Errorf("%s: read %d bytes in %d groups; want %d bytes in the %d changed groups (1 or 2, under a third of %d)",
				s.name, vs.BytesRead, vs.GroupsRead, want, groups, vs.Bytes)
		}
		prev = now
	}
}

// TestVolumeFilesCacheLost: a deleted or damaged cache means a full read,
// a cache naming chunks the folder lost reads those groups again, and a
// file that changes between the listing and the read is stored as read
// and its group not cached.
func TestVolumeFilesCacheLost(t *testing.T) {
	b := newVolumeBed(t)
	full := b.backup()

	if err := os.RemoveAll(b.cache); err != nil {
		t.Fatal(err)
	}
	if vs := b.backup(); vs.FilesRead != full.FilesRead || vs.BytesRead != full.Bytes || b.lastM.Stats.New != 0 {
		t.Errorf("cache deleted: %+v, %d new chunks; want a full read writing nothing new", vs, b.lastM.Stats.New)
	}
	files, _ := filepath.Glob(filepath.Join(b.cache, "*.json"))
	if len(files) != 1 {
		t.Fatalf("cache files %v, want one", files)
	}
	// A cache file no backup rewrote for longer than cacheKeep (a folder
	// no longer used) goes with the next backup's; a recent one stays.
	stale, recent := filepath.Join(b.cache, "stale.json"), filepath.Join(b.cache, "recent.json")
	for _, f := range []string{stale, recent} {
		os.WriteFile(f, []byte("{}"), 0o600)
	}
	long := time.Now().Add(-cacheKeep - time.Hour)
	os.Chtimes(stale, long, long)
	b.backup()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("a cache file unused for %v is still there (%v)", cacheKeep, err)
	}
	if err := os.Remove(recent); err != nil {
		t.Errorf("a recent cache file: %v; want it kept", err)
	}
	for _, damage := range []string{"{not json", `{"version":99,"groups":{}}`} {
		os.WriteFile(files[0], []byte(damage), 0o600)
		if vs := b.backup(); vs.BytesRead != full.Bytes {
			t.Errorf("cache %q: %d of %d bytes read, want all", damage, vs.BytesRead, full.Bytes)
		}
	}
	if fi, err := os.Stat(files[0]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("cache file: %v %v, want mode 0600", fi.Mode(), err)
	}

	// The last chunk of the last group lost (the item's last chunk is
	// tar's end): that group is read again, the rest not.
	chunks := b.lastM.Items[0].Chunks
	lost := chunks[len(chunks)-2].ID
	if err := os.Remove(filepath.Join(b.folder, filepath.FromSlash(chunkPath(lost)))); err != nil {
		t.Fatal(err)
	}
	vs := b.backup()
	if vs.GroupsRead != 1 || vs.FilesRead == 0 || b.lastM.Stats.New == 0 || b.lastM.Items[0].Chunks[len(chunks)-2].ID != lost {
		t.Errorf("chunk lost: %+v, %d new chunks; want its group read and its chunk written again", vs, b.lastM.Stats.New)
	}

	// A file changed after the listing, before tar -c reads it (its
	// group's cache entry dropped first so the group is read).
	os.RemoveAll(b.cache)
	b.run = before{"tar", func() error {
		return os.WriteFile(filepath.Join(b.data, "d0", "f007.txt"), []byte("written during the read"), 0o644)
	}}
	vs = b.backup() // checks the backup holds the file as read
	b.run = LocalRunner{}
	cached := loadCache(files[0])
	if len(cached) != vs.Groups-1 {
		t.Errorf("after a file changed during the read: %d groups cached of %d, want all but its group", len(cached), vs.Groups)
	}
	if vs := b.backup(); vs.GroupsRead != 1 {
		t.Errorf("the backup after: %d groups read, want 1 (the uncached one)", vs.GroupsRead)
	}
}

// before runs change before each run of the command cmd (tar, or the
// xargs that stats device nodes), then the command.
type before struct {
	cmd    string
	change func() error
}

func (m before) Run(ctx context.Context, argv []string, stdin []byte, stdout io.Writer) error {
	if slices.Contains(argv, m.cmd) { // in its confinement (volume.go)
		if err := m.change(); err != nil {
			return err
		}
	}
	return LocalRunner{}.Run(ctx, argv, stdin, stdout)
}

// TestVolumePaths: a declared path below the volume's root is stored as
// Docker's CopyFromContainer named it (the path's last element, restored
// into its parent), a single file too, and an absent path is errAbsent.
func TestVolumePaths(t *testing.T) {
	b := newVolumeBed(t)
	for _, c := range []struct{ path, want string }{{"/", "./"}, {"d2", "d2/"}, {"d1/inner", "inner/"}, {"big.bin", "big.bin"}} {
		w, err := NewWriter(b.folder, Manifest{Deployment: "d", Project: "p", Created: t0.Add(time.Duration(b.n) * time.Hour)}, b.keys, []age.Recipient{b.id.Recipient()})
		if err != nil {
			t.Fatal(err)
		}
		b.n++
		if _, err := w.AddVolume(context.Background(), Item{File: volItem, Kind: "volume", Path: c.path}, VolumeSource{Run: LocalRunner{}, Dir: b.data, Path: c.path}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.AddVolume(context.Background(), Item{File: "x", Kind: "volume", Path: "nothing/here"}, VolumeSource{Run: LocalRunner{}, Dir: b.data, Path: "nothing/here"}); err != errAbsent {
			t.Errorf("absent path: %v, want errAbsent", err)
		}
		if _, err := w.Close(); err != nil {
			t.Fatal(err)
		}
		plain, into, err := b.extract()
		if err != nil {
			t.Fatal(err)
		}
		names := tarNames(t, plain)
		if names[0] != c.want || len(names) > 1 && !strings.HasPrefix(names[1], c.want) {
			t.Errorf("path %s: names %q, want %q and names under it", c.path, names[:min(3, len(names))], c.want)
		}
		compareTrees(t, filepath.Join(b.data, c.path), filepath.Join(into, filepath.Base(c.path)))
	}
}

// TestVolumePathBelowSymlink: a declared path below a symlink in the
// volume (which a container can plant) is refused, not followed out of
// the volume; one below a missing folder is absent.
func TestVolumePathBelowSymlink(t *testing.T) {
	b := newVolumeBed(t)
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("outside the volume"), 0o600)
	if err := os.Symlink(outside, filepath.Join(b.data, "d0", "out")); err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(b.folder, Manifest{Deployment: "d", Project: "p", Created: t0}, b.keys, []age.Recipient{b.id.Recipient()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	_, err = w.AddVolume(context.Background(), Item{File: volItem, Kind: "volume", Path: "d0/out/secret"}, VolumeSource{Run: LocalRunner{}, Dir: b.data, Path: "d0/out/secret"})
	if err == nil || !strings.Contains(err.Error(), "d0/out is not a folder (type l)") {
		t.Errorf("a path below a symlink: %v, want it refused", err)
	}
	_, err = w.AddVolume(context.Background(), Item{File: volItem, Kind: "volume", Path: "gone/x/y"}, VolumeSource{Run: LocalRunner{}, Dir: b.data, Path: "gone/x/y"})
	if err != errAbsent {
		t.Errorf("a path below a missing folder: %v, want errAbsent", err)
	}
}

func tarNames(t *testing.T, b []byte) []string {
	cmd := exec.Command("tar", "-t", "-f", "-")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// TestVolumesAtOnce: addVolumes reads several paths at once and lists
// their items in the declared order, an absent one in Absent, each item
// holding its own path; one that fails stops the backup with its error.
func TestVolumesAtOnce(t *testing.T) {
	b := newVolumeBed(t)
	var paths []volumePath
	for _, p := range []string{"d0", "nothing/here", "d1", "d2", "d3", "big.bin"} {
		paths = append(paths, volumePath{
			it:     Item{File: "inst/svc/data_" + strings.ReplaceAll(p, "/", "_") + ".tar.age", Kind: "volume", Instance: "inst", Service: "svc", Volume: "data", Path: p},
			desc:   "data:" + p,
			source: func() (VolumeSource, error) { return VolumeSource{Run: LocalRunner{}, Dir: b.data, Path: p}, nil },
		})
	}
	w, err := NewWriter(b.folder, Manifest{Deployment: "d", Project: "p", Created: t0}, b.keys, []age.Recipient{b.id.Recipient()})
	if err != nil {
		t.Fatal(err)
	}
	w.FilesCache, w.groupShape = b.cache, testGroups
	if err := w.addVolumes(context.Background(), paths, progress.Discard()); err != nil {
		t.Fatal(err)
	}
	m, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range m.Items {
		got = append(got, it.Path)
		var out bytes.Buffer
		if err := Decrypt(b.folder, it.File, []age.Identity{b.id}, &out); err != nil {
			t.Fatal(err)
		}
		h, err := tar.NewReader(&out).Next()
		if err != nil || strings.TrimSuffix(h.Name, "/") != it.Path {
			t.Errorf("item %s: first entry %v, %v; want %s", it.File, h, err, it.Path)
		}
	}
	if want := []string{"d0", "d1", "d2", "d3", "big.bin"}; !slices.Equal(got, want) || len(m.Absent) != 1 || m.Absent[0].Path != "nothing/here" {
		t.Errorf("items %v, absent %+v; want %v and nothing/here", got, m.Absent, want)
	}

	paths[3].source = func() (VolumeSource, error) { return VolumeSource{}, errors.New("no volume mounted there") }
	w, err = NewWriter(b.folder, Manifest{Deployment: "d", Project: "p", Created: t0.Add(time.Hour)}, b.keys, []age.Recipient{b.id.Recipient()})
	if err != nil {
		t.Fatal(err)
	}
	err = w.addVolumes(context.Background(), paths, progress.Discard())
	w.Abort()
	if err == nil || !strings.Contains(err.Error(), "service svc: volume data:d2: no volume mounted there") {
		t.Errorf("a path that cannot be read: %v", err)
	}
	if l, _ := List(b.folder); len(l.Backups) != 1 {
		t.Errorf("after the failed backup the folder lists %d backups, want the first only", len(l.Backups))
	}
}

// TestVolumeHardLinksAndDevices: a file with three paths (two in one
// group, one in another) restores as one inode holding its content, read
// once; a FIFO and a character device node restore as such, the device
// with its numbers. A new content shows on all three paths; with one path
// removed the other two stay linked.
func TestVolumeHardLinksAndDevices(t *testing.T) {
	testenv.RequireRoot(t) // mknod
	b := newVolumeBed(t)
	p := func(rel string) string { return filepath.Join(b.data, rel) }
	paths := []string{"d0/hl-a", "d0/hl-b", "d3/hl-c"}
	content := noise(7, 200<<10)
	if err := os.WriteFile(p(paths[0]), content, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, l := range paths[1:] {
		if err := os.Link(p(paths[0]), p(l)); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mknod(p("d1/null"), unix.S_IFCHR|0o620, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(p("d2/tty9"), unix.S_IFCHR|0o600, int(unix.Mkdev(4, 265))); err != nil {
		t.Fatal(err)
	}
	gs, _ := b.groupsNow()
	groupOf := map[string]int{}
	for i, g := range gs {
		for _, e := range g.entries {
			groupOf[e.rel] = i
		}
	}
	if groupOf[paths[0]] != groupOf[paths[1]] || groupOf[paths[0]] == groupOf[paths[2]] {
		t.Fatalf("groups of %q: %d %d %d; want the first two together, the third apart", paths, groupOf[paths[0]], groupOf[paths[1]], groupOf[paths[2]])
	}

	// restored checks the newest backup's linked paths share one inode
	// holding want (checkRestore compared the rest: content, link
	// counts, device numbers, the FIFO).
	restored := func(step string, linked []string, want []byte) {
		t.Helper()
		plain, into, err := b.extract()
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		first, err := os.Stat(filepath.Join(into, linked[0]))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range linked {
			fi, err := os.Stat(filepath.Join(into, l))
			if err != nil || !os.SameFile(first, fi) {
				t.Errorf("%s: restored %s is not the inode of %s (%v)", step, l, linked[0], err)
			}
			if c, _ := os.ReadFile(filepath.Join(into, l)); !bytes.Equal(c, want) {
				t.Errorf("%s: restored %s holds %d bytes, not the file's %d", step, l, len(c), len(want))
			}
		}
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(into, "d2/tty9"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 4 || unix.Minor(st.Rdev) != 265 {
			t.Errorf("%s: restored d2/tty9: mode %o device %d:%d (%v), want a character device 4:265", step, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev), err)
		}
		if fi, err := os.Lstat(filepath.Join(into, "fifo")); err != nil || fi.Mode()&fs.ModeNamedPipe == 0 {
			t.Errorf("%s: restored fifo: %v %v, want a FIFO", step, fi, err)
		}
		if n := strings.Count(string(plain), string(want[:4096])); n != 1 {
			t.Errorf("%s: the linked file's content is %d times in the item, want once", step, n)
		}
	}

	full := b.backup()
	restored("full", paths, content)
	if full.Files != full.FilesRead+1 || full.BytesRead != full.Bytes {
		t.Errorf("full: %+v; want every file read once (the linked one too), only the empty one not", full)
	}
	if vs := b.backup(); vs.FilesRead != 0 || b.lastM.Stats.New != 0 {
		t.Errorf("unchanged: %+v, %d new chunks; want nothing read", vs, b.lastM.Stats.New)
	}

	_, prev := b.groupsNow()
	changed := noise(8, 150<<10)
	if err := os.WriteFile(p(paths[1]), changed, 0o640); err != nil { // in place: the inode stays
		t.Fatal(err)
	}
	gs, _ = b.groupsNow()
	want, groups := changedBytes(gs, prev)
	vs := b.backup()
	restored("content changed", paths, changed)
	if vs.BytesRead != want || vs.GroupsRead != groups || groups != 2 {
		t.Errorf("content changed: read %d bytes in %d groups; want %d in the 2 groups holding its paths (%d)", vs.BytesRead, vs.GroupsRead, want, groups)
	}

	if err := os.Remove(p(paths[0])); err != nil {
		t.Fatal(err)
	}
	b.backup()
	restored("first path removed", paths[1:], changed)

	// The first path (now d0/hl-b) removed after the listing, before the
	// read, its group read (another file in it changed) and d3/hl-c's
	// group otherwise cached: the links to it are left out, not written
	// pointing at nothing (a restore would fail), and not cached.
	if err := os.WriteFile(p("d0/hl-0"), []byte("beside the link"), 0o644); err != nil {
		t.Fatal(err)
	}
	b.run = before{"tar", func() error {
		if err := os.Remove(p(paths[1])); err != nil && !os.IsNotExist(err) {
			return err
		}
		return nil
	}}
	b.backupOnly()
	b.run = LocalRunner{}
	plain, _, err := b.extract()
	if err != nil {
		t.Errorf("first path gone during the read: %v", err)
	}
	for _, n := range tarNames(t, plain) {
		if strings.Contains(n, "hl-") && n != "./d0/hl-0" {
			t.Errorf("first path gone during the read: the item holds %s", n)
		}
	}
	b.backup() // d3/hl-c alone now, read again (its group was not cached)
	if fi, err := os.Stat(p(paths[2])); err != nil || fi.Size() != int64(len(changed)) {
		t.Fatalf("%s: %v %v", paths[2], fi, err)
	}

	// A device node gone between the listing and the stat of its
	// numbers is left out.
	b.run = before{"xargs", func() error { return os.Remove(p("d1/null")) }}
	b.backupOnly()
	b.run = LocalRunner{}
	names := tarNames(t, b.item())
	if slices.Contains(names, "./d1/null") || !slices.Contains(names, "./d2/tty9") {
		t.Errorf("a device node gone before the stat: the item holds ./d1/null %v, ./d2/tty9 %v; want only the second",
			slices.Contains(names, "./d1/null"), slices.Contains(names, "./d2/tty9"))
	}
}

// TestVolumeFolderSwappedForSymlink: a folder the listing saw, swapped
// for a symlink out of the volume before tar -c reads its files (a
// container can do that as a backup runs), leads nowhere: the files are
// left out, never read from where the link points (as root in the
// instance that could be another volume's secrets, given back to the
// container by a restore).
func TestVolumeFolderSwappedForSymlink(t *testing.T) {
	testenv.RequireRoot(t)
	b := newVolumeBed(t)
	b.backup()
	outside := t.TempDir()
	entries, err := os.ReadDir(filepath.Join(b.data, "d0"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			os.WriteFile(filepath.Join(outside, e.Name()), []byte("outside the volume: "+e.Name()), 0o600)
		}
	}
	relOutside, err := filepath.Rel(b.data, outside)
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{outside, relOutside} {
		// Touched, so the listing sends d0's files to tar -c.
		now := time.Now()
		for _, e := range entries {
			os.Chtimes(filepath.Join(b.data, "d0", e.Name()), now, now)
		}
		d0 := filepath.Join(b.data, "d0")
		b.run = before{"tar", func() error {
			if err := os.Rename(d0, d0+".moved"); err != nil {
				return err
			}
			return os.Symlink(target, d0)
		}}
		b.backupOnly()
		b.run = LocalRunner{}
		if bytes.Contains(b.item(), []byte("outside the volume")) {
			t.Errorf("with d0 swapped for a symlink to %s during the read, the backup holds files from there", target)
		}
		os.Remove(d0)
		if err := os.Rename(d0+".moved", d0); err != nil {
			t.Fatal(err)
		}
	}
	b.backup() // whole again, and restores to the tree
}

// TestVolumeAncestorSwappedForSymlink: a declared path below a folder of
// the volume (d1/inner) whose folder (d1) the container swaps for a link
// after the ancestors were checked, just before the listing: nothing from
// where the link points is stored. Its files' content would not be (tar
// runs confined), but names, folders, empty files and links were, from
// the listing alone: the listing runs confined too for such a path.
func TestVolumeAncestorSwappedForSymlink(t *testing.T) {
	b := newVolumeBed(t)
	outside := t.TempDir()
	for _, d := range []string{"inner/outside-dir", "inner/outside-dir/deeper"} {
		if err := os.MkdirAll(filepath.Join(outside, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(outside, "inner", "outside-empty"), nil, 0o600)
	os.Symlink("/etc/shadow", filepath.Join(outside, "inner", "outside-link"))
	relOutside, err := filepath.Rel(b.data, outside)
	if err != nil {
		t.Fatal(err)
	}
	d1 := filepath.Join(b.data, "d1")
	for _, target := range []string{outside, relOutside} {
		b.n++
		w, err := NewWriter(b.folder, Manifest{Deployment: "d", Project: "p", Created: t0.Add(time.Duration(b.n) * time.Minute)}, b.keys, []age.Recipient{b.id.Recipient()})
		if err != nil {
			t.Fatal(err)
		}
		run := before{"-ignore_readdir_race", func() error { // the listing's find
			if err := os.Rename(d1, d1+".moved"); err != nil {
				return err
			}
			return os.Symlink(target, d1)
		}}
		_, err = w.AddVolume(context.Background(), Item{File: volItem, Kind: "volume", Path: "d1/inner"}, VolumeSource{Run: run, Dir: b.data, Path: "d1/inner"})
		os.Remove(d1)
		if rerr := os.Rename(d1+".moved", d1); rerr != nil {
			t.Fatal(rerr)
		}
		if errors.Is(err, errAbsent) { // gone from the volume: nothing stored
			w.Abort()
			continue
		}
		if err != nil {
			t.Fatalf("d1 swapped for a link to %s: %v", target, err)
		}
		if _, err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if names := tarNames(t, b.item()); slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, "outside-") }) {
			t.Errorf("with d1 swapped for a link to %s before the listing, the backup holds %q", target, names)
		}
	}
}
