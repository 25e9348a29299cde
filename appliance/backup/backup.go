// Package backup exports what a deployment's stacks declare (x-backup) into
// a folder, encrypted to the owner's age keys from the recipe: first each
// database's consistent dump, run in its running container, then the
// declared volume paths, each as a tar stream. Paths declared never to be
// restored from a periodic copy (a Lightning node's live channel database)
// are never copied; the manifest lists them. Nothing that can decrypt a
// backup is ever written beside it.
//
// The folder:
//
//	manifest.json                      what was taken, from where, when; each file's size and sha256
//	SHA256SUMS                         sha256sum -c format, over manifest.json and every .age file
//	<instance>/<service>/<file>.age    a dump
//	<instance>/<service>/<volume>[<path>].tar.age   a volume path (slashes in the path as '_')
package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"filippo.io/age"
	lxd "github.com/canonical/lxd/client"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/fence"
	"github.com/sovereign-stack/ssbuild/appliance/instancedocker"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/recipes/stacks"
)

// Names in the folder.
const (
	ManifestFile = "manifest.json"
	SumsFile     = signature.ChecksumsFile // sha256sum -c format, as the image folders
)

// Options say what to back up and where.
type Options struct {
	LXD        lxd.InstanceServer // any cluster member
	Recipe     *recipes.Recipe
	Deployment string // its name in the recipe
	To         string // the folder; created, must be empty
	// State holds the Lightning nodes' generations (the deploy's store):
	// each node's is recorded in the manifest.
	State    fence.Store
	Progress *progress.Reporter
}

// Manifest describes a backup folder.
type Manifest struct {
	Format     int       `json:"format"`
	Deployment string    `json:"deployment"`
	Project    string    `json:"project"`
	Created    time.Time `json:"created"`
	// Recipients are the age public keys the files are encrypted to.
	Recipients []string `json:"recipients"`
	Items      []Item   `json:"items"`
	// NeverRestored are the declared paths deliberately not in the backup.
	NeverRestored []Item `json:"neverRestored,omitempty"`
	// Absent are declared paths that did not exist when the backup ran
	// (for example a Lightning node's emergency.recover before its first channel).
	Absent []Item `json:"absent,omitempty"`
	// Lightning are the deployment's Lightning nodes with the generation
	// each had when the backup was taken: restore refuses to put back a
	// node's files when its generation has moved on since.
	Lightning []LightningNode `json:"lightning,omitempty"`
}

// LightningNode is a Lightning node in a backup.
type LightningNode struct {
	Instance   string `json:"instance"`
	Service    string `json:"service"`
	Generation int64  `json:"generation"`
}

// Item is one thing taken (or deliberately not taken).
type Item struct {
	File     string `json:"file,omitempty"` // in the folder, for items taken
	Kind     string `json:"kind"`           // dump or volume
	Instance string `json:"instance"`
	Service  string `json:"service"`
	Volume   string `json:"volume,omitempty"`
	Path     string `json:"path,omitempty"` // in the volume
	Size     int64  `json:"size,omitempty"` // of the encrypted file
	SHA256   string `json:"sha256,omitempty"`
}

const format = 1

