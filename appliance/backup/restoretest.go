package backup

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"filippo.io/age"
	lxd "github.com/canonical/lxd/client"
	"github.com/docker/docker/client"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/instancedocker"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// TestOptions say which deployment's newest backup a restore test takes.
type TestOptions struct {
	LXD        lxd.InstanceServer // any cluster member
	Recipe     *recipes.Recipe
	Deployment string // the live deployment's name in the recipe
	From       string // the folder of backups: its newest of the deployment is tested
	Identities []age.Identity
	// Signer is the manifest's trusted key; without it, the key the live
	// deployment's secrets give (as Restore).
	Signer string
	// State is the deployments' state store: the live one's backup key is
	// read there (never changed), the scratch copy's own secrets made and
	// removed there, and the outcome recorded there.
	State deploystate.Store
	// Keep leaves the scratch copy deployed after the test, to look at
	// (remove it with `down --purge` of its name).
	Keep bool
	// Member names the host that runs the test, in the record.
	Member string
	// Checked, when set, runs once the backup is restored and checked,
	// before the scratch copy is removed; an error fails the test.
	Checked func(ctx context.Context, scratch recipes.Deployment) error
	// ImageDir is the output of `ssbuild image`, for a member that lacks
	// the base image or the pre-loaded chainstate (deploy's).
	ImageDir string
	// ReadyTimeout bounds the scratch copy's instances' start (deploy's).
	ReadyTimeout time.Duration
	Progress     *progress.Reporter
}

// Steps of a restore test, as its error names them.
const (
	StepVerify  = "verify"
	StepDeploy  = "deploy the scratch copy"
	StepRestore = "restore"
	StepCheck   = "check"
	StepRemove  = "remove the scratch copy"
	StepRecord  = "record"
)

// TestResult is what a restore test did.
type TestResult struct {
	registry.RestoreTest
	// Scratch is the scratch copy's project.
	Scratch string
	// Restored are the items put into the scratch copy; Skipped those only
	// verified (decrypted), with why.
	Restored []string
	Skipped  []string
	// Checked are the scratch copy's services found running.
	Checked []string
}

// TestError is a failed restore test: the step that failed.
type TestError struct {
	Step string
	Err  error
}

func (e *TestError) Error() string { return e.Step + ": " + e.Err.Error() }
func (e *TestError) Unwrap() error { return e.Err }

// Test is a restore test of a deployment's newest backup in From: it
// verifies the backup whole (every chunk decrypted), deploys a scratch copy
// of the deployment (deploy.Scratch: its own project and fresh secrets, no
// instance binding a host port, a www without ACME and closed off, no
// Lightning node), restores the backup into every instance of it (www's
// too), checks that every restored service runs, then removes the
// copy with its secrets (down --purge) unless Keep. The live deployment is
// only read: its backup key, to check the signature. The Lightning node's
// files are verified, never put anywhere (no second copy of a node's seed
// may run). The outcome is recorded in State as the live deployment's last
// restore test, also when it fails (a TestError names the step); a failed
// test removes its scratch copy too.
// ScratchLease names the lease a restore test holds on its scratch copy
// while it runs (deploystate.HoldLease).
func ScratchLease(scratch recipes.Deployment) string { return "scratch:" + scratch.Project() }

// scratchLeaseTTL is how long a test's lease lasts unrenewed: a test cut
// short (its host died) blocks the next one that long.
const scratchLeaseTTL = 2 * time.Minute

