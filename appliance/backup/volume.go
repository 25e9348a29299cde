package backup

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/appliance/lxdexec"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// A volume path is read from the volume's folder on the disk of the
// machine running Docker (the LXD instance), not through Docker's
// CopyFromContainer, which streams the whole tree on every backup: one
// `find` lists it, and only the files of groups the files cache does not
// name are read, by one `tar -c` of their names. The item is still one
// plain tar stream (restore, verify and the chunks are as for any item),
// written here from the listing, so the same metadata gives the same
// bytes and an unchanged group the same chunks.
//
// Groups: the listing's entries in path order, a group ending after an
// entry whose keyed path hash says so (1 in groupShape.every) or once it
// holds groupShape.bytes; a larger file is a group of its own. 8 MiB
// (a big chunk's size) keeps a full backup's chunks about as many as a
// stream's: with 2 MiB groups the bench tree's full backup made 277
// chunk files, not 171, and took 1.62 s, not 1.46 s. A group's end is a
// chunk cut, so an added or changed file changes its own group's chunks
// and (the size bound being counted from the last hash cut) at most the
// groups up to the next hash cut, not the rest of the stream.
//
// Files cache: per backup folder, deployment and item, a file on the local
// disk of the machine running the backup (the folder is encrypted to the
// owner's key, which the cluster does not have) maps each group's key (a
// hash of its entries' path, type, size, mtime, ctime, inode, mode, owner
// and link target) to its chunks. A group whose key is there and whose
// chunks the folder still holds is named again without reading a byte of
// it (restic's and borg's files cache, per group rather than per file).
//
// Hard links: a regular file with more than one link is stored once, at
// its first path in the item's order, and each later path of the same
// inode (and device) as a tar hard link naming that first path, as tar -c
// stores them; its content is read once. The link's name is in its
// entry's key (an entry of type 'h' whose link is the first path), and a
// group holding a link whose first path is in a group read again is read
// again too (its first path may have gone by the read: the link is then
// left out, not written pointing at nothing, which fails a restore).
// Character and block device nodes are kept (with their major and minor
// numbers); sockets are left out, as tar -c leaves them out: a socket is
// made by the process listening on it.
var defaultGroups = groupShape{bytes: 8 << 20, every: 512}

// groupShape bounds a group: its bytes, and 1 in every entries ends one.
type groupShape struct {
	bytes int64
	every uint64
}

const (
	// cacheVersion changes with the bytes a group makes (2: hard links
	// and device nodes).
	cacheVersion = 2
)

// Runner runs a command on the machine that holds a volume's folder,
// with stdin on its standard input and its standard output to stdout. A
// non-zero exit is an *ExitError.
type Runner interface {
	Run(ctx context.Context, argv []string, stdin []byte, stdout io.Writer) error
}

// ExitError is a command's non-zero exit.
type ExitError struct {
	Command string
	Code    int
	Stderr  string
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("%s exited %d: %s", e.Command, e.Code, strings.TrimSpace(e.Stderr))
}

// LocalRunner runs commands on this machine.
type LocalRunner struct{}

func (LocalRunner) Run(ctx context.Context, argv []string, stdin []byte, stdout io.Writer) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout = bytes.NewReader(stdin), stdout
	var stderr tail
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		return &ExitError{Command: argv[0], Code: ee.ExitCode(), Stderr: string(stderr.b)}
	}
	return err
}

// LXDRunner runs commands in an LXD instance (as root): the instance's
// own GNU find and tar, which a service container's image may lack.
type LXDRunner struct {
	LXD      lxd.InstanceServer // in the instance's project
	Instance string
}

func (r LXDRunner) Run(ctx context.Context, argv []string, stdin []byte, stdout io.Writer) error {
	// find and tar -c only read: lxdexec may run them twice.
	stderr, code, err := lxdexec.Stream(r.LXD, r.Instance, argv, stdin, stdout)
	if err != nil {
		return err
	}
	if code != 0 {
		return &ExitError{Command: argv[0], Code: code, Stderr: stderr}
	}
	return nil
}

