package deploy

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/sovereign-stack/ssbuild/recipes"
)

var update = flag.Bool("update", false, "re-record the golden files")

// TestSpecsGolden pins the LXD side of the shipped recipes' instances:
// config, devices (root, NIC, volumes, www's ports) and volume sizes.
func TestSpecsGolden(t *testing.T) {
	for _, c := range []struct {
		recipe string
		target Target
	}{
		{"default", Target{Pool: "ss-base", Driver: "zfs", Network: "lxdbr0"}},
		{"demo", Target{Pool: "demo", Driver: "dir", Network: "lxdbr0"}},
	} {
		t.Run(c.recipe, func(t *testing.T) {
			r, err := recipes.Open(c.recipe)
			if err != nil {
				t.Fatal(err)
			}
			var all []InstanceSpec
			for _, d := range r.Deployments {
				specs, err := Specs(r, d, c.target)
				if err != nil {
					t.Fatal(err)
				}
				all = append(all, specs...)
			}
			got, err := yaml.Marshal(all)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", c.recipe+"-instances.golden.yaml")
			if *update {
				os.MkdirAll("testdata", 0o755)
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to record)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("instances of %s differ from %s:\n%s", c.recipe, golden, got)
			}
		})
	}
}

// TestDirPoolHasNoSizes: LXD's dir driver cannot enforce sizes here, so a
// dir pool gets none (setting them would fail the create).
func TestDirPoolHasNoSizes(t *testing.T) {
	r, err := recipes.Open("demo")
	if err != nil {
		t.Fatal(err)
	}
	specs, err := Specs(r, r.Deployments[0], Target{Pool: "p", Driver: "dir", Network: "n"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		if s.Devices["root"]["size"] != "" {
			t.Errorf("%s: root size %q on a dir pool", s.Name, s.Devices["root"]["size"])
		}
		for _, v := range s.Volumes {
			if v.Config["size"] != "" {
				t.Errorf("%s: size on a dir pool", v.Name)
			}
		}
		if !strings.HasPrefix(s.Config["cloud-init.user-data"], "#cloud-config\n") {
			t.Errorf("%s: no cloud-init user-data", s.Name)
		}
	}
}

func TestAllDisabledIsAnError(t *testing.T) {
	r, err := recipes.Open("demo")
	if err != nil {
		t.Fatal(err)
	}
	d := r.Deployments[0]
	off := false
	for _, role := range d.Instances.Roles() {
		role.Instance.Enabled = &off
	}
	if _, err := Specs(r, d, Target{}); err == nil || !strings.Contains(err.Error(), "every instance is disabled") {
		t.Errorf("got %v", err)
	}
}
