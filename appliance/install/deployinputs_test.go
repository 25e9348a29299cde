package install

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// testDeployment gives testRecipe a deployment: the initiator deploys it.
const testDeployment = `deployments:
  - name: demo
    chain: regtest
    stack: demo
    primaryDomain: demo.example
`

// baseImageFiles stand in for an `ssbuild image` output folder on the stick.
var baseImageFiles = map[string]string{
	"SHA256SUMS":                     "0000  container/rootfs.squashfs\n",
	"container/metadata.tar.gz":      "metadata\n",
	"container/rootfs.squashfs":      strings.Repeat("squashfs of the base image\n", 10000),
	"chainstate/regtest.tar.gz":      "chainstate\n",
	"container/unified/image.tar.gz": "unified\n",
}

// withDeployInputs turns a fakeMachine's payload into one built with
// `ssbuild installer --base-image`, for a recipe with a deployment.
func withDeployInputs(t *testing.T, env Env) string {
	t.Helper()
	recipe := testRecipe + testDeployment
	files := map[string]string{stick.RecipeName: recipe}
	for name, data := range baseImageFiles {
		files[stick.BaseImageDir+"/"+name] = data
	}
	for name, data := range files {
		p := filepath.Join(env.PayloadDir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeManifest(t, env.PayloadDir)
	return recipe
}

// expectedDeployFiles are what the first boot of host reads to deploy:
// the recipe and an appliance.yaml with a deploy section naming it on
// every host; on the initiator the base image too, named in its section.
func expectedDeployFiles(t *testing.T, recipe, host string) []File {
	t.Helper()
	r, err := recipes.Parse(stick.RecipeName, []byte(recipe), "")
	if err != nil {
		t.Fatal(err)
	}
	var h recipes.Host
	for _, x := range r.Installer.Hosts {
		if x.Name == host {
			h = x
		}
	}
	initiator := host == r.Cluster.Initiator
	files, err := HostFiles(r, []byte(recipe), h, []byte(testSecret), true)
	if err != nil {
		t.Fatal(err)
	}
	recipeFound := false
	for _, f := range files {
		switch f.Path {
		case config.DefaultRecipePath:
			recipeFound = string(f.Data) == recipe && f.Mode == 0o644
		case config.DefaultPath:
			a, err := config.Parse(f.Path, f.Data)
			if err != nil {
				t.Fatal(err)
			}
			want := config.Deploy{Recipe: config.DefaultRecipePath, Image: config.DefaultImageDir}
			if !initiator {
				want.Image = "" // the base image is copied to the initiator only
			}
			if a.Deploy == nil || *a.Deploy != want {
				t.Fatalf("%s's appliance.yaml deploy section: %+v", host, a.Deploy)
			}
		}
	}
	if !recipeFound {
		t.Fatalf("%s gets no %s with the stick's recipe", host, config.DefaultRecipePath)
	}
	if initiator {
		for name, data := range baseImageFiles {
			files = append(files, File{Path: config.DefaultImageDir + "/" + name, Data: []byte(data), Mode: 0o644})
		}
	}
	return files
}

// TestRunWritesDeployInputs: with a base image on the stick, the initiator
// gets the recipe, the base image and a deploy section naming both; a
// joiner the recipe and a deploy section naming it. A stick that reads the base image back differently during the
// copy fails the step, and the next boot redoes it whole.
func TestRunWritesDeployInputs(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "sgdisk", "blkid", "e2fsck", "dumpe2fs", "debugfs", "fsck.fat", "mtype", "losetup", "dd")
	for _, host := range []string{"demo1", "demo2"} {
		t.Run(host, func(t *testing.T) {
			env, _ := fakeMachine(t, fakeDisk{name: "sda", size: 80 * GiB}, fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
			if err := os.WriteFile(filepath.Join(env.ProcRoot, "cmdline"), []byte(stick.CmdlineHost+"="+host+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			recipe := withDeployInputs(t, env)
			disk := filepath.Join(env.DevRoot, "sda")
			rootfs := filepath.Join(env.PayloadDir, stick.BaseImageDir, "container/rootfs.squashfs")
			if host == "demo1" {
				first := env
				first.AfterStep = func(step string) error {
					if step == StepESPWritten { // after verification: the stick goes bad
						return os.WriteFile(rootfs, []byte("changed"), 0o644)
					}
					return nil
				}
				err := Run(context.Background(), first)
				if err == nil || !strings.Contains(err.Error(), StepConfigWritten) || !strings.Contains(err.Error(), "the stick is failing") {
					t.Fatalf("first run with a changed base image: %v", err)
				}
				if err := os.WriteFile(rootfs, []byte(baseImageFiles["container/rootfs.squashfs"]), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := Run(context.Background(), env); err != nil {
				t.Fatal(err)
			}
			checkInstalled(t, disk, testLayout256(), expectedDeployFiles(t, recipe, host))
			osDev := disk + "?offset=" + itoa(MiB+int64(testLayout256().ESP))
			ls := run(t, "debugfs", "-R", "ls -l "+hostdisk.StateDir, osDev)
			if strings.Contains(ls, "ssbuild-tmp") {
				t.Errorf("a temporary copy is left in %s:\n%s", hostdisk.StateDir, ls)
			}
			if got := strings.Contains(ls, "base-image"); got != (host == "demo1") {
				t.Errorf("%s has base-image: %v, want it on the initiator only:\n%s", host, got, ls)
			}
		})
	}
}

// TestInstallBaseImageMustFit: a base image larger than the OS
// filesystem's free space fails the config step naming the sizes, before
// anything of it is written.
func TestInstallBaseImageMustFit(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "mkfs.ext4", "debugfs", "losetup")
	dir := makePayload(t)
	big := filepath.Join(dir, stick.BaseImageDir, "container", "rootfs.squashfs")
	if err := os.MkdirAll(filepath.Dir(big), 0o755); err != nil {
		t.Fatal(err)
	}
	// Larger than the OS partition, grown or not (sparse: quick to hash).
	if err := os.WriteFile(big, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, 300*MiB); err != nil {
		t.Fatal(err)
	}
	writeManifest(t, dir)
	p, err := VerifyPayload(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := testLayout
	l.OS = recipes.Size(256 * MiB)
	img := sparseDisk(t, t.TempDir(), "target.img", 80*GiB)
	detachLoops(t, img)
	plan := Plan{Target: img, Layout: l, Host: "nuc1", Files: testFiles,
		Copies: []Copy{{From: stick.BaseImageDir, To: config.DefaultImageDir}}}
	err = Install(context.Background(), p, plan, Options{WorkDir: t.TempDir(), Progress: progress.New(testLog{t}, progress.Plain)})
	if err == nil || !strings.Contains(err.Error(), "base-image") || !strings.Contains(err.Error(), "need 300.0 MiB") || !strings.Contains(err.Error(), "MiB free") {
		t.Fatalf("Install with a base image larger than the OS filesystem: %v", err)
	}
	t.Logf("the error: %v", err)
	if j, _, _ := ReadJournal(img); j.Step != StepESPWritten {
		t.Errorf("journal: %+v, want step %s", j, StepESPWritten)
	}
	osDev := img + "?offset=" + itoa(MiB+int64(l.ESP))
	if ls := run(t, "debugfs", "-R", "ls "+hostdisk.StateDir, osDev); strings.Contains(ls, "base-image") {
		t.Errorf("a copy was started though it does not fit:\n%s", ls)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
