package rootfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sovereign-stack/ssbuild/images/mounts"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// cacheFormat changes when the layout or scrubbing of cache entries changes,
// so old entries are not reused.
const cacheFormat = 3 // 3: var/log/bootstrap.log scrubbed

// Debootstrap returns a root filesystem for spec in dest, from the cache
// when an entry with the same inputs exists, else by running debootstrap and
// caching the result. dest must not exist or be an empty directory.
func (b *Builder) Debootstrap(ctx context.Context, spec Debootstrap, dest string) (Result, error) {
	if b.CacheDir == "" {
		return Result{}, errors.New("debootstrap: no cache directory set")
	}
	if spec.Suite == "" || spec.Mirror == "" {
		return Result{}, fmt.Errorf("debootstrap: suite (%q) and mirror (%q) are both required", spec.Suite, spec.Mirror)
	}
	spec.Mirror = strings.TrimRight(spec.Mirror, "/")
	if err := prepareDest(dest); err != nil {
		return Result{}, err
	}
	inputs, err := resolveInputs(ctx, spec)
	if err != nil {
		return Result{}, fmt.Errorf("debootstrap %s from %s: %w", spec.Suite, spec.Mirror, err)
	}
	key := inputs.key()

	c := cache{dir: filepath.Join(b.CacheDir, "debootstrap")}
	unlock, err := c.lock(ctx, key)
	if err != nil {
		return Result{}, err
	}
	defer unlock()

	res := Result{Dir: dest, CacheKey: key, Inputs: &inputs}
	ent, ok, err := c.lookup(key)
	if err != nil {
		return Result{}, err
	}
	if ok && b.MaxAge > 0 && time.Since(ent.Created) > b.MaxAge {
		b.progress().Info("debootstrap %s: cache entry %s built %s is older than %v: rebuilding",
			spec.Suite, key[:12], ent.Created.Format(time.RFC3339), b.MaxAge)
		ok = false
	}
	if ok {
		res.CacheHit = true
		c.used(key)
		b.progress().Info("debootstrap %s: cached (%s, built %s)", spec.Suite, key[:12], ent.Created.Format(time.RFC3339))
	} else {
		if ent, err = b.buildEntry(ctx, c, key, spec, inputs); err != nil {
			return Result{}, err
		}
	}
	if err := b.copyTree(ctx, c.rootfs(key), dest, ent.SizeBytes); err != nil {
		return Result{}, err
	}
	res.BuiltAt = ent.Created
	return res, nil
}

// Inputs is everything that decides what debootstrap produces, resolved
// (architecture, keyring digest, debootstrap version); its digest is the
// cache key, and it is the tree's provenance for a build manifest.
type Inputs struct {
	Format         int      `json:"format"`
	Suite          string   `json:"suite"`
	Mirror         string   `json:"mirror"`
	Keyring        string   `json:"keyring,omitempty"`
	KeyringSHA256  string   `json:"keyring_sha256,omitempty"`
	Variant        string   `json:"variant,omitempty"`
	Components     []string `json:"components,omitempty"`
	Include        []string `json:"include,omitempty"`
	Arch           string   `json:"arch"`
	DebootstrapVer string   `json:"debootstrap_version"`
}

func resolveInputs(ctx context.Context, spec Debootstrap) (Inputs, error) {
	in := Inputs{
		Format:     cacheFormat,
		Suite:      spec.Suite,
		Mirror:     spec.Mirror,
		Keyring:    spec.Keyring,
		Variant:    spec.Variant,
		Components: spec.Components,
		Arch:       spec.Arch,
	}
	// Order of included packages does not change the result.
	in.Include = slices.Compact(slices.Sorted(slices.Values(spec.Include)))
	var err error
	if in.DebootstrapVer, err = command.Output(ctx, "debootstrap", "--version"); err != nil {
		return in, err
	}
	if in.Arch == "" {
		if in.Arch, err = command.Output(ctx, "dpkg", "--print-architecture"); err != nil {
			return in, err
		}
	}
	if spec.Keyring != "" {
		// The keyring's content, not its path, decides what is trusted.
		data, err := os.ReadFile(spec.Keyring)
		if err != nil {
			return in, fmt.Errorf("keyring: %w", err)
		}
		sum := sha256.Sum256(data)
		in.KeyringSHA256 = hex.EncodeToString(sum[:])
	}
	return in, nil
}