func Test(ctx context.Context, o TestOptions) (res TestResult, err error) {
	rep := o.Progress
	if rep == nil {
		rep = progress.Discard()
	}
	d, err := deploy.FindDeployment(o.Recipe, o.Deployment)
	if err != nil {
		return res, err
	}
	if deploy.IsScratch(d) {
		return res, fmt.Errorf("backup test %s: a scratch copy itself is not tested", d.Name)
	}
	if o.State == nil || len(o.Identities) == 0 {
		return res, fmt.Errorf("backup test %s: a state store and an identity to decrypt the backup with are required", d.Name)
	}
	scratch := deploy.Scratch(d)
	// One test of a deployment at a time (a manual one and the scheduled
	// one, on any members): they would deploy, restore into and remove
	// the same scratch copy. A refused test records nothing.
	held, release, err := deploystate.HoldLease(ctx, o.State, ScratchLease(scratch), deploystate.Holder(o.Member, "restore test"), scratchLeaseTTL)
	var he *deploystate.HeldError
	if errors.As(err, &he) {
		return res, fmt.Errorf("backup test %s: a restore test of it is running: %w; its scratch copy %s is in use, try again once that test has ended", d.Name, err, scratch.Project())
	} else if err != nil {
		return res, fmt.Errorf("backup test %s: %w", d.Name, err)
	}
	defer release()
	ctx = held
	// The recipe with the scratch copy beside the live deployments, for
	// deploying it and taking it down.
	r := *o.Recipe
	r.Deployments = append(slices.Clone(o.Recipe.Deployments), scratch)
	res.Deployment, res.Scratch, res.Member = d.Project(), scratch.Project(), o.Member
	res.Started = time.Now().UTC()
	step := StepVerify
	deployed := false
	defer func() {
		if deployed && !o.Keep {
			if rerr := removeScratch(ctx, o, &r, scratch, rep); rerr != nil {
				if err == nil {
					step, err = StepRemove, rerr
				} else {
					err = fmt.Errorf("%w; and removing the scratch copy %s failed: %w", err, scratch.Project(), rerr)
				}
			}
		}
		if err != nil {
			err = &TestError{Step: step, Err: err}
			res.Error = err.Error()
		}
		res.Ended = time.Now().UTC()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 45*time.Second)
		defer cancel()
		if rerr := o.State.RecordRestoreTest(rctx, res.RestoreTest); rerr != nil {
			rerr = fmt.Errorf("record the restore test of %s in %s: %w", d.Project(), o.State.Where(), rerr)
			if err == nil {
				err = &TestError{Step: StepRecord, Err: rerr}
			} else {
				err = fmt.Errorf("%w; %w", err, rerr)
			}
		}
	}()

	from, err := Latest(o.From, d.Project())
	if err != nil {
		return res, err
	}
	res.Backup = filepath.ToSlash(filepath.Join(backupsDir, filepath.Base(from)))
	// When it was taken, as its manifest says before any check: a
	// backup that fails to verify is still named with its age.
	if um, err := readManifest(filepath.Dir(filepath.Dir(from)), filepath.Base(from)); err == nil {
		res.Taken = um.Created
	}
	signer := o.Signer
	if signer == "" {
		keys, err := DeploymentKeys(ctx, o.State, d.Project(), false)
		if err != nil {
			return res, err
		}
		if keys == nil {
			return res, fmt.Errorf("this cluster holds no backup key of %s to check the backup's signature with: give --signer KEY", d.Project())
		}
		signer = keys.Signer()
	}
	task := rep.Start("verify "+res.Backup, 0, "")
	m, err := VerifyWith(from, VerifyOptions{Identities: o.Identities, Signer: signer})
	task.Done(err)
	if err != nil {
		return res, err
	}
	res.Taken = m.Created
	if m.Project != d.Project() {
		return res, fmt.Errorf("%s is a backup of %s, not %s", res.Backup, m.Project, d.Project())
	}

	step = StepDeploy
	do := deploy.Options{LXD: o.LXD, Recipe: &r, Deployments: []string{scratch.Name}, State: o.State, Member: o.Member,
		ImageDir: o.ImageDir, ReadyTimeout: o.ReadyTimeout, Scratch: true, Progress: rep}
	deployed = true // a deploy cut short leaves parts: removed all the same
	if _, err := deploy.Deploy(ctx, do); err != nil {
		return res, err
	}

	step = StepRestore
	stacks, err := restoreScratch(ctx, o, &r, scratch, from, m, &res, rep)
	if err != nil {
		return res, err
	}

	step = StepCheck
	if err := checkScratch(ctx, o, scratch, stacks, &res); err != nil {
		return res, err
	}
	if o.Checked != nil {
		if err := o.Checked(ctx, scratch); err != nil {
			return res, err
		}
	}
	return res, nil
}