// confined runs the volume's commands where the volume's folder is the
// only thing to read besides the system's programs: in a private mount
// namespace, chrooted into a tmpfs holding /usr (with /bin, /lib... as
// the system has them) and the folder, bound at its own path. tar (and
// stat) run as root in the instance, on a tree the service's container
// can change as they run: a folder swapped for a symlink (to /, or to
// another volume, such as the Lightning node's) between the listing and
// the read would otherwise be followed, and what it points at stored in
// the backup and written back into that container's volume by a restore.
// Here such a link leads nowhere: nothing else of the instance is there.
// It costs a few processes a command (about 30 ms here, in unshare's
// namespace and mount's start), so the listing, which reads no content,
// runs without it.
type confined struct {
	run Runner
	dir string // absolute, clean: the volume's folder
}

// confineScript builds the root and runs the command in it ($1: the
// folder, then the command). The folder is opened before /mnt is covered
// (it could lie below it) and bound from that open file.
const confineScript = `set -eu
exec 3<"$1"
mount -t tmpfs -o mode=0755,size=1m ssbuild-volume /mnt
links= dirs= mk=
for d in /bin /sbin /lib /lib32 /lib64 /libx32; do
	if [ -L $d ]; then links="$links $d"
	elif [ -d $d ]; then dirs="$dirs $d" mk="$mk /mnt$d"; fi
done
mkdir -p /mnt/usr "/mnt$1" $mk
[ -z "$links" ] || cp -P $links /mnt/
mount --bind /usr /mnt/usr
for d in $dirs; do mount --bind $d /mnt$d; done
mount --bind /proc/self/fd/3 "/mnt$1"
exec 3<&-
shift
exec chroot /mnt "$@"`

func (c confined) Run(ctx context.Context, argv []string, stdin []byte, stdout io.Writer) error {
	err := c.run.Run(ctx, append([]string{"unshare", "--mount", "--", "sh", "-c", confineScript, "sh", c.dir}, argv...), stdin, stdout)
	var ee *ExitError
	if errors.As(err, &ee) {
		ee.Command = argv[0]
	}
	return err
}

// VolumeSource is a volume path to read.
type VolumeSource struct {
	Run Runner
	// Dir is the volume's folder on the runner's machine (Docker's mount
	// Source: /var/lib/docker/volumes/NAME/_data).
	Dir string
	// Path is the declared path in the volume: "/" or relative.
	Path string
	// Progress, when set, counts the file bytes read.
	Progress io.Writer
}

// VolumeStats say what reading one volume path read and reused.
type VolumeStats struct {
	Files, FilesRead   int   // in the listing; of them, regular files read
	Bytes, BytesRead   int64 // file content in the listing; of it, read
	Groups, GroupsRead int
}

// errAbsent is a declared volume path that does not exist.
var errAbsent = errors.New("no such path in the volume")

// fileEntry is one line of the listing.
type fileEntry struct {
	// find's %y: f, d, l, p, c, b; 'h' for a later path of a file with
	// hard links (see linkHard).
	typ          byte
	rel          string // relative to the listed root, "" for the root
	size         int64  // 0 for 'h': its content is its first path's
	mtime, ctime int64  // ns
	ino          uint64
	mode         int64 // permission bits with setuid, setgid, sticky
	uid, gid     int
	// link is what the entry points at, so the group key covers it: a
	// symlink's target, an 'h' entry's first path (rel), a device
	// node's "major:minor".
	link               string
	nlink, dev         uint64 // find's %n and %D
	devmajor, devminor int64  // a device node's numbers
}

const (
	findFormat = `%y\0%P\0%s\0%T@\0%C@\0%i\0%m\0%U\0%G\0%l\0%n\0%D\0`
	findFields = 12
)

