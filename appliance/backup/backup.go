// Package backup exports what a deployment's stacks declare (x-backup) into
// a folder, encrypted to the owner's age keys from the recipe: first each
// database's consistent dump, run in its running container, then the
// declared volume paths, each as a tar stream. Paths declared never to be
// restored from a periodic copy (a Lightning node's live channel database)
// are never copied; the manifest lists them. Nothing that can decrypt a
// backup is ever written beside it.
//
// Each item is cut into content-defined chunks stored once per folder
// (store.go has the layout), so a second backup into the same folder
// writes only what changed, and every backup in it stays whole on its own.
package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"

	"filippo.io/age"
	lxd "github.com/canonical/lxd/client"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
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
	To         string // the folder: new, empty, or holding earlier backups
	// State holds the deployment's secrets (the backup key, KeySecret, is
	// made there on the first backup) and its Lightning nodes'
	// generations, each recorded in the manifest.
	State State
	// Member names the host the backup runs on, in the deployment's lease.
	Member   string
	Progress *progress.Reporter
	// FilesCache is the folder of this machine's files caches, which let
	// an incremental backup read only the changed files of the volume
	// paths; "" is DefaultFilesCache().
	FilesCache string
}

// Manifest describes a backup folder.
type Manifest struct {
	Format int `json:"format"`
	// Name is the backup's folder under backups/ (its UTC start time).
	Name       string    `json:"name"`
	Deployment string    `json:"deployment"`
	Project    string    `json:"project"`
	Created    time.Time `json:"created"`
	// Recipients are the age public keys the files are encrypted to.
	Recipients []string `json:"recipients"`
	// Signer is the public key whose signature manifest.sig holds; a
	// restore checks it against the cluster's own key or --signer.
	Signer string `json:"signer"`
	Items  []Item `json:"items"`
	// NeverRestored are the declared paths deliberately not in the backup.
	NeverRestored []Item `json:"neverRestored,omitempty"`
	// Absent are declared paths that did not exist when the backup ran
	// (for example a Lightning node's emergency.recover before its first channel).
	Absent []Item `json:"absent,omitempty"`
	// Stats say what the run that wrote it read and wrote (not in the file).
	Stats Stats `json:"-"`
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
	File     string  `json:"file,omitempty"` // its name in the backup, for items taken
	Kind     string  `json:"kind"`           // dump or volume
	Instance string  `json:"instance"`
	Service  string  `json:"service"`
	Volume   string  `json:"volume,omitempty"`
	Path     string  `json:"path,omitempty"`   // in the volume
	Size     int64   `json:"size,omitempty"`   // plain bytes
	Chunks   []Chunk `json:"chunks,omitempty"` // its content, in order
}

// format 3: chunks shared by the backups of a folder, each S2-compressed
// when that pays and named under the "chunk names v2" key (2 stored them
// raw under v1 names; 1 was one file per item). Only format 3 is read.
const format = 3

// Run takes the backup. On error the unfinished backup is removed, or
// kept for the next one to resume when it wrote a checkpoint (resume.go);
// chunks it wrote stay until `backup prune`.
func Run(ctx context.Context, o Options) (Manifest, error) {
	rep := o.Progress
	if rep == nil {
		rep = progress.Discard()
	}
	d, err := deploy.FindDeployment(o.Recipe, o.Deployment)
	if err != nil {
		return Manifest{}, err
	}
	if o.State == nil {
		return Manifest{}, fmt.Errorf("backup %s: no state store was given (its backup key is kept there)", d.Name)
	}
	ctx, release, err := deploystate.HoldDeployment(ctx, o.State, d.Project(), o.Member, "backup")
	if err != nil {
		return Manifest{}, err
	}
	defer release()
	recips, err := Recipients(o.Recipe.Backup.Recipients)
	if err != nil {
		return Manifest{}, err
	}
	keys, err := DeploymentKeys(ctx, o.State, d.Project(), true)
	if err != nil {
		return Manifest{}, fmt.Errorf("backup %s: %w", d.Name, err)
	}
	m := Manifest{Deployment: d.Name, Project: d.Project(), Created: time.Now().UTC(),
		Recipients: slices.Clone(o.Recipe.Backup.Recipients)}
	if o.Recipe.Backup.RestoreTest.Enabled() {
		// The owner opted into scheduled restore tests: the cluster's own
		// key of the deployment reads the backup too.
		id, err := keys.TestIdentity()
		if err != nil {
			return Manifest{}, fmt.Errorf("backup %s: %w", d.Name, err)
		}
		recips = append(recips, id.Recipient())
		m.Recipients = append(m.Recipients, id.Recipient().String())
	}
	if m.Lightning, err = lightningNodes(ctx, o, d); err != nil {
		return m, err
	}
	w, err := NewWriter(o.To, m, keys, recips)
	if err != nil {
		return m, err
	}
	if r := w.Resumed(); len(r) > 0 {
		rep.Info("resuming: the chunks the interrupted backup %s wrote are reused", strings.Join(r, ", "))
	}
	w.FilesCache = o.FilesCache
	if w.FilesCache == "" {
		w.FilesCache = DefaultFilesCache()
	}
	if err := runInstances(ctx, o, d, w, rep); err != nil {
		w.Abort()
		return m, err
	}
	return w.Close()
}