// restoreScratch restores the backup's items into the scratch copy's
// services: the instances it has, never a Lightning node's files.
func restoreScratch(ctx context.Context, o TestOptions, r *recipes.Recipe, scratch recipes.Deployment, from string, m Manifest,
	res *TestResult, rep *progress.Reporter) (map[string]*stack.Stack, error) {
	enabled := map[string]bool{}
	for _, role := range scratch.Instances.Roles() {
		enabled[role.Name] = role.Instance.IsEnabled()
	}
	byInstance := map[string][]Item{}
	var order []string
	for _, it := range m.Items {
		if !enabled[it.Instance] {
			res.Skipped = append(res.Skipped, it.File+" (instance "+it.Instance+" is not in the scratch copy)")
			continue
		}
		if _, ok := byInstance[it.Instance]; !ok {
			order = append(order, it.Instance)
		}
		byInstance[it.Instance] = append(byInstance[it.Instance], it)
	}
	stacks := map[string]*stack.Stack{}
	pc := o.LXD.UseProject(scratch.Project())
	for _, role := range order {
		st, err := declarations(r, scratch, role)
		if err != nil {
			return stacks, err
		}
		stacks[role] = st
		var items []Item
		ln := st.LightningService()
		for _, it := range byInstance[role] {
			if ln != nil && it.Service == ln.Name {
				res.Skipped = append(res.Skipped, it.File+" (a Lightning node's: never restored into a copy)")
				continue
			}
			items = append(items, it)
		}
		docker, err := instancedocker.Client(ctx, pc, role)
		if err != nil {
			return stacks, err
		}
		// The deploy returns once the containers started: a database
		// takes its restore once its health check says it is up.
		task := rep.Start(scratch.Project()+"/"+role+": waiting for the services", 0, "")
		_, err = waitUp(ctx, docker, st)
		task.Done(err)
		if err == nil {
			err = restoreInstance(ctx, docker, st, from, o.Identities, items, rep)
		}
		docker.Close()
		if err != nil {
			return stacks, fmt.Errorf("instance %s: %w", role, err)
		}
		for _, it := range items {
			res.Restored = append(res.Restored, it.File)
		}
	}
	return stacks, nil
}

// checkScratch checks that every service of the scratch copy's restored
// instances runs (healthy, when it has a health check), and that no
// Lightning node exists there.
func checkScratch(ctx context.Context, o TestOptions, scratch recipes.Deployment, stacks map[string]*stack.Stack, res *TestResult) error {
	pc := o.LXD.UseProject(scratch.Project())
	var errs []error
	for _, role := range slices.Sorted(maps.Keys(stacks)) {
		st := stacks[role]
		docker, err := instancedocker.Client(ctx, pc, role)
		if err != nil {
			return err
		}
		// Health checks run every few seconds: a service restarted by
		// its restore gets a little while.
		inv, err := waitUp(ctx, docker, st)
		docker.Close()
		if err != nil && !errors.Is(err, errNotUp) {
			return err
		}
		for _, svc := range st.Services {
			var found *stack.ContainerStatus
			for i, c := range inv.Containers {
				if c.Instance == role && c.Service == svc.Name {
					found = &inv.Containers[i]
				}
			}
			switch {
			case svc.Lightning != nil && found != nil:
				errs = append(errs, fmt.Errorf("%s/%s: the scratch copy has a Lightning node container %s (%s)", scratch.Project(), role, found.Name, found.State))
			case svc.Lightning != nil:
			case found == nil:
				errs = append(errs, fmt.Errorf("%s/%s: service %s has no container", scratch.Project(), role, svc.Name))
			case found.State != "running" || (found.Health != "" && found.Health != "healthy"):
				errs = append(errs, fmt.Errorf("%s/%s: service %s is %s %s", scratch.Project(), role, svc.Name, found.State, found.Health))
			default:
				res.Checked = append(res.Checked, role+"/"+svc.Name)
			}
		}
	}
	return errors.Join(errs...)
}

