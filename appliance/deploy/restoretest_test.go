package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/backup"
	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/fence"
	"github.com/sovereign-stack/ssbuild/appliance/lxdexec"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// checkRestoreTest is issue 16's restore test (a subtest of
// TestDeployDemoOnThreeHosts): the newest backup is restored into a
// scratch copy (its own project, its own www, no Lightning node), which
// holds the row and the www file written before the backup, read through
// the copy's own instances; the copy's www binds no port of its member,
// has its own address, publishes no port and only internal networks; the
// copy and its secrets are gone after; the live deployment's rows, www
// file, www devices and sites, secrets and Lightning node and generation
// are as they were; show prints the outcome. With
// backup.restoreTest on, the scheduled pass restores the next backup with
// the cluster's derived key; a check failing after the restore still
// removes the copy. A tampered backup fails the test at its verify step,
// recorded as failed, nothing left.
func checkRestoreTest(t *testing.T, ctx context.Context, o deploy.Options, project string, www endpoint) {
	ids := ownerKey(t, o)
	st := stateOf(o)
	name := o.Recipe.Deployments[0].Name
	psqlIn(t, o, project, "INSERT INTO pages (body) VALUES ('written before the restore test') ON CONFLICT DO NOTHING")
	// A file of a www site service's backed-up volume.
	const wwwItem, wwwSvc, wwwMarker = "www/ghost-blog-example/ghost-blog-example-data.tar.age", "ghost-blog-example", "www data before the restore test"
	dockerExec(t, o, project, "www", project+"-"+wwwSvc, "sh", "-c", "echo '"+wwwMarker+"' > /data/restore-test-marker")
	dir := filepath.Join(t.TempDir(), "backup")
	m, err := backup.Run(ctx, backup.Options{FilesCache: t.TempDir(), LXD: o.LXD, Recipe: o.Recipe, Deployment: name, To: dir, State: st})
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	node := fence.NodeName(project, "btcpay")
	liveWWW := func() string {
		t.Helper()
		in, _, err := o.LXD.UseProject(project).GetInstance("www")
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(dockerExec(t, o, project, "www", project+"-"+wwwSvc, "/bin/busybox", "cat", "/data/restore-test-marker"), " ",
			in.Location, " ", in.Devices, " ", httpGet(t, ctx, www, "www.blog.example"), " ", httpGet(t, ctx, www, "btcpay.demo.example"))
	}
	wwwBefore := liveWWW()
	if !strings.Contains(wwwBefore, wwwMarker) || !strings.Contains(wwwBefore, "ghost blog.example") {
		t.Fatalf("the live www before the restore test: %s", wwwBefore)
	}
	live := func() (rows, channelDB string, gen int64, sec []byte) {
		t.Helper()
		rows = psqlIn(t, o, project, "SELECT body FROM pages ORDER BY id")
		channelDB = dockerExec(t, o, project, "btcpay", project+"-lightning", "cat", "/root/.lightning/regtest/lightningd.sqlite3")
		gen, err := st.LightningGeneration(ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		sec, err = os.ReadFile(secrets.File(o.StateDir, project))
		if err != nil {
			t.Fatal(err)
		}
		return rows, channelDB, gen, sec
	}
	rows, channelDB, gen, sec := live()

	scratch := deploy.Scratch(o.Recipe.Deployments[0])
	sp := scratch.Project()
	var scratchRows, scratchWWW string
	var scratchContainers []string
	var wwwProblems []string
	start := time.Now()
	res, err := backup.Test(ctx, backup.TestOptions{LXD: o.LXD, Recipe: o.Recipe, Deployment: name, From: dir, Identities: ids,
		State: st, Member: "host1", ImageDir: o.ImageDir, Progress: o.Progress,
		Checked: func(ctx context.Context, s recipes.Deployment) error {
			// What the owner would look at, before the copy goes.
			pc := o.LXD.UseProject(s.Project())
			out, errOut, code, err := lxdexec.Run(pc, "btcpay", "docker", "exec", s.Project()+"-btcpay", "psql", "-tA", "-c", "SELECT body FROM pages ORDER BY id")
			if err != nil || code != 0 {
				return errors.New("psql in the scratch copy: " + errOut)
			}
			scratchRows = out
			// The www file, read through the copy's own www.
			if scratchWWW, errOut, code, err = lxdexec.Run(pc, "www", "docker", "exec", s.Project()+"-"+wwwSvc, "/bin/busybox", "cat", "/data/restore-test-marker"); err != nil || code != 0 {
				return errors.New("the www file in the scratch copy: " + errOut)
			}
			// Nothing of the copy's www reaches out: no proxy device,
			// its own address, no published port, internal networks.
			in, _, err := pc.GetInstance("www")
			if err != nil {
				return err
			}
			for name, dev := range in.Devices {
				if dev["type"] == "proxy" || dev["hwaddr"] != "" {
					wwwProblems = append(wwwProblems, fmt.Sprintf("device %s %v", name, dev))
				}
			}
			// Its own address: its own MAC, and on the live www's member
			// another address (each member's bridge has its own DHCP on
			// the same subnet: on two members one address can come twice,
			// on two separate links).
			nic := func(project string) (member, mac string, out []string) {
				pc := o.LXD.UseProject(project)
				if in, _, err := pc.GetInstance("www"); err == nil {
					member, mac = in.Location, in.Config["volatile.eth0.hwaddr"]
				}
				st, _, err := pc.GetInstanceState("www")
				if err == nil {
					for _, a := range st.Network["eth0"].Addresses {
						if a.Family == "inet" {
							out = append(out, a.Address)
						}
					}
				}
				return member, mac, out
			}
			myMember, myMAC, mine := nic(s.Project())
			theirMember, theirMAC, theirs := nic(project)
			if len(mine) == 0 || len(theirs) == 0 || myMAC == "" || myMAC == theirMAC ||
				myMember == theirMember && slices.ContainsFunc(mine, func(a string) bool { return slices.Contains(theirs, a) }) {
				wwwProblems = append(wwwProblems, fmt.Sprintf("addresses %v and MAC %s on %s, the live www's %v and %s on %s", mine, myMAC, myMember, theirs, theirMAC, theirMember))
			}
			out, _, _, err = lxdexec.Run(pc, "www", "docker", "ps", "-a", "--format", "{{.Names}} ports={{.Ports}}")
			if err != nil || !strings.Contains(out, s.Project()+"-proxy ") || strings.Contains(out, "->") {
				wwwProblems = append(wwwProblems, fmt.Sprintf("containers %q (%v); want the proxy, no published port", out, err))
			}
			out, _, _, err = lxdexec.Run(pc, "www", "docker", "network", "ls", "--filter", "name="+s.Project(), "--format", "{{.Name}} {{.Internal}}")
			if err != nil || strings.Count(out, " true") == 0 || strings.Contains(out, " false") {
				wwwProblems = append(wwwProblems, fmt.Sprintf("networks %q (%v); want only internal ones", out, err))
			}
			out, _, _, err = lxdexec.Run(pc, "btcpay", "docker", "ps", "-a", "--format", "{{.Names}}")
			scratchContainers = strings.Fields(out)
			return err
		}})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("restore test: %v", err)
	}
	t.Logf("restore test of %s into %s: %s; restored %v; skipped %v; running %v", res.Backup, res.Scratch, took.Round(time.Millisecond), res.Restored, res.Skipped, res.Checked)
	if !strings.Contains(scratchRows, "written before the restore test") {
		t.Errorf("the scratch copy's rows: %q; want the row written before the backup", scratchRows)
	}
	if len(scratchContainers) == 0 || slices.Contains(scratchContainers, sp+"-lightning") || slices.Contains(scratchContainers, project+"-lightning") {
		t.Errorf("containers in the scratch copy's btcpay: %v; want its services and no Lightning node", scratchContainers)
	}
	if !slices.Contains(res.Restored, "btcpay/btcpay-db/btcpay-db.sql.age") || !slices.ContainsFunc(res.Skipped, func(s string) bool {
		return strings.HasPrefix(s, "btcpay/lightning/lightning-data_regtest_hsm_secret.tar.age")
	}) {
		t.Errorf("restored %v, skipped %v; want the dump restored and the node's hsm_secret only verified", res.Restored, res.Skipped)
	}
	if strings.TrimSpace(scratchWWW) != wwwMarker || !slices.Contains(res.Restored, wwwItem) || !slices.Contains(res.Checked, "www/"+wwwSvc) ||
		!slices.Contains(res.Checked, "www/proxy") || slices.ContainsFunc(res.Skipped, func(s string) bool { return strings.HasPrefix(s, "www/") }) {
		t.Errorf("the scratch copy's www file %q; restored %v, skipped %v, running %v; want www's items restored, its services running", scratchWWW, res.Restored, res.Skipped, res.Checked)
	}
	for _, p := range wwwProblems {
		t.Errorf("the scratch copy's www: %s", p)
	}
	if res.Backup != "backups/"+m.Name || !res.Taken.Equal(m.Created) || res.Error != "" {
		t.Errorf("result %+v; want backup %s taken %s", res.RestoreTest, m.Name, m.Created)
	}
	noScratch := func() {
		t.Helper()
		if _, _, err := o.LXD.GetProject(sp); err == nil {
			t.Errorf("the scratch project %s is left", sp)
		}
		if _, err := os.Stat(secrets.File(o.StateDir, sp)); err == nil {
			t.Errorf("the scratch copy's secrets are left in %s", o.StateDir)
		}
		if g, err := st.LightningGeneration(ctx, fence.NodeName(sp, "btcpay")); err != nil || g != 0 {
			t.Errorf("the scratch copy has Lightning generation %d (%v); it must never hold one", g, err)
		}
		if h, err := st.History(ctx, sp); err != nil || len(h) != 0 {
			t.Errorf("the scratch copy left revisions: %v, %v", h, err)
		}
	}
	noScratch()
	rows2, channelDB2, gen2, sec2 := live()
	if rows2 != rows || channelDB2 != channelDB || gen2 != gen || !bytes.Equal(sec2, sec) {
		t.Errorf("the live deployment changed: rows %q → %q, channel database %q → %q, generation %d → %d, secrets changed %v",
			rows, rows2, channelDB, channelDB2, gen, gen2, !bytes.Equal(sec2, sec))
	}
	if after := liveWWW(); after != wwwBefore {
		t.Errorf("the live www changed: %s → %s", wwwBefore, after)
	}
	show := func() string {
		t.Helper()
		state, err := deploy.Show(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		var text bytes.Buffer
		state.WriteText(&text)
		return text.String()
	}
	if out := show(); !strings.Contains(out, "restore test: backups/"+m.Name+" (taken ") || !strings.Contains(out, ") restored OK just now in ") {
		t.Errorf("show:\n%s\nlacks the restore test's outcome", out)
	}

	// Scheduled (backup.restoreTest on): the backup is also encrypted to
	// the cluster's derived key, and the scheduled pass restore-tests it
	// without the owner's identity.
	o.Recipe.Backup.RestoreTest = recipes.RestoreTest{Hours: 1, From: filepath.Join(t.TempDir(), "backup")}
	t.Cleanup(func() { o.Recipe.Backup.RestoreTest = recipes.RestoreTest{} })
	m2, err := backup.Run(ctx, backup.Options{FilesCache: t.TempDir(), LXD: o.LXD, Recipe: o.Recipe, Deployment: name, To: o.Recipe.Backup.RestoreTest.From, State: st})
	if err != nil {
		t.Fatalf("backup with restore tests on: %v", err)
	}
	if len(m2.Recipients) != 2 {
		t.Errorf("recipients of a backup with restore tests on: %v; want the owner's and the cluster's", m2.Recipients)
	}
	// Its check is made to fail once the copy is restored (the owner's
	// check finding the data wrong): the copy is removed all the same, and
	// the failure recorded naming the step.
	start = time.Now()
	sched, err := backup.Scheduled(ctx, backup.TestOptions{LXD: o.LXD, Recipe: o.Recipe, State: st, Member: "host2", ImageDir: o.ImageDir, Progress: o.Progress,
		Checked: func(ctx context.Context, s recipes.Deployment) error {
			if _, _, err := o.LXD.GetProject(s.Project()); err != nil {
				return err
			}
			return errors.New("the owner's check says no")
		}})
	t.Logf("scheduled restore test, failed at its check: %s, %+v", time.Since(start).Round(time.Millisecond), sched)
	if err == nil || !strings.Contains(err.Error(), "check: the owner's check says no") || len(sched) != 1 ||
		sched[0].Backup != "backups/"+m2.Name || !slices.Contains(sched[0].Restored, "btcpay/btcpay-db/btcpay-db.sql.age") {
		t.Fatalf("scheduled restore test: %+v, %v; want the new backup restored with the cluster's key, then the check failed", sched, err)
	}
	if rt, err := st.LastRestoreTest(ctx, project); err != nil || rt == nil || rt.Backup != "backups/"+m2.Name || rt.Error != "check: the owner's check says no" || rt.Member != "host2" {
		t.Errorf("recorded restore test %+v, %v; want the scheduled one, failed at check", rt, err)
	}
	noScratch()
	if rows2, _, gen2, sec2 := live(); rows2 != rows || gen2 != gen || !bytes.Equal(sec2, sec) {
		t.Errorf("the live deployment changed in the scheduled test: rows %q → %q, generation %d → %d", rows, rows2, gen, gen2)
	}

	// A tampered backup: the test fails at verify, recorded, nothing left.
	for _, it := range m.Items {
		if it.File == "btcpay/btcpay-db/btcpay-db.sql.age" {
			p := filepath.Join(dir, "chunks", it.Chunks[0].ID[:2], it.Chunks[0].ID+".age")
			b, _ := os.ReadFile(p)
			b[len(b)-5] ^= 0x01
			os.WriteFile(p, b, 0o600)
		}
	}
	_, err = backup.Test(ctx, backup.TestOptions{LXD: o.LXD, Recipe: o.Recipe, Deployment: name, From: dir, Identities: ids, State: st})
	var te *backup.TestError
	if !errors.As(err, &te) || te.Step != backup.StepVerify || !strings.Contains(err.Error(), "btcpay-db.sql.age") {
		t.Fatalf("restore test of a tampered backup: %v; want it failed at verify naming the file", err)
	}
	rt, err := st.LastRestoreTest(ctx, project)
	if err != nil || rt == nil || !strings.HasPrefix(rt.Error, "verify: ") {
		t.Errorf("recorded restore test %+v, %v; want the failure", rt, err)
	}
	noScratch()
	if out := show(); !strings.Contains(out, "restore test: backups/"+m.Name+" (taken ") || !strings.Contains(out, ") FAILED just now after ") {
		t.Errorf("show:\n%s\nlacks the failed restore test", out)
	}
}