// Recipients parses the recipe's backup.recipients.
func Recipients(keys []string) ([]age.Recipient, error) {
	if len(keys) == 0 {
		return nil, errors.New("the recipe has no backup.recipients: add the age public key (age-keygen -y KEYFILE) a backup is encrypted to")
	}
	var recips []age.Recipient
	for _, k := range keys {
		r, err := age.ParseX25519Recipient(k)
		if err != nil {
			return nil, fmt.Errorf("backup.recipients: not an age public key: %w", err)
		}
		recips = append(recips, r)
	}
	return recips, nil
}

func runInstances(ctx context.Context, o Options, d recipes.Deployment, w *Writer, rep *progress.Reporter) error {
	pc := o.LXD.UseProject(d.Project())
	for _, role := range stack.Roles(d) {
		if !stacks.Has(d.Stack, role) {
			continue
		}
		st, err := declarations(o.Recipe, d, role)
		if err != nil {
			return err
		}
		if !declares(st) {
			continue
		}
		docker, err := instancedocker.Client(ctx, pc, role)
		if err != nil {
			return fmt.Errorf("backup %s: %w", d.Name, err)
		}
		err = backupInstance(ctx, docker, LXDRunner{LXD: pc, Instance: role}, st, w, rep)
		docker.Close()
		if err != nil {
			return fmt.Errorf("backup %s, instance %s: %w", d.Name, role, err)
		}
	}
	return nil
}

// lightningNodes are the deployment's Lightning nodes with their current
// generations, for the manifest.
func lightningNodes(ctx context.Context, o Options, d recipes.Deployment) ([]LightningNode, error) {
	var nodes []LightningNode
	for _, role := range stack.Roles(d) {
		if !stacks.Has(d.Stack, role) {
			continue
		}
		st, err := declarations(o.Recipe, d, role)
		if err != nil {
			return nil, err
		}
		svc := st.LightningService()
		if svc == nil {
			continue
		}
		gen, err := o.State.LightningGeneration(ctx, fence.NodeName(d.Project(), role))
		if err != nil {
			return nil, fmt.Errorf("backup %s: Lightning generation of %s: %w", d.Name, role, err)
		}
		nodes = append(nodes, LightningNode{Instance: role, Service: svc.Name, Generation: gen})
	}
	return nodes, nil
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
// consistent copies), then the volume paths, read by run in the instance
// from the volumes' folders (volume.go).
func backupInstance(ctx context.Context, c client.APIClient, run Runner, st *stack.Stack, w *Writer, rep *progress.Reporter) error {
	for _, svc := range st.Services {
		if svc.Backup == nil || svc.Backup.Dump == nil {
			continue
		}
		it := Item{Kind: "dump", Instance: st.Instance, Service: svc.Name,
			File: path.Join(st.Instance, svc.Name, svc.Backup.Dump.File+".age")}
		task := rep.Start(fmt.Sprintf("dump %s/%s", st.Instance, svc.Name), 0, "bytes")
		err := w.Add(it, func(out io.Writer) error {
			return execDump(ctx, c, st.ContainerName(svc.Name), svc.Backup.Dump.Command, out)
		})
		task.Done(err)
		if err != nil {
			return fmt.Errorf("service %s: dump: %w", svc.Name, err)
		}
	}
	var paths []volumePath
	for _, svc := range st.Services {
		if svc.Backup == nil {
			continue
		}
		for _, bp := range svc.Backup.NeverRestore {
			w.m.NeverRestored = append(w.m.NeverRestored, Item{Kind: "volume", Instance: st.Instance, Service: svc.Name, Volume: bp.Volume, Path: bp.Path})
		}
		for _, bp := range svc.Backup.Volumes {
			target := ""
			for _, mt := range svc.Mounts {
				if mt.Type == "volume" && mt.Source == bp.Volume {
					target = mt.Target
				}
			}
			ctr := st.ContainerName(svc.Name)
			paths = append(paths, volumePath{
				it: Item{Kind: "volume", Instance: st.Instance, Service: svc.Name, Volume: bp.Volume, Path: bp.Path,
					File: path.Join(st.Instance, svc.Name, volumeFile(bp))},
				desc: bp.String(),
				source: func() (VolumeSource, error) {
					dir, err := volumeDir(ctx, c, ctr, target)
					return VolumeSource{Run: run, Dir: dir, Path: bp.Path}, err
				},
			})
		}
	}
	return w.addVolumes(ctx, paths, rep)
}

// volumeDir is the folder, on the instance's disk, of the volume the
// container mounts at target.
func volumeDir(ctx context.Context, c client.APIClient, ctr, target string) (string, error) {
	insp, err := c.ContainerInspect(ctx, ctr)
	if err != nil {
		return "", err
	}
	for _, mt := range insp.Mounts {
		if mt.Destination == target && mt.Type == "volume" && mt.Source != "" {
			return mt.Source, nil
		}
	}
	return "", fmt.Errorf("container %s mounts no volume at %s", ctr, target)
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

// State is what backup and restore need of the deployment's state store
// (appliance/deploystate): its secrets, where the backup key is kept, its
// Lightning nodes' generations, and the deployment's lease, held while
// one runs (deploystate.HoldDeployment).
type State interface {
	secrets.Store
	fence.Store
	deploystate.Leases
}