// upTimeout bounds the wait for a scratch instance's services to run
// and be healthy.
const upTimeout = 2 * time.Minute

var errNotUp = errors.New("services not all up")

// waitUp waits until every service of st but the Lightning node runs and
// is healthy, and returns the project's containers as last seen (with
// errNotUp when the time ran out).
func waitUp(ctx context.Context, docker client.APIClient, st *stack.Stack) (stack.Objects, error) {
	deadline := time.Now().Add(upTimeout)
	for {
		inv, err := stack.Inventory(ctx, docker, st.Project)
		switch {
		case err != nil:
			return inv, err
		case servicesUp(st, inv):
			return inv, nil
		case time.Now().After(deadline):
			var state []string
			for _, c := range inv.Containers {
				state = append(state, c.Service+" "+c.State+" "+c.Health)
			}
			return inv, fmt.Errorf("%w after %s: %s", errNotUp, upTimeout, strings.Join(state, ", "))
		}
		select {
		case <-ctx.Done():
			return inv, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// servicesUp says whether every service of st but the Lightning node runs
// and is healthy.
func servicesUp(st *stack.Stack, inv stack.Objects) bool {
	for _, svc := range st.Services {
		if svc.Lightning != nil {
			continue
		}
		if !slices.ContainsFunc(inv.Containers, func(c stack.ContainerStatus) bool {
			return c.Instance == st.Instance && c.Service == svc.Name && c.State == "running" && (c.Health == "" || c.Health == "healthy")
		}) {
			return false
		}
	}
	return true
}

// removeScratch takes the scratch copy down with its volumes, project and
// secrets (down --purge's code), under its own time limit so a test cut
// short still cleans up.
func removeScratch(ctx context.Context, o TestOptions, r *recipes.Recipe, scratch recipes.Deployment, rep *progress.Reporter) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	task := rep.Start("remove the scratch copy "+scratch.Project(), 0, "")
	_, err := deploy.Down(ctx, deploy.Options{LXD: o.LXD, Recipe: r, State: o.State, Progress: rep}, scratch, true)
	task.Done(err)
	return err
}

// Scheduled is the scheduled restore test (recipe backup.restoreTest): for
// every deployment of the recipe that is deployed (its project exists) and
// has a backup key, the newest backup in backup.restoreTest.from is
// restore-tested with the identity the cluster derives from the backup
// key (Keys.TestIdentity). o gives the rest (LXD, State, Member...); each
// outcome is recorded as Test records it. Nothing runs when the recipe
// does not turn the tests on.
func Scheduled(ctx context.Context, o TestOptions) ([]TestResult, error) {
	rt := o.Recipe.Backup.RestoreTest
	if !rt.Enabled() {
		return nil, nil
	}
	var out []TestResult
	var errs []error
	for _, d := range o.Recipe.Deployments {
		if _, _, err := o.LXD.GetProject(d.Project()); err != nil {
			continue // not deployed (or not reachable: the next pass)
		}
		keys, err := DeploymentKeys(ctx, o.State, d.Project(), false)
		if err != nil {
			errs = append(errs, fmt.Errorf("restore test %s: %w", d.Project(), err))
			continue
		}
		if keys == nil {
			continue // never backed up
		}
		id, err := keys.TestIdentity()
		if err != nil {
			errs = append(errs, fmt.Errorf("restore test %s: %w", d.Project(), err))
			continue
		}
		one := o
		one.Deployment, one.From, one.Identities, one.Signer, one.Keep = d.Name, rt.From, []age.Identity{id}, "", false
		res, err := Test(ctx, one)
		out = append(out, res)
		if err != nil {
			errs = append(errs, fmt.Errorf("restore test %s: %w", d.Project(), err))
		}
	}
	return out, errors.Join(errs...)
}