func (in Inputs) key() string {
	b, _ := json.Marshal(in)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func (in Inputs) args(target string) []string {
	// --force-check-gpg: without a keyring for the suite (jammy on a Debian
	// build machine has none by default), debootstrap only warns and
	// installs unverified packages.
	args := []string{"--force-check-gpg"}
	if in.Variant != "" {
		args = append(args, "--variant="+in.Variant)
	}
	if len(in.Components) > 0 {
		args = append(args, "--components="+strings.Join(in.Components, ","))
	}
	if len(in.Include) > 0 {
		args = append(args, "--include="+strings.Join(in.Include, ","))
	}
	if in.Keyring != "" {
		args = append(args, "--keyring="+in.Keyring)
	}
	args = append(args, "--arch="+in.Arch)
	return append(args, in.Suite, target, in.Mirror)
}

// buildEntry runs debootstrap into a temporary directory next to the entry
// and renames it into place only when everything succeeded.
func (b *Builder) buildEntry(ctx context.Context, c cache, key string, spec Debootstrap, in Inputs) (entry, error) {
	fail := func(err error) (entry, error) {
		return entry{}, fmt.Errorf("debootstrap %s from %s: %w", spec.Suite, spec.Mirror, err)
	}
	tmp, err := c.newTemp(key)
	if err != nil {
		return fail(err)
	}
	// Whatever happens below, a temp dir never outlives this call; on
	// success it has been renamed away and this is a no-op.
	defer mounts.RemoveTree(tmp)

	target := filepath.Join(tmp, "rootfs")
	start := time.Now()
	out, err := b.runDebootstrap(ctx, in, target)
	task := out.task
	if err != nil {
		err = out.explain(err, filepath.Join(target, "debootstrap", "debootstrap.log"))
		task.Done(err)
		return fail(err)
	}
	if err := scrubHostFiles(target); err != nil {
		task.Done(err)
		return fail(err)
	}
	size, err := treeSize(target)
	if err != nil {
		task.Done(err)
		return fail(err)
	}
	task.Done(nil)
	ent := entry{Inputs: in, Created: time.Now().UTC(), SizeBytes: size, BuildSeconds: time.Since(start).Seconds()}
	if err := c.commit(key, tmp, ent); err != nil {
		return fail(err)
	}
	return ent, nil
}

// runDebootstrap runs debootstrap into target with the deb cache as its
// --cache-dir, while the prefetch fills that cache several packages at a
// time; it returns debootstrap's messages with its progress task (not done).
func (b *Builder) runDebootstrap(ctx context.Context, in Inputs, target string) (*messageLog, error) {
	debs, unlock, err := b.debCache(ctx)
	if err != nil {
		return &messageLog{task: b.progress().Start("debootstrap "+in.Suite, 0, "steps")}, err
	}
	type prefetched struct {
		st  prefetchStats
		err error
	}
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan prefetched, 1)
	go func() {
		st, err := b.prefetch(pctx, in, debs)
		done <- prefetched{st, err}
	}()
	// Once debootstrap has its debs, the deb cache is free for another
	// build: the prefetch ends (it is done long before) and the lock goes.
	var p prefetched
	release := sync.OnceFunc(func() {
		stop()
		p = <-done
		unlock()
	})

	task := b.progress().Start("debootstrap "+in.Suite, 0, "steps")
	// debootstrap writes its I:/W:/E: messages to stdout, not stderr.
	out := &messageLog{task: task, downloaded: release}
	_, err = command.Run(ctx, command.Cmd{
		Name:   "debootstrap",
		Args:   append([]string{"--cache-dir=" + debs}, in.args(target)...),
		Stdout: out,
		Log:    out,
	})
	// debootstrap mounts proc and sys in the target itself; when it is
	// killed (cancel) they stay behind. Unmount before anything else.
	if uerr := mounts.UnmountAll(target); uerr != nil && err == nil {
		err = uerr
	}
	release()
	switch {
	case err != nil:
	case p.err != nil:
		b.progress().Info("debootstrap %s: prefetch failed, debootstrap downloaded the packages itself: %v", in.Suite, p.err)
	default:
		b.progress().Info("debootstrap %s: %d packages listed: %d in the deb cache already, %d prefetched (%.1f MB, %d at a time, %d failed), %d downloaded by debootstrap itself",
			in.Suite, p.st.Listed, p.st.Cached, p.st.Fetched, float64(p.st.Bytes)/1e6, prefetchWorkers, p.st.Failed, out.retrieved)
	}
	return out, err
}

