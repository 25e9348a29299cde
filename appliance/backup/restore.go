package backup

import (
	"context"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"strings"

	"filippo.io/age"
	lxd "github.com/canonical/lxd/client"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/instancedocker"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
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
	Signer   string
	State    secrets.Store
	Progress *progress.Reporter
}

// Restore puts a backup back into the running deployment it was taken
// from: it verifies the whole folder first (nothing changes when a file
// is damaged or does not decrypt), then copies the volume paths back into
// their services' volumes and feeds each dump to its service's restore
// command. Paths declared never-restore are not in a backup, so they are
// never overwritten.
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
	if signer == "" && o.State != nil {
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
		st, err := declarations(o.Recipe, d, role)
		if err != nil {
			return err
		}
		docker, err := instancedocker.Client(ctx, pc, role)
		if err != nil {
			return fmt.Errorf("restore %s: %w", d.Name, err)
		}
		err = restoreInstance(ctx, docker, st, from, o.Identities, byInstance[role], rep)
		docker.Close()
		if err != nil {
			return fmt.Errorf("restore %s, instance %s: %w", d.Name, role, err)
		}
	}
	return nil
}

// restoreInstance copies the volume paths back first, then restores the
// dumps (a database's files are never copied; its dump is its backup).
func restoreInstance(ctx context.Context, c client.APIClient, st *stack.Stack, dir string, ids []age.Identity, items []Item, rep *progress.Reporter) error {
	for _, kind := range []string{"volume", "dump"} {
		for _, it := range items {
			if it.Kind != kind {
				continue
			}
			svc := st.Service(it.Service)
			if svc == nil || svc.Backup == nil {
				return fmt.Errorf("%s: service %s no longer declares a backup in the stack", it.File, it.Service)
			}
			task := rep.Start("restore "+it.File, 0, "")
			var err error
			if kind == "volume" {
				err = restoreVolume(ctx, c, st, svc, dir, ids, it)
			} else {
				err = restoreDump(ctx, c, st.ContainerName(svc.Name), svc.Backup.Dump, dir, ids, it)
			}
			task.Done(err)
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