// list runs find on root, then stat of its device nodes through statRun.
func list(ctx context.Context, run, statRun Runner, root string) ([]fileEntry, error) {
	var out bytes.Buffer
	err := run.Run(ctx, []string{"find", root, "-ignore_readdir_race", "-printf", findFormat}, nil, &out)
	if err != nil {
		var ee *ExitError
		if errors.As(err, &ee) && out.Len() == 0 && strings.Contains(ee.Stderr, "No such file or directory") {
			return nil, errAbsent
		}
		return nil, fmt.Errorf("list %s: %w", root, err)
	}
	f := strings.Split(out.String(), "\x00")
	if len(f)%findFields != 1 || f[len(f)-1] != "" {
		return nil, fmt.Errorf("list %s: find printed %d fields, not a multiple of %d", root, len(f)-1, findFields)
	}
	var es []fileEntry
	for i := 0; i+findFields <= len(f); i += findFields {
		e, err := parseEntry(f[i : i+findFields])
		if err != nil {
			return nil, fmt.Errorf("list %s: %q: %w", root, f[i+1], err)
		}
		switch e.typ {
		case 'f', 'd', 'l', 'p', 'c', 'b':
			es = append(es, e)
		} // sockets are left out (tar -c leaves them out too: a socket is the listening process's)
	}
	// Parents sort before their children.
	slices.SortFunc(es, func(a, b fileEntry) int { return strings.Compare(a.rel, b.rel) })
	es, err = deviceNumbers(ctx, statRun, root, es)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", root, err)
	}
	linkHard(es)
	if len(es) == 0 || es[0].rel != "" {
		return nil, fmt.Errorf("list %s: the root is not a file, folder or link", root)
	}
	return es, nil
}

// deviceNumbers fills in the device nodes' major and minor numbers, which
// find -printf has no directive for, with one stat of them all (only when
// the listing holds any: volumes seldom do). stat rather than reading
// them from tar -c: the numbers are then in the listing, so in the
// group's key, and the entry's header stays the listing's. A node gone
// (or replaced) since the listing is left out.
func deviceNumbers(ctx context.Context, run Runner, root string, es []fileEntry) ([]fileEntry, error) {
	var names []byte
	for i := range es {
		if es[i].typ == 'c' || es[i].typ == 'b' {
			names = append(append(names, path.Join(root, es[i].rel)...), 0)
		}
	}
	if names == nil {
		return es, nil
	}
	var out bytes.Buffer
	err := run.Run(ctx, []string{"xargs", "-0", "-r", "stat", "--printf", `%i\0%t\0%T\0%n\0`, "--"}, names, &out)
	var ee *ExitError
	if err != nil && !(errors.As(err, &ee) && ee.Code == 123) { // 123: stat failed on some (gone)
		return nil, fmt.Errorf("stat device nodes: %w", err)
	}
	type numbers struct {
		ino        uint64
		maj, minor int64
	}
	got := map[string]numbers{}
	f := strings.Split(out.String(), "\x00")
	for i := 0; i+4 <= len(f); i += 4 {
		var n numbers
		var errs [3]error
		n.ino, errs[0] = strconv.ParseUint(f[i], 10, 64)
		n.maj, errs[1] = strconv.ParseInt(f[i+1], 16, 64)
		n.minor, errs[2] = strconv.ParseInt(f[i+2], 16, 64)
		if err := errors.Join(errs[:]...); err != nil {
			return nil, fmt.Errorf("stat device node %q: %w", f[i+3], err)
		}
		got[f[i+3]] = n
	}
	for i := range es {
		e := &es[i]
		if e.typ != 'c' && e.typ != 'b' {
			continue
		}
		n, ok := got[path.Join(root, e.rel)]
		if !ok || n.ino != e.ino {
			e.typ = 0 // left out below
			continue
		}
		e.devmajor, e.devminor = n.maj, n.minor
		e.link = fmt.Sprintf("%d:%d", n.maj, n.minor)
	}
	return slices.DeleteFunc(es, func(e fileEntry) bool { return e.typ == 0 }), nil
}

// linkHard turns every later path (in the listing's order) of a regular
// file with hard links into an 'h' entry naming the first path.
func linkHard(es []fileEntry) {
	first := map[[2]uint64]string{}
	for i := range es {
		e := &es[i]
		if e.typ != 'f' || e.nlink < 2 {
			continue
		}
		id := [2]uint64{e.dev, e.ino}
		if p, ok := first[id]; ok {
			e.typ, e.link, e.size = 'h', p, 0
			continue
		}
		first[id] = e.rel
	}
}