// debCache locks the deb cache (one debootstrap at a time downloads into
// it; Prune waits) and returns its path, with the partial downloads a killed
// build left removed.
func (b *Builder) debCache(ctx context.Context) (string, func(), error) {
	unlock, err := cache{dir: b.CacheDir}.lock(ctx, debsDir)
	if err != nil {
		return "", nil, err
	}
	dir, err := filepath.Abs(filepath.Join(b.CacheDir, debsDir)) // debootstrap takes only an absolute --cache-dir
	if err != nil {
		unlock()
		return "", nil, fmt.Errorf("deb cache: %w", err)
	}
	partial := filepath.Join(dir, "partial")
	if err := os.RemoveAll(partial); err == nil {
		err = os.MkdirAll(partial, 0o755)
	}
	if err != nil {
		unlock()
		return "", nil, fmt.Errorf("deb cache: %w", err)
	}
	return dir, unlock, nil
}

// scrubHostFiles removes what debootstrap copies from the build machine
// (its resolv.conf and hostname) and its own log (download times, the
// builder's paths): they describe the build, not the image, and would make
// two cold builds of the same inputs differ.
func scrubHostFiles(root string) error {
	for _, f := range []string{"etc/resolv.conf", "var/log/bootstrap.log"} {
		if err := os.Remove(filepath.Join(root, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("localhost\n"), 0o644)
}

// copyTree copies a cached tree to dest preserving owners, modes, hard
// links, xattrs and device nodes (cp -a), reflinking where the filesystem
// can. It copies into a temp dir next to dest and renames, so dest either
// holds the whole tree or does not exist.
func (b *Builder) copyTree(ctx context.Context, src, dest string, size int64) error {
	task := b.progress().Start("copy rootfs to "+dest, size, "bytes")
	tmp := dest + ".partial"
	if err := mounts.RemoveTree(tmp); err != nil {
		task.Done(err)
		return err
	}
	_, err := command.Run(ctx, command.Cmd{Name: "cp", Args: []string{"-a", "--reflink=auto", "--", src, tmp}})
	if err == nil {
		err = os.Rename(tmp, dest)
	}
	if err != nil {
		mounts.RemoveTree(tmp)
		err = fmt.Errorf("copy cached rootfs %s to %s: %w", src, dest, err)
		task.Done(err)
		return err
	}
	task.Set(size)
	task.Done(nil)
	return nil
}

// treeSize sums the sizes of regular files under root (for progress).
func treeSize(root string) (int64, error) {
	var total int64
	err := filepath.WalkDir(root, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
}

// messageLog counts debootstrap's "I: ..." lines as progress steps and
// keeps its warnings and errors for the error message.
type messageLog struct {
	mu        sync.Mutex // stdout and stderr are written from two goroutines
	task      *progress.Task
	retrieved int // .debs debootstrap downloaded itself ("I: Retrieving NAME VERSION")
	// downloaded, if set, is called when debootstrap has all its debs
	// (it chooses the extractor right after the download).
	downloaded func()
	rest       []byte
	problems   []string // W: and E: lines
	last       []string // the last few lines, when there are no E: lines
}

func (l *messageLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rest = append(l.rest, p...)
	for {
		i := bytes.IndexByte(l.rest, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimSpace(string(l.rest[:i]))
		l.rest = l.rest[i+1:]
		switch {
		case strings.HasPrefix(line, "I: "):
			l.task.Add(1)
			if f := strings.Fields(line); len(f) == 4 && f[1] == "Retrieving" {
				l.retrieved++
			}
			if l.downloaded != nil && strings.HasPrefix(line, "I: Chosen extractor") {
				l.downloaded()
			}
		case strings.HasPrefix(line, "E: "), strings.HasPrefix(line, "W: "):
			if len(l.problems) < 20 {
				l.problems = append(l.problems, line)
			}
		}
		if line != "" {
			l.last = append(l.last, line)
			if len(l.last) > 5 {
				l.last = l.last[1:]
			}
		}
	}
	if len(l.rest) > 4096 { // a line without end: drop it, it is only progress
		l.rest = l.rest[:0]
	}
	return len(p), nil
}

// explain adds what debootstrap said and the end of its debootstrap.log
// (which goes away with the temp dir) to err.
func (l *messageLog) explain(err error, logPath string) error {
	said := l.problems
	if len(said) == 0 {
		said = l.last
	}
	msg := ""
	if len(said) > 0 {
		msg = "\n" + strings.Join(said, "\n")
	}
	if data, rerr := os.ReadFile(logPath); rerr == nil && len(data) > 0 {
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 8 {
			lines = lines[len(lines)-8:]
		}
		msg += "\ndebootstrap.log (tail):\n" + strings.Join(lines, "\n")
	}
	if msg == "" {
		return err
	}
	return fmt.Errorf("%w%s", err, msg)
}
