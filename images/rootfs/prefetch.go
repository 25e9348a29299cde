package rootfs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/gzip"
	"golang.org/x/sync/errgroup"
)

// The deb cache, CacheDir/debs, holds the .deb files debootstrap installs,
// named as debootstrap's --cache-dir names them (NAME_VERSION_ARCH.deb).
// debootstrap downloads one .deb at a time and the mirror is latency-bound,
// so while debootstrap resolves its dependencies the prefetch below fetches
// the same packages several at a time into that folder.
//
// The prefetch needs no trust of its own: debootstrap checks every file it
// takes from its cache dir against the SHA256 and size of the Packages index
// it verified with the keyring, and downloads the package again when the
// file does not match. The prefetch also checks each download against the
// index it read (unsigned, so only to avoid placing junk), and only ever
// creates names (link, never rename over): a file debootstrap has verified
// is never replaced under it.
const (
	debsDir         = "debs"
	prefetchWorkers = 8
)

// debFile is one package of a Packages index.
type debFile struct {
	Name, Version, Arch, Filename, SHA256, Priority string
	Size                                            int64
	Depends                                         []string // Depends and Pre-Depends, first alternatives
}

// cacheName is the file name debootstrap gives the package in its cache dir
// (its sed 's/:/%3a/' replaces the first colon only).
func (d *debFile) cacheName() string {
	return strings.Replace(d.Name+"_"+d.Version+"_"+d.Arch+".deb", ":", "%3a", 1)
}

type prefetchStats struct {
	Listed, Cached, Fetched, Failed int
	Bytes                           int64
}

// prefetch fetches the debs debootstrap will install for in into dir (the
// deb cache), prefetchWorkers at a time. A package it cannot fetch is left
// to debootstrap, so only a failure to read the index is an error.
func (b *Builder) prefetch(ctx context.Context, in Inputs, dir string) (prefetchStats, error) {
	var st prefetchStats
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = prefetchWorkers // reuse the connections: the mirror is latency-bound
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	list, err := prefetchList(ctx, client, in)
	if err != nil {
		return st, err
	}
	st.Listed = len(list)
	var todo []*debFile
	var total int64
	now := time.Now()
	for _, d := range list {
		final := filepath.Join(dir, d.cacheName())
		if _, err := os.Stat(final); err == nil {
			st.Cached++
			os.Chtimes(final, now, now) // used now: Prune keeps it
			continue
		}
		todo = append(todo, d)
		total += d.Size
	}
	if len(todo) == 0 {
		return st, nil
	}
	task := b.progress().Start(fmt.Sprintf("prefetch %d debs for %s", len(todo), in.Suite), total, "bytes")
	var fetched, failed, placed atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(prefetchWorkers)
	for _, d := range todo {
		g.Go(func() error {
			n, err := fetchDeb(gctx, client, in.Mirror, d, dir, task)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				failed.Add(1) // debootstrap downloads it itself
				return nil
			}
			fetched.Add(1)
			placed.Add(n)
			return nil
		})
	}
	err = g.Wait()
	st.Fetched, st.Failed, st.Bytes = int(fetched.Load()), int(failed.Load()), placed.Load()
	task.Done(err)
	return st, err
}

// fetchDeb downloads d into dir under its cache name unless that name
// exists meanwhile; it returns the bytes it placed.
func fetchDeb(ctx context.Context, client *http.Client, mirror string, d *debFile, dir string, task io.Writer) (int64, error) {
	tmp, err := os.CreateTemp(filepath.Join(dir, "partial"), ".prefetch-"+d.cacheName()+"-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, mirror+"/"+d.Filename, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: server answered %s", d.Filename, resp.Status)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h, task), io.LimitReader(resp.Body, d.Size+1))
	if err != nil {
		return 0, err
	}
	if n != d.Size || hex.EncodeToString(h.Sum(nil)) != d.SHA256 {
		return 0, fmt.Errorf("%s: %d bytes not matching the index", d.Filename, n)
	}
	// The mode wget gives a download: debootstrap copies the file into the
	// tree's var/cache/apt/archives, where it must not differ.
	if err := tmp.Chmod(0o666 &^ umask()); err != nil {
		return 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, err
	}
	// Link, not rename: never replace a file debootstrap may have checked.
	if err := os.Link(tmp.Name(), filepath.Join(dir, d.cacheName())); err != nil && !errors.Is(err, os.ErrExist) {
		return 0, err
	}
	return n, nil
}

// umask is the process's file mode creation mask (the kernel shows it in
// /proc/self/status; setting it to read it would race other goroutines).
func umask() os.FileMode {
	data, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for line := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(line, "Umask:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return os.FileMode(m)
				}
			}
		}
	}
	return 0o022
}