// checkAncestors refuses a declared path below a symlink in the volume
// (the container's processes can write one): find and tar run as root in
// the instance and would follow it out of the volume.
func checkAncestors(ctx context.Context, run Runner, dir, base string) error {
	rel, ok := strings.CutPrefix(base, dir)
	if rel == "" || !ok {
		return nil
	}
	var argv []string
	for p, rest := dir, strings.Trim(rel, "/"); rest != ""; {
		var first string
		first, rest, _ = strings.Cut(rest, "/")
		p = path.Join(p, first)
		argv = append(argv, p)
	}
	var out bytes.Buffer
	err := run.Run(ctx, append(append([]string{"find"}, argv...), "-maxdepth", "0", "-printf", `%y\0%p\0`), nil, &out)
	var ee *ExitError
	if errors.As(err, &ee) && strings.Contains(ee.Stderr, "No such file or directory") {
		return errAbsent
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", base, err)
	}
	f := strings.Split(out.String(), "\x00")
	for i := 0; i+1 < len(f); i += 2 {
		if f[i] != "d" {
			return fmt.Errorf("%s is not a folder (type %s): a declared path is never followed through a link", f[i+1], f[i])
		}
	}
	return nil
}

func parseEntry(f []string) (fileEntry, error) {
	e := fileEntry{rel: f[1], link: f[9]}
	if len(f[0]) != 1 {
		return e, fmt.Errorf("type %q", f[0])
	}
	e.typ = f[0][0]
	var errs [9]error
	e.nlink, errs[7] = strconv.ParseUint(f[10], 10, 64)
	e.dev, errs[8] = strconv.ParseUint(f[11], 10, 64)
	e.size, errs[0] = strconv.ParseInt(f[2], 10, 64)
	e.mtime, errs[1] = parseTime(f[3])
	e.ctime, errs[2] = parseTime(f[4])
	e.ino, errs[3] = strconv.ParseUint(f[5], 10, 64)
	e.mode, errs[4] = strconv.ParseInt(f[6], 8, 64)
	e.uid, errs[5] = strconv.Atoi(f[7])
	e.gid, errs[6] = strconv.Atoi(f[8])
	return e, errors.Join(errs[:]...)
}

// parseTime reads find's %T@ (seconds, a dot, ten digits) as ns.
func parseTime(s string) (int64, error) {
	sec, frac, _ := strings.Cut(s, ".")
	n, err := strconv.ParseInt(sec, 10, 64)
	if err != nil {
		return 0, err
	}
	frac = (frac + "000000000")[:9]
	ns, err := strconv.ParseInt(frac, 10, 64)
	if err != nil {
		return 0, err
	}
	if strings.HasPrefix(sec, "-") {
		ns = -ns
	}
	return n*1e9 + ns, nil
}

// names says how the volume path's entries are named: in the item's tar
// stream as Docker's CopyFromContainer named them ("./" and "./x" for the
// volume's content, "p/" and "p/x" for a path p, restored into the path's
// parent), and for tar -c under base.
type names struct {
	base, root string // root: "" for the volume's content
}

func namesFor(dir, p string) names {
	if p == "/" || p == "" {
		return names{base: dir}
	}
	p = strings.Trim(path.Clean("/"+p), "/")
	return names{base: path.Join(dir, path.Dir(p)), root: path.Base(p)}
}

// fetch is the entry's name for tar -c (relative to base).
func (n names) fetch(e *fileEntry) string {
	switch {
	case n.root == "":
		return e.rel
	case e.rel == "":
		return n.root
	}
	return n.root + "/" + e.rel
}

// header is the entry's tar header, from the listing alone.
func (n names) header(e *fileEntry) *tar.Header {
	name := n.fetch(e)
	if n.root == "" {
		name = path.Join(".", e.rel) // Docker's names for a folder's content ("/data/."): "./", "./x"
		if e.rel != "" {
			name = "./" + e.rel
		}
	}
	h := &tar.Header{Name: name, Mode: e.mode, Uid: e.uid, Gid: e.gid,
		ModTime: time.Unix(0, e.mtime), Format: tar.FormatPAX}
	switch e.typ {
	case 'f':
		h.Typeflag, h.Size = tar.TypeReg, e.size
	case 'd':
		h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
	case 'l':
		h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
	case 'p':
		h.Typeflag = tar.TypeFifo
	case 'c', 'b':
		h.Typeflag, h.Devmajor, h.Devminor = tar.TypeChar, e.devmajor, e.devminor
		if e.typ == 'b' {
			h.Typeflag = tar.TypeBlock
		}
	case 'h':
		h.Typeflag, h.Linkname = tar.TypeLink, n.header(&fileEntry{typ: 'f', rel: e.link}).Name
	}
	return h
}

