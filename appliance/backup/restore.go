package backup

import (
	"context"
	"fmt"
	"io"
	"path"
	"path/filepath"
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
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// RestoreOptions say which backup goes back into which deployment.
type RestoreOptions struct {
	LXD        lxd.InstanceServer // any cluster member
	Recipe     *recipes.Recipe
	Deployment string // its name in the recipe; it must be deployed (its services running)
	From       string // a folder of backups (its newest of the deployment), or one backup in it
	Backup     string // a backup's name in From (backup list), instead of the newest
	Identities []age.Identity
	// Signer is the public key the manifest must be signed with; without
	// it, the key the deployment's secrets in State give. A cluster that
	// holds no backup key for the deployment (a fresh one, or after down
	// --purge) needs it: `backup` printed it.
	Signer string
	// State holds the deployment's secrets (its backup key) and its
	// Lightning nodes' generations (the deploy's store).
	State State
	// Member names the host the restore runs on, in the deployment's lease.
	Member string
	// RecoverLightning is the owner's explicit choice to recover a
	// Lightning node from its static backup: only the x-lightning static
	// files (seed, static channel backup) of its service come back, also
	// from a backup older than the node's live state.
	RecoverLightning bool
	Progress         *progress.Reporter
}

// RecoverFlag is the command-line flag of RestoreOptions.RecoverLightning.
const RecoverFlag = "--lightning-recover-from-static-backup"

// StaleLightning refuses a restore that would put back a Lightning node's
// files from a backup older than the node's live state; nothing changed.
type StaleLightning struct {
	Deployment, Instance string
	Backup, Current      int64 // generations
	Taken                time.Time
}

func (e *StaleLightning) Error() string {
	return fmt.Sprintf("restore %s: the backup (taken %s) holds the Lightning node of %s at generation %d, older than its live state "+
		"(generation %d: the node was restored or migrated, and ran on, since): putting its files back could lose the channels' funds; "+
		"nothing changed. To recover the node from its static backup only (hsm_secret, emergency.recover; never the channel database), "+
		"run the restore again with %s",
		e.Deployment, e.Taken.Format("2006-01-02 15:04:05Z"), e.Instance, e.Backup, e.Current, RecoverFlag)
}

// Restore puts a backup back into the running deployment it was taken
// from: it verifies the whole folder first (nothing changes when a file
// is damaged or does not decrypt), then copies the volume paths back into
// their services' volumes and feeds each dump to its service's restore
// command. Paths declared never-restore are not in a backup, so they are
// never overwritten. An instance's Lightning node is stopped meanwhile,
// then given a new generation (older copies of it never start again) and
// started; a backup older than the node's live state (its generation moved
// on since) is refused before any change (StaleLightning) unless
// RecoverLightning, which puts back only the node's static files.
func Restore(ctx context.Context, o RestoreOptions) error {
	rep := o.Progress
	if rep == nil {
		rep = progress.Discard()
	}
	d, err := deploy.FindDeployment(o.Recipe, o.Deployment)
	if err != nil {
		return err
	}
	if len(o.Identities) == 0 {
		return fmt.Errorf("restore %s: no identity to decrypt the backup with (--identity FILE)", d.Name)
	}
	if o.State == nil {
		return fmt.Errorf("restore %s: no state store was given (its Lightning generations and lease are kept there)", d.Name)
	}
	ctx, release, err := deploystate.HoldDeployment(ctx, o.State, d.Project(), o.Member, "restore")
	if err != nil {
		return err
	}
	defer release()
	from := o.From
	if o.Backup != "" {
		if strings.ContainsAny(o.Backup, `/\`) || strings.HasPrefix(o.Backup, ".") {
			return fmt.Errorf("restore %s: --backup %q: want a name backup list shows", d.Name, o.Backup)
		}
		from = filepath.Join(o.From, backupsDir, o.Backup)
	} else if from, err = Latest(o.From, d.Project()); err != nil {
		return fmt.Errorf("restore %s: %w", d.Name, err)
	}
	signer := o.Signer
	if signer == "" {
		keys, err := DeploymentKeys(ctx, o.State, d.Project(), false)
		if err != nil {
			return fmt.Errorf("restore %s: %w", d.Name, err)
		}
		if keys != nil {
			signer = keys.Signer()
		}
	}
	if signer == "" {
		return fmt.Errorf("restore %s: this cluster holds no backup key of %s to check the backup's signature with: give --signer KEY, the key `ssbuild backup` printed", d.Name, d.Project())
	}
	m, err := VerifyWith(from, VerifyOptions{Identities: o.Identities, Signer: signer})
	if err != nil {
		return fmt.Errorf("restore %s: the backup does not verify, nothing changed: %w", d.Name, err)
	}
	if m.Project != d.Project() {
		return fmt.Errorf("restore %s: the backup in %s is of %s, not %s (restoring into another deployment is not supported yet)", d.Name, o.From, m.Project, d.Project())
	}
	// The Lightning nodes first: nothing changes when one is refused.
	stacks := map[string]*stack.Stack{}
	for _, it := range m.Items {
		if stacks[it.Instance] != nil {
			continue
		}
		st, err := declarations(o.Recipe, d, it.Instance)
		if err != nil {
			return err
		}
		stacks[it.Instance] = st
		if st.LightningService() == nil {
			continue
		}
		cur, err := o.State.LightningGeneration(ctx, fence.NodeName(d.Project(), it.Instance))
		if err != nil {
			return fmt.Errorf("restore %s: Lightning generation of %s: %w", d.Name, it.Instance, err)
		}
		var taken int64
		for _, n := range m.Lightning {
			if n.Instance == it.Instance {
				taken = n.Generation
			}
		}
		if cur > taken && !o.RecoverLightning {
			return &StaleLightning{Deployment: d.Name, Instance: it.Instance, Backup: taken, Current: cur, Taken: m.Created}
		}
	}
	byInstance := map[string][]Item{}
	var order []string
	for _, it := range m.Items {
		if _, ok := byInstance[it.Instance]; !ok {
			order = append(order, it.Instance)
		}
		byInstance[it.Instance] = append(byInstance[it.Instance], it)
	}
	pc := o.LXD.UseProject(d.Project())
	for _, role := range order {
		st := stacks[role]
		docker, err := instancedocker.Client(ctx, pc, role)
		if err != nil {
			return fmt.Errorf("restore %s: %w", d.Name, err)
		}
		items := lightningItems(st, byInstance[role], o.RecoverLightning)
		err = restoreLightning(ctx, docker, st, o, func() error {
			if err := setAsideOtherSeed(ctx, docker, st, from, o.Identities, items, rep); err != nil {
				return err
			}
			return restoreInstance(ctx, docker, st, from, o.Identities, items, rep)
		})
		docker.Close()
		if err != nil {
			return fmt.Errorf("restore %s, instance %s: %w", d.Name, role, err)
		}
	}
	return nil
}

// restoreLightning runs restore with the instance's Lightning node (if it
// has one) stopped, then makes the restored copy the node's only current
// one (a new generation: any copy from before the restore is refused) and
// starts it.
func restoreLightning(ctx context.Context, c client.APIClient, st *stack.Stack, o RestoreOptions, restore func() error) error {
	if st.LightningService() == nil {
		return restore()
	}
	if err := fence.Stop(ctx, c, st); err != nil {
		return err
	}
	if err := restore(); err != nil {
		return err
	}
	from, to, err := fence.Bump(ctx, c, o.State, st, "restore from "+o.From)
	if err != nil {
		return err
	}
	if o.Progress != nil {
		o.Progress.Info("%s/%s: Lightning generation %d -> %d", st.Project, st.Instance, from, to)
	}
	return fence.Start(ctx, c, o.State, st)
}

// lightningItems leaves out, when recovering the node from its static
// backup, every item of its service but the declared static files.
func lightningItems(st *stack.Stack, items []Item, recover bool) []Item {
	svc := st.LightningService()
	if svc == nil || !recover {
		return items
	}
	var out []Item
	for _, it := range items {
		if it.Service != svc.Name || (it.Kind == "volume" && it.Volume == svc.Lightning.Volume && slices.Contains(svc.Lightning.Static, it.Path)) {
			out = append(out, it)
		}
	}
	return out
}

// restoreInstance copies the volume paths back first, with their services
// stopped (a running app would write over files as they land, or go on
// from what it read when it started), and starts those services again;
// then it restores the dumps (a database's files are never copied; its
// dump is its backup) into their running servers. The Lightning node's
// service is not stopped or started here: restoreLightning holds it
// stopped until its new generation is recorded.
func restoreInstance(ctx context.Context, c client.APIClient, st *stack.Stack, dir string, ids []age.Identity, items []Item, rep *progress.Reporter) error {
	var stop []string // the services whose volumes are restored
	for _, it := range items {
		svc := st.Service(it.Service)
		if svc == nil || svc.Backup == nil {
			return fmt.Errorf("%s: service %s no longer declares a backup in the stack", it.File, it.Service)
		}
		if it.Kind == "volume" && svc != st.LightningService() && !slices.Contains(stop, svc.Name) {
			stop = append(stop, svc.Name)
		}
	}
	for _, name := range stop {
		task := rep.Start("stop "+st.ContainerName(name)+" while its volumes are restored", 0, "")
		err := c.ContainerStop(ctx, st.ContainerName(name), container.StopOptions{})
		task.Done(err)
		if err != nil {
			return fmt.Errorf("stop service %s before restoring its volumes: %w", name, err)
		}
	}
	for _, kind := range []string{"volume", "dump"} {
		if kind == "dump" {
			for _, name := range stop {
				if err := c.ContainerStart(ctx, st.ContainerName(name), container.StartOptions{}); err != nil {
					return fmt.Errorf("start service %s after restoring its volumes: %w", name, err)
				}
			}
		}
		for _, it := range items {
			if it.Kind != kind {
				continue
			}
			svc := st.Service(it.Service)
			task := rep.Start("restore "+it.File, 0, "")
			var err error
			if kind == "volume" {
				err = restoreVolume(ctx, c, st, svc, dir, ids, it)
			} else {
				err = restoreDump(ctx, c, st.ContainerName(svc.Name), svc.Backup.Dump, dir, ids, it)
			}
			task.Done(err)
			if err != nil && kind == "volume" {
				// Left stopped: what runs there would serve a volume
				// half put back. A restore run again starts them.
				return fmt.Errorf("%s: %w (services %s left stopped: run the restore again)", it.File, err, strings.Join(stop, ", "))
			}
			if err != nil {
				return fmt.Errorf("%s: %w", it.File, err)
			}
		}
	}
	return nil
}

func restoreVolume(ctx context.Context, c client.APIClient, st *stack.Stack, svc *stack.Service, dir string, ids []age.Identity, it Item) error {
	target := ""
	for _, mt := range svc.Mounts {
		if mt.Type == "volume" && mt.Source == it.Volume {
			target = mt.Target
		}
	}
	if target == "" {
		return fmt.Errorf("service %s no longer mounts volume %s", svc.Name, it.Volume)
	}
	// The archive holds the volume's content ("/") or the path's last
	// element: it unpacks into the mount point or the path's folder.
	dst := target
	if it.Path != "/" {
		dst = path.Dir(path.Join(target, it.Path))
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(Decrypt(dir, it.File, ids, pw)) }()
	err := c.CopyToContainer(ctx, st.ContainerName(svc.Name), dst, pr, container.CopyToContainerOptions{CopyUIDGID: true})
	pr.CloseWithError(err)
	return err
}

// restoreDump runs the dump's restore command in the service's running
// container with the decrypted dump on its stdin.
func restoreDump(ctx context.Context, c client.APIClient, ctr string, d *stack.Dump, dir string, ids []age.Identity, it Item) error {
	if d == nil {
		return fmt.Errorf("service %s no longer declares a dump", it.Service)
	}
	ex, err := c.ContainerExecCreate(ctx, ctr, container.ExecOptions{Cmd: d.Restore, AttachStdin: true, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return err
	}
	att, err := c.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		return err
	}
	defer att.Close()
	fed := make(chan error, 1)
	go func() {
		err := Decrypt(dir, it.File, ids, att.Conn)
		if cerr := att.CloseWrite(); err == nil {
			err = cerr
		}
		fed <- err
	}()
	var out tail
	if _, err := stdcopy.StdCopy(&out, &out, att.Reader); err != nil {
		return err
	}
	if err := <-fed; err != nil {
		return err
	}
	insp, err := c.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		return err
	}
	if insp.ExitCode != 0 {
		return fmt.Errorf("%s exited %d: %s", d.Restore[0], insp.ExitCode, strings.TrimSpace(string(out.b)))
	}
	return nil
}