// prefetchList reads the suite's Packages indexes from the mirror and
// returns the packages debootstrap will download for in.
func prefetchList(ctx context.Context, client *http.Client, in Inputs) ([]*debFile, error) {
	rel, err := httpGet(ctx, client, in.Mirror+"/dists/"+in.Suite+"/InRelease")
	if err != nil {
		return nil, err
	}
	codename := in.Suite
	for line := range strings.Lines(string(rel)) {
		if v, ok := strings.CutPrefix(line, "Codename:"); ok {
			codename = strings.TrimSpace(v)
			break
		}
	}
	comps := in.Components
	if len(comps) == 0 {
		comps = []string{"main"}
	}
	idx := map[string]*debFile{}
	for _, c := range comps {
		one, err := readPackages(ctx, client, fmt.Sprintf("%s/dists/%s/%s/binary-%s/Packages", in.Mirror, in.Suite, c, in.Arch))
		if err != nil {
			return nil, err
		}
		for name, d := range one {
			if _, ok := idx[name]; !ok { // debootstrap takes a package from the first component that has it
				idx[name] = d
			}
		}
	}
	script, _ := filepath.EvalSymlinks(filepath.Join("/usr/share/debootstrap/scripts", in.Suite))
	return debootstrapDebs(idx, in, codename, filepath.Base(script)), nil
}

func httpGet(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: server answered %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// readPackages fetches and parses one Packages index (Packages.gz, else
// Packages.xz through xz).
func readPackages(ctx context.Context, client *http.Client, url string) (map[string]*debFile, error) {
	data, err := httpGet(ctx, client, url+".gz")
	if err == nil {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("%s.gz: %w", url, err)
		}
		defer zr.Close()
		idx, err := parsePackages(zr)
		if err != nil {
			return nil, fmt.Errorf("%s.gz: %w", url, err)
		}
		return idx, nil
	}
	if data, err = httpGet(ctx, client, url+".xz"); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "xz", "-dc")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s.xz: xz: %w", url, err)
	}
	idx, err := parsePackages(bytes.NewReader(out))
	if err != nil {
		return nil, fmt.Errorf("%s.xz: %w", url, err)
	}
	return idx, nil
}

// parsePackages reads the fields the resolution and the download need; a
// later stanza of the same package replaces an earlier one, as in
// debootstrap's pkgdetails.
func parsePackages(r io.Reader) (map[string]*debFile, error) {
	idx := map[string]*debFile{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	d := &debFile{}
	end := func() {
		if d.Name != "" {
			idx[d.Name] = d
		}
		d = &debFile{}
	}
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			end()
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // continuation of a field we do not read
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Package":
			d.Name = v
		case "Version":
			d.Version = v
		case "Architecture":
			d.Arch = v
		case "Filename":
			d.Filename = v
		case "SHA256":
			d.SHA256 = v
		case "Priority":
			d.Priority = v
		case "Size":
			d.Size, _ = strconv.ParseInt(v, 10, 64)
		case "Depends", "Pre-Depends":
			d.Depends = append(d.Depends, firstAlternatives(v)...)
		}
	}
	end()
	return idx, sc.Err()
}

// firstAlternatives reduces a Depends field to package names as
// debootstrap's GETDEPS does: the first alternative of each, without
// version or architecture qualifier.
func firstAlternatives(field string) []string {
	var names []string
	for dep := range strings.SplitSeq(field, ",") {
		dep, _, _ = strings.Cut(dep, "|")
		dep, _, _ = strings.Cut(dep, "(")
		dep, _, _ = strings.Cut(dep, ":")
		if dep = strings.TrimSpace(dep); dep != "" {
			names = append(names, dep)
		}
	}
	return names
}

// debootstrapDebs is the package set debootstrap's work_out_debs and
// resolve_deps pick (debootstrap 1.0.128, scripts debian-common and gutsy):
// Priority required plus the variant's base packages and --include, closed
// over the first alternatives of Depends and Pre-Depends that are real
// packages. A package it misses is downloaded by debootstrap itself; one
// too many costs a download.
func debootstrapDebs(idx map[string]*debFile, in Inputs, codename, script string) []*debFile {
	var required, base, exclude []string
	for name, d := range idx {
		if d.Priority == "required" {
			required = append(required, name)
		}
	}
	switch in.Variant {
	case "", "-", "fakechroot":
		for name, d := range idx {
			if d.Priority == "important" {
				base = append(base, name)
			}
		}
	case "buildd":
		base = []string{"apt", "build-essential"}
	case "minbase":
		base = []string{"apt"}
	}
	if in.Variant == "fakechroot" {
		required = append(required, "binutils")
	}
	if strings.HasPrefix(in.Mirror, "https://") {
		base = append(base, "ca-certificates")
	}
	if script == "sid" { // Debian's debian-common
		switch codename {
		case "etch", "lenny", "squeeze", "wheezy", "jessie", "stretch", "buster", "bullseye":
		case "bookworm":
			required = append(required, "usr-is-merged")
			exclude = []string{"usrmerge"}
		default:
			exclude = []string{"usrmerge"}
		}
	}
	base = append(base, in.Include...)

	all := map[string]bool{}
	for _, start := range [][]string{required, base} {
		pkgs := slices.Clone(start)
		for _, p := range pkgs {
			all[p] = true
		}
		for len(pkgs) > 0 {
			var next []string
			for _, p := range pkgs {
				d := idx[p]
				if d == nil {
					continue
				}
				for _, dep := range d.Depends {
					if !all[dep] && idx[dep] != nil && !slices.Contains(exclude, dep) {
						all[dep] = true
						next = append(next, dep)
					}
				}
			}
			pkgs = next
		}
	}
	var list []*debFile
	for name := range all {
		if d := idx[name]; d != nil && d.Filename != "" {
			list = append(list, d)
		}
	}
	slices.SortFunc(list, func(a, b *debFile) int { return strings.Compare(a.Name, b.Name) })
	return list
}