// fetched says whether tar -c read the file as listed (else it changed
// between the listing and the read).
func (e *fileEntry) fetched(h *tar.Header) bool {
	return h.Typeflag == tar.TypeReg && h.Size == e.size && h.ModTime.UnixNano() == e.mtime &&
		h.ChangeTime.UnixNano() == e.ctime && h.Mode&0o7777 == e.mode && h.Uid == e.uid && h.Gid == e.gid
}

type group struct {
	entries []fileEntry
	key     string
}

// groups cuts the listing into groups and keys each.
func (w *Writer) groups(n names, es []fileEntry) []group {
	var gs []group
	var cur []fileEntry
	var size int64
	cuts := w.keys.pathCuts()
	end := func() {
		if len(cur) > 0 {
			gs = append(gs, group{entries: cur, key: groupKey(n, cur)})
			cur, size = nil, 0
		}
	}
	for _, e := range es {
		b := 512 + (e.size+511)&^511
		if e.typ == 'f' && b >= w.groupShape.bytes {
			end()
			cur = []fileEntry{e}
			end()
			continue
		}
		cur = append(cur, e)
		size += b
		if cuts.of(e.rel) < 1<<16/w.groupShape.every || size >= w.groupShape.bytes {
			end()
		}
	}
	end()
	return gs
}