// Run takes the backup. On error the folder may hold a partial backup
// without a manifest; verify refuses it.
func Run(ctx context.Context, o Options) (Manifest, error) {
	rep := o.Progress
	if rep == nil {
		rep = progress.Discard()
	}
	d, err := deploy.FindDeployment(o.Recipe, o.Deployment)
	if err != nil {
		return Manifest{}, err
	}
	if len(o.Recipe.Backup.Recipients) == 0 {
		return Manifest{}, errors.New("the recipe has no backup.recipients: add the age public key (age-keygen -y KEYFILE) a backup is encrypted to")
	}
	var recips []age.Recipient
	for _, k := range o.Recipe.Backup.Recipients {
		r, err := age.ParseX25519Recipient(k)
		if err != nil {
			return Manifest{}, fmt.Errorf("backup.recipients: not an age public key: %w", err)
		}
		recips = append(recips, r)
	}
	if err := emptyDir(o.To); err != nil {
		return Manifest{}, err
	}
	m := Manifest{Format: format, Deployment: d.Name, Project: d.Project(), Created: time.Now().UTC(),
		Recipients: o.Recipe.Backup.Recipients}
	pc := o.LXD.UseProject(d.Project())
	for _, role := range stack.Roles(d) {
		if !stacks.Has(d.Stack, role) {
			continue
		}
		st, err := declarations(o.Recipe, d, role)
		if err != nil {
			return m, err
		}
		if !declares(st) {
			continue
		}
		if svc := st.LightningService(); svc != nil {
			if o.State == nil {
				return m, fmt.Errorf("backup %s: instance %s runs a Lightning node and no state store was given to read its generation from", d.Name, role)
			}
			gen, err := o.State.LightningGeneration(ctx, fence.NodeName(d.Project(), role))
			if err != nil {
				return m, fmt.Errorf("backup %s: Lightning generation of %s: %w", d.Name, role, err)
			}
			m.Lightning = append(m.Lightning, LightningNode{Instance: role, Service: svc.Name, Generation: gen})
		}
		docker, err := instancedocker.Client(ctx, pc, role)
		if err != nil {
			return m, fmt.Errorf("backup %s: %w", d.Name, err)
		}
		err = backupInstance(ctx, docker, st, o.To, recips, &m, rep)
		docker.Close()
		if err != nil {
			return m, fmt.Errorf("backup %s, instance %s: %w", d.Name, role, err)
		}
	}
	if err := writeManifest(o.To, m); err != nil {
		return m, err
	}
	return m, nil
}

// declarations renders the role's stack for its x-backup declarations;
// they use no secret, so placeholders stand in for the deployment's.
func declarations(r *recipes.Recipe, d recipes.Deployment, role string) (*stack.Stack, error) {
	names, err := stack.SecretNames(d)
	if err != nil {
		return nil, err
	}
	placeholders := map[string]string{}
	for _, n := range names {
		placeholders[n] = "unused-by-backup"
	}
	return stack.Render(r, d, role, secrets.New(d.Project(), placeholders))
}

func declares(st *stack.Stack) bool {
	for _, svc := range st.Services {
		if svc.Backup != nil {
			return true
		}
	}
	return false
}

// backupInstance takes every dump of the instance first (they are the
// consistent copies), then the volume paths.
func backupInstance(ctx context.Context, c client.APIClient, st *stack.Stack, dir string, recips []age.Recipient, m *Manifest, rep *progress.Reporter) error {
	for _, svc := range st.Services {
		if svc.Backup == nil || svc.Backup.Dump == nil {
			continue
		}
		it := Item{Kind: "dump", Instance: st.Instance, Service: svc.Name,
			File: path.Join(st.Instance, svc.Name, svc.Backup.Dump.File+".age")}
		task := rep.Start(fmt.Sprintf("dump %s/%s", st.Instance, svc.Name), 0, "bytes")
		err := writeEncrypted(dir, &it, recips, func(w io.Writer) error {
			return execDump(ctx, c, st.ContainerName(svc.Name), svc.Backup.Dump.Command, w)
		})
		task.Done(err)
		if err != nil {
			return fmt.Errorf("service %s: dump: %w", svc.Name, err)
		}
		m.Items = append(m.Items, it)
	}
	for _, svc := range st.Services {
		if svc.Backup == nil {
			continue
		}
		for _, bp := range svc.Backup.NeverRestore {
			m.NeverRestored = append(m.NeverRestored, Item{Kind: "volume", Instance: st.Instance, Service: svc.Name, Volume: bp.Volume, Path: bp.Path})
		}
		for _, bp := range svc.Backup.Volumes {
			target := ""
			for _, mt := range svc.Mounts {
				if mt.Type == "volume" && mt.Source == bp.Volume {
					target = mt.Target
				}
			}
			it := Item{Kind: "volume", Instance: st.Instance, Service: svc.Name, Volume: bp.Volume, Path: bp.Path,
				File: path.Join(st.Instance, svc.Name, volumeFile(bp))}
			src := path.Join(target, bp.Path)
			if bp.Path == "/" {
				src = target + "/." // the volume's content, not the mount point's name
			}
			task := rep.Start(fmt.Sprintf("copy %s/%s %s", st.Instance, svc.Name, bp), 0, "bytes")
			err := writeEncrypted(dir, &it, recips, func(w io.Writer) error {
				rc, _, err := c.CopyFromContainer(ctx, st.ContainerName(svc.Name), src)
				if err != nil {
					return err
				}
				defer rc.Close()
				_, err = io.Copy(w, rc)
				return err
			})
			task.Done(err)
			if errdefs.IsNotFound(err) {
				it.File = ""
				m.Absent = append(m.Absent, it)
				continue
			}
			if err != nil {
				return fmt.Errorf("service %s: volume %s: %w", svc.Name, bp, err)
			}
			m.Items = append(m.Items, it)
		}
	}
	return nil
}

