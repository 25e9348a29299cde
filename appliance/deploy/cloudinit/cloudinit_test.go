package cloudinit

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

var update = flag.Bool("update", false, "re-record the golden files")

var cases = map[string]Instance{
	"www": {Hostname: "www", Deployment: "demo-regtest", Role: "www",
		SSHKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr4l2cPqC3yQ5Wm3c5nL0r3xvC3HhZbY4m3kz7a1b2c owner@laptop"}},
	"btcpay-no-keys": {Hostname: "btcpay", Deployment: "demo-regtest", Role: "btcpay"},
}

// TestUserDataGolden pins the documents, and cloud-init's own schema check
// accepts each of them.
func TestUserDataGolden(t *testing.T) {
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := UserData(in)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", name+".yaml")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to record)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("user-data differs from %s:\n%s", golden, got)
			}
			schemaCheck(t, got)
		})
	}
}

func schemaCheck(t *testing.T, doc []byte) {
	t.Helper()
	testenv.RequireTools(t, "cloud-init")
	f := filepath.Join(t.TempDir(), "user-data")
	if err := os.WriteFile(f, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("cloud-init", "schema", "--config-file", f).CombinedOutput()
	if err != nil {
		t.Fatalf("cloud-init schema rejects the user-data: %v\n%s\n%s", err, out, doc)
	}
}

func TestUserDataNeedsIdentity(t *testing.T) {
	if _, err := UserData(Instance{Hostname: "www"}); err == nil {
		t.Fatal("user-data without deployment and role was rendered")
	}
}

// TestSchemaCheckCatchesMistakes makes sure the schema check is not a
// rubber stamp: a wrong type fails it.
func TestSchemaCheckCatchesMistakes(t *testing.T) {
	testenv.RequireTools(t, "cloud-init")
	f := filepath.Join(t.TempDir(), "user-data")
	os.WriteFile(f, []byte("#cloud-config\npackage_update: maybe\nssh_authorized_keys: 3\n"), 0o644)
	if out, err := exec.Command("cloud-init", "schema", "--config-file", f).CombinedOutput(); err == nil {
		t.Fatalf("cloud-init schema accepted a wrong document:\n%s", out)
	}
}