func groupKey(n names, es []fileEntry) string {
	h := sha256.New()
	fmt.Fprintf(h, "ssbuild files cache v%d\x00%s\x00", cacheVersion, n.root)
	var b [8]byte
	for _, e := range es {
		h.Write([]byte{e.typ})
		h.Write([]byte(e.rel + "\x00" + e.link + "\x00"))
		for _, v := range []int64{e.size, e.mtime, e.ctime, int64(e.ino), e.mode, int64(e.uid), int64(e.gid)} {
			binary.LittleEndian.PutUint64(b[:], uint64(v))
			h.Write(b[:])
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// filesCache is one item's cache file.
type filesCache struct {
	Version int                    `json:"version"`
	Groups  map[string]cachedGroup `json:"groups"`
}

type cachedGroup struct {
	Chunks []string `json:"chunks"`
	Size   int64    `json:"size"`
}

// cachePath is the item's cache file: one per folder, deployment (its
// key: another key's chunks are never reused anyway) and item.
func (w *Writer) cachePath(it *Item) string {
	if w.FilesCache == "" {
		return ""
	}
	top, err := filepath.Abs(w.top)
	if err != nil {
		return ""
	}
	s := sha256.Sum256([]byte(top + "\x00" + w.m.Project + "\x00" + w.keys.Signer() + "\x00" + it.File))
	return filepath.Join(w.FilesCache, hex.EncodeToString(s[:16])+".json")
}

// loadCache reads the cache file; a missing or damaged one is empty (a
// full read, never an error).
func loadCache(p string) map[string]cachedGroup {
	var c filesCache
	if p == "" {
		return nil
	}
	b, err := os.ReadFile(p)
	if err != nil || json.Unmarshal(b, &c) != nil || c.Version != cacheVersion {
		return nil
	}
	return c.Groups
}

// cacheKeep is how long a cache file no backup rewrote stays: one
// belongs to a folder, deployment or volume path no longer backed up.
const cacheKeep = 90 * 24 * time.Hour

// saveCache writes the item's cache file, then removes its folder's cache
// files no backup wrote within cacheKeep.
func saveCache(p string, groups map[string]cachedGroup) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(filesCache{Version: cacheVersion, Groups: groups})
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return err
	}
	old, _ := filepath.Glob(filepath.Join(filepath.Dir(p), "*.json"))
	for _, f := range old {
		if fi, err := os.Stat(f); err == nil && time.Since(fi.ModTime()) > cacheKeep {
			os.Remove(f) // at worst that path's next backup reads it whole
		}
	}
	return nil
}

// DefaultFilesCache is where Run keeps its files caches: the user's cache
// folder (root's on a member).
func DefaultFilesCache() string {
	d, err := os.UserCacheDir()
	if err != nil {
		d = "/var/cache"
	}
	return filepath.Join(d, "ssbuild", "backup-files")
}

// AddVolume stores a volume path as one item: a tar stream of the path
// (errAbsent when it does not exist), reading only the files of groups the
// files cache does not name. The cache file is written once Close has
// written the backup.
func (w *Writer) AddVolume(ctx context.Context, it Item, src VolumeSource) (VolumeStats, error) {
	it, vs, err := w.readVolume(ctx, it, src)
	if err == nil {
		w.put(it)
	}
	return vs, err
}

// volumeReaders is how many volume paths a backup reads at once: while
// one lists its files, starts tar or waits for its last chunks, another
// keeps the cores busy (the benchmark's full backup was 15% faster with
// two than with one at a time on 2 cores).
const volumeReaders = 2

// volumePath is a declared volume path to back up.
type volumePath struct {
	it   Item
	desc string // the declaration, for messages: volume:path
	// source finds where to read it, when its turn comes.
	source func() (VolumeSource, error)
}

// addVolumes stores the volume paths, volumeReaders at a time, and lists
// their items in the manifest in the order given (a path that does not
// exist in Absent). It stops at the first error and returns it.
func (w *Writer) addVolumes(ctx context.Context, paths []volumePath, rep *progress.Reporter) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		it     Item
		absent bool
	}
	res := make([]result, len(paths))
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	turn := make(chan struct{}, volumeReaders)
	for i := range paths {
		turn <- struct{}{}
		if ctx.Err() != nil {
			break // one failed: the error is firstErr
		}
		wg.Add(1)
		go func() {
			defer func() { <-turn; wg.Done() }()
			p := &paths[i]
			name := fmt.Sprintf("%s/%s %s", p.it.Instance, p.it.Service, p.desc)
			task := rep.Start("copy "+name, 0, "bytes")
			src, err := p.source()
			var vs VolumeStats
			if err == nil {
				src.Progress = task
				res[i].it, vs, err = w.readVolume(ctx, p.it, src)
			}
			if errors.Is(err, errAbsent) {
				task.Done(nil)
				res[i].absent = true
				return
			}
			task.Done(err)
			if err != nil {
				mu.Lock()
				if firstErr == nil { // the others then fail for its cancel
					firstErr = fmt.Errorf("service %s: volume %s: %w", p.it.Service, p.desc, err)
				}
				mu.Unlock()
				cancel()
				return
			}
			rep.Info("%s: %d of %d files read (%d of %d bytes)", name, vs.FilesRead, vs.Files, vs.BytesRead, vs.Bytes)
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for i, r := range res {
		if r.absent {
			it := paths[i].it
			it.File = ""
			w.m.Absent = append(w.m.Absent, it)
			continue
		}
		w.put(r.it)
	}
	return nil
}

// readVolume stores the volume path's chunks and returns its item, for
// the caller to put in the manifest: several run at once (addVolumes).
func (w *Writer) readVolume(ctx context.Context, it Item, src VolumeSource) (Item, VolumeStats, error) {
	var vs VolumeStats
	src.Dir = path.Clean(src.Dir)
	if !path.IsAbs(src.Dir) {
		return it, vs, fmt.Errorf("volume folder %q is not an absolute path", src.Dir)
	}
	// What reads content (tar) or device numbers (stat) runs confined.
	// find lists with -P, which never follows a symlink below its start:
	// a path at the volume's root lists unconfined (the common case, and
	// the cost of the confinement saved). A path below a folder of the
	// volume lists confined too: that folder swapped for a link after
	// checkAncestors would lead find elsewhere, and the names, folders and
	// links there would be stored (TestVolumeAncestorSwappedForSymlink).
	conf := confined{run: src.Run, dir: src.Dir}
	n := namesFor(src.Dir, src.Path)
	if err := checkAncestors(ctx, src.Run, src.Dir, n.base); err != nil {
		return it, vs, err
	}
	var lister Runner = conf
	if n.base == src.Dir {
		lister = src.Run
	}
	es, err := list(ctx, lister, conf, path.Join(n.base, n.root))
	if err != nil {
		return it, vs, err
	}
	gs := w.groups(n, es)
	cachePath := w.cachePath(&it)
	cached := loadCache(cachePath)
	reuse := make([]bool, len(gs))
	for i, g := range gs {
		c, ok := cached[g.key]
		reuse[i] = ok && len(c.Chunks) > 0 && c.Size > 0 && w.have(c.Chunks)
	}
	readWithTargets(gs, reuse)
	var fetch []byte
	for i, g := range gs {
		for _, e := range g.entries {
			if e.typ == 'f' {
				vs.Files++
				vs.Bytes += e.size
				if !reuse[i] && e.size > 0 {
					fetch = append(append(fetch, n.fetch(&e)...), 0)
				}
			}
		}
		if !reuse[i] {
			vs.GroupsRead++
		}
	}
	vs.Groups = len(gs)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var tr *tar.Reader
	var fetchR *io.PipeReader
	var fetchBuf *bufio.Reader
	fetchDone := make(chan error, 1)
	if len(fetch) > 0 {
		pr, pw := io.Pipe()
		fetchR = pr
		go func() {
			// -b 64: 32 KiB records, not 10 KiB. LXD's exec sends one
			// websocket message per read of the command's output, at most
			// 32 KiB: tar's default records cost it three times the
			// messages (bench/lxd-exec.sh: the stream 1.1–1.2× faster).
			err := conf.Run(ctx, []string{"tar", "-c", "-f", "-", "-b", "64", "--format=posix", "--null", "--no-recursion",
				"--hard-dereference", "--verbatim-files-from", "--ignore-failed-read", "-C", n.base, "-T", "-"}, fetch, pw)
			var ee *ExitError
			if errors.As(err, &ee) && ee.Code == 1 { // some file changed as it was read: it is found out below
				err = nil
			}
			pw.CloseWithError(err)
			fetchDone <- err
		}()
		fetchBuf = bufio.NewReaderSize(pr, 1<<20)
		tr = tar.NewReader(fetchBuf)
	} else {
		fetchDone <- nil
	}
	rd := &fetchReader{tr: tr, progress: src.Progress, unread: map[string]bool{}}

	s := w.newItemStore()
	type span struct {
		first, n int
		size     int64
	}
	clean := map[string]span{}
	for i, g := range gs {
		if reuse[i] {
			c := cached[g.key]
			s.mu.Lock()
			first := len(s.ids)
			s.mu.Unlock()
			s.reuse(c.Chunks, c.Size)
			clean[g.key] = span{first, len(c.Chunks), c.Size}
			continue
		}
		pr, pw := io.Pipe()
		done := make(chan bool, 1)
		go func() {
			ok, err := rd.writeGroup(pw, n, g.entries)
			pw.CloseWithError(err)
			done <- ok
		}()
		first, k, size := s.chunk(pr)
		pr.CloseWithError(errors.New("the store stopped"))
		if <-done && s.err() == nil {
			clean[g.key] = span{first, k, size}
		}
		if s.err() != nil {
			break
		}
	}
	s.chunk(bytes.NewReader(make([]byte, 1024))) // tar's end: two zero blocks
	var extra error
	if s.err() == nil && tr != nil {
		// Every name asked for was met in order: a name tar wrote otherwise
		// would leave files out silently.
		if _, err := rd.next("\x00"); err != nil {
			extra = err
		} else if rd.pending != nil {
			extra = fmt.Errorf("tar -c wrote %q, which was not asked for there", rd.pending.Name)
		} else {
			_, extra = io.Copy(io.Discard, fetchBuf) // the end of tar's last record
		}
	}
	if s.err() != nil || extra != nil {
		cancel()
		if fetchR != nil {
			fetchR.CloseWithError(errors.New("the backup stopped"))
		}
	}
	ferr := <-fetchDone
	if err := s.finish(&it); err != nil {
		return it, vs, err
	}
	if extra == nil {
		extra = ferr
	}
	if extra != nil {
		return it, vs, fmt.Errorf("read %s: %w", path.Join(n.base, n.root), extra)
	}
	vs.FilesRead, vs.BytesRead = rd.files, rd.bytes
	next := map[string]cachedGroup{}
	for key, sp := range clean {
		var ids []string
		for _, c := range it.Chunks[sp.first : sp.first+sp.n] {
			ids = append(ids, c.ID)
		}
		next[key] = cachedGroup{Chunks: ids, Size: sp.size}
	}
	w.mu.Lock()
	w.Stats.VolumeFiles += vs.Files
	w.Stats.VolumeFilesRead += vs.FilesRead
	w.Stats.VolumeBytes += vs.Bytes
	w.Stats.VolumeBytesRead += vs.BytesRead
	if cachePath != "" {
		w.afterClose = append(w.afterClose, func() error { return saveCache(cachePath, next) })
	}
	w.mu.Unlock()
	return it, vs, nil
}

// readWithTargets reads a group again (not reused) when a hard link in it
// names a first path in a group read again: that path may be gone by the
// read, and the link must then be left out (writeGroup), not reused.
// First paths come before their links, so one pass in order settles it.
func readWithTargets(gs []group, reuse []bool) {
	in := map[string]int{} // first paths of linked files: their group
	for i, g := range gs {
		for _, e := range g.entries {
			switch {
			case e.typ == 'f' && e.nlink > 1:
				in[e.rel] = i
			case e.typ == 'h':
				if j, ok := in[e.link]; ok && !reuse[j] {
					reuse[i] = false
				}
			}
		}
	}
}

// fetchReader reads tar -c's stream of the files to read, in listing order.
type fetchReader struct {
	// unread: first paths of linked files not read as listed; true when
	// left out (their links are too).
	unread   map[string]bool
	tr       *tar.Reader
	pending  *tar.Header // read, not yet asked for
	eof      bool
	progress io.Writer
	tw       *tar.Writer
	out      switchWriter
	files    int
	bytes    int64
	buf      []byte
}

// switchWriter lets one tar.Writer write each group to its own pipe.
type switchWriter struct{ w io.Writer }

func (s *switchWriter) Write(p []byte) (int, error) { return s.w.Write(p) }

// next returns the fetched header of the file named name, or nil when tar
// did not read it (it went between the listing and the read).
func (r *fetchReader) next(name string) (*tar.Header, error) {
	if r.pending == nil && !r.eof {
		h, err := r.tr.Next()
		if errors.Is(err, io.EOF) {
			r.eof = true
		} else if err != nil {
			return nil, err
		} else {
			r.pending = h
		}
	}
	if r.pending == nil || strings.TrimSuffix(r.pending.Name, "/") != name {
		return nil, nil
	}
	h := r.pending
	r.pending = nil
	return h, nil
}

// writeGroup writes the group's entries to out: headers from the listing,
// file content from tar -c. It says whether every file was read as listed
// (else the group is not cached: a file changed while it was read is
// stored as read, with the header tar read).
func (r *fetchReader) writeGroup(out io.Writer, n names, es []fileEntry) (bool, error) {
	r.out.w = out
	if r.tw == nil {
		r.tw = tar.NewWriter(&r.out)
	}
	ok := true
	for i := range es {
		e := &es[i]
		h := n.header(e)
		if e.typ == 'f' && e.size > 0 {
			fh, err := r.next(n.fetch(e))
			if err != nil {
				return false, err
			}
			if fh == nil {
				ok = false // gone: left out
				if e.nlink > 1 {
					r.unread[e.rel] = true
				}
				continue
			}
			if !e.fetched(fh) {
				ok = false
				if e.nlink > 1 {
					r.unread[e.rel] = fh.Typeflag != tar.TypeReg // a link to a folder fails
				}
				h = &tar.Header{Name: h.Name, Typeflag: fh.Typeflag, Size: fh.Size, Linkname: fh.Linkname,
					Mode: fh.Mode & 0o7777, Uid: fh.Uid, Gid: fh.Gid, ModTime: fh.ModTime, Format: tar.FormatPAX}
				if fh.Typeflag == tar.TypeDir {
					h.Name += "/"
				}
			}
			if err := r.tw.WriteHeader(h); err != nil {
				return false, err
			}
			dst := io.Writer(r.tw)
			if r.progress != nil {
				dst = io.MultiWriter(r.tw, r.progress)
			}
			if r.buf == nil {
				r.buf = make([]byte, 1<<20) // a pipe hand-off per MiB, not per 32 KiB
			}
			c, err := io.CopyBuffer(dst, struct{ io.Reader }{r.tr}, r.buf)
			if err != nil {
				return false, err
			}
			r.files++
			r.bytes += c
			continue
		}
		if e.typ == 'h' {
			if gone, found := r.unread[e.link]; found {
				ok = false // its first path changed while read: stored as read
				if gone {
					continue
				}
			}
		}
		if err := r.tw.WriteHeader(h); err != nil {
			return false, err
		}
	}
	// The group's last file padded: the next group starts on its own.
	return ok, r.tw.Flush()
}