// volumeFile names a volume path's archive: the volume, then the path
// with its slashes as '_'.
func volumeFile(bp stack.BackupPath) string {
	if bp.Path == "/" {
		return bp.Volume + ".tar.age"
	}
	return bp.Volume + strings.ReplaceAll(bp.Path, "/", "_") + ".tar.age"
}

// execDump runs command in the running container and copies its stdout
// to w; a non-zero exit is an error with the end of its stderr.
func execDump(ctx context.Context, c client.APIClient, ctr string, command []string, w io.Writer) error {
	ex, err := c.ContainerExecCreate(ctx, ctr, container.ExecOptions{Cmd: command, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return err
	}
	att, err := c.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		return err
	}
	defer att.Close()
	var stderr tail
	if _, err := stdcopy.StdCopy(w, &stderr, att.Reader); err != nil {
		return err
	}
	insp, err := c.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		return err
	}
	if insp.ExitCode != 0 {
		return fmt.Errorf("%s exited %d: %s", command[0], insp.ExitCode, strings.TrimSpace(string(stderr.b)))
	}
	return nil
}

// tail keeps the last 2 KiB written to it.
type tail struct{ b []byte }

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 2048 {
		t.b = t.b[len(t.b)-2048:]
	}
	return len(p), nil
}

// writeEncrypted writes fill's output encrypted to recips into dir/it.File,
// recording the file's size and sha256 in it. On error the file is removed.
func writeEncrypted(dir string, it *Item, recips []age.Recipient, fill func(io.Writer) error) (err error) {
	p := filepath.Join(dir, filepath.FromSlash(it.File))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(p)
		}
	}()
	h := sha256.New()
	cw := &counter{w: io.MultiWriter(f, h)}
	enc, err := age.Encrypt(cw, recips...)
	if err != nil {
		return err
	}
	if err := fill(enc); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	it.Size, it.SHA256 = cw.n, hex.EncodeToString(h.Sum(nil))
	return nil
}

type counter struct {
	w io.Writer
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// emptyDir makes dir, or accepts it when it exists and is empty (a fresh
// mount point).
func emptyDir(dir string) error {
	if dir == "" {
		return errors.New("no backup folder given (--to DIR)")
	}
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return os.MkdirAll(dir, 0o700)
	case err != nil:
		return fmt.Errorf("backup folder %s: %w", dir, err)
	case len(entries) > 0:
		return fmt.Errorf("backup folder %s is not empty: give a new or empty folder (backups are never mixed)", dir)
	}
	return nil
}

// writeManifest writes manifest.json, then SHA256SUMS over it and every
// file: the sums are the last thing written, so a folder with them is whole.
func writeManifest(dir string, m Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), b, 0o600); err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	lines := []string{hex.EncodeToString(sum[:]) + "  " + ManifestFile}
	for _, it := range m.Items {
		lines = append(lines, it.SHA256+"  "+it.File)
	}
	sort.Strings(lines[1:])
	tmp := filepath.Join(dir, SumsFile+".tmp")
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, SumsFile))
}
