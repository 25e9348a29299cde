package chainstate_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	lxd "github.com/canonical/lxd/client"
	"github.com/canonical/lxd/shared/api"

	"github.com/sovereign-stack/ssbuild/handoff/chainstate"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// The artifact is an LXD custom volume backup: a real LXD imports it, a
// deployment gets its own copy, and the copy holds the chainstate's files,
// which verify against the manifest inside.
func TestImportIntoLXD(t *testing.T) {
	bed := testbed.New(t, testbed.Options{})
	h := bed.Hosts[0]
	c := h.LXD()
	ctx := context.Background()

	src := makeDatadir(t)
	out := filepath.Join(t.TempDir(), "chainstate-regtest.tar")
	a := pack(t, recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src}, out)
	if _, err := chainstate.Verify(ctx, out, chainstate.VerifyOptions{Network: "regtest", ManifestSHA256: a.ManifestSHA256}); err != nil {
		t.Fatal(err)
	}

	if err := c.CreateStoragePool(api.StoragePoolsPost{Name: "local", Driver: "dir"}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	op, err := c.CreateStoragePoolVolumeFromBackup("local", lxd.StoragePoolVolumeBackupArgs{BackupFile: f})
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		t.Fatalf("import %s: %v", out, err)
	}
	vol, _, err := c.GetStoragePoolVolume("local", "custom", a.Volume)
	if err != nil {
		t.Fatal(err)
	}
	if vol.Config["user.ssbuild.network"] != "regtest" || vol.Config["user.ssbuild.kind"] != "pruned-datadir" || vol.ContentType != "filesystem" {
		t.Errorf("imported volume: config %v, content type %q", vol.Config, vol.ContentType)
	}

	// Each deployment clones the imported volume (on ZFS, a snapshot clone).
	cop, err := c.CopyStoragePoolVolume("local", c, "local", *vol, &lxd.StoragePoolVolumeCopyArgs{Name: "regtest-btcpayserver-chainstate"})
	if err == nil {
		err = cop.Wait()
	}
	if err != nil {
		t.Fatalf("copy volume: %v", err)
	}
	copyDir := filepath.Join(h.LXDDir, "storage-pools", "local", "custom", "default_regtest-btcpayserver-chainstate")
	// Read inside the host, as a process on it would.
	got, err := h.Run(ctx, "sha256sum", filepath.Join(copyDir, "chainstate", "000005.ldb"))
	if err != nil {
		t.Fatal(err)
	}
	if want := fileSHA256(t, filepath.Join(src, "chainstate", "000005.ldb")); !strings.HasPrefix(got, want) {
		t.Errorf("chainstate/000005.ldb in the copy: %s, source sha256 %s", got, want)
	}
	if err := chainstate.VerifyDir(ctx, copyDir, chainstate.VerifyOptions{ManifestSHA256: a.ManifestSHA256}); err != nil {
		t.Error(err)
	}

	// The documented CLI path, with a snapshot artifact and a name of the host's choosing.
	snap, _ := writeSnapshot(t, t.TempDir(), "utxo-110.dat", "regtest")
	snapOut := filepath.Join(t.TempDir(), "chainstate-regtest-snapshot.tar")
	pack(t, recipes.Chainstate{Network: "regtest", Kind: "assumeutxo", Source: snap}, snapOut)
	if _, err := h.Run(ctx, "lxc", "storage", "volume", "import", "local", snapOut, "utxo"); err != nil {
		t.Fatal(err)
	}
	show, err := h.Run(ctx, "lxc", "storage", "volume", "get", "local", "utxo", "user.ssbuild.snapshot.base-blockhash")
	if err != nil || show != "0000000000000000000320283a032748cef8227873ff4872689bf23f1cda83a5" {
		t.Errorf("lxc storage volume get: %q, %v", show, err)
	}
	if _, err := h.Run(ctx, "cmp", snap, filepath.Join(h.LXDDir, "storage-pools/local/custom/default_utxo/utxo-110.dat")); err != nil {
		t.Errorf("snapshot in the imported volume: %v", err)
	}
}
