package chainstate_test

import (
	"context"
	"fmt"
	"os"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/handoff/chainstate"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// At build time `ssbuild image` packs the recipe's chainstate next to the
// base image and records the manifest digest; on a host, first boot checks
// the artifact against that digest and the deployment's chain, imports it
// once, and gives each deployment a copy.
func ExamplePack() {
	ctx := context.Background()
	// From the recipe; SHA256 is the snapshot file's published sha256.
	r := recipes.Chainstate{Network: "mainnet", Kind: "assumeutxo", Source: "utxo-880000.dat", SHA256: "…"}
	a, err := chainstate.Pack(ctx, chainstate.Options{
		Chainstate:      r,
		BaseDir:         "/path/to/recipe/dir",
		Output:          "out/chainstate-mainnet.tar",
		SourceDateEpoch: 1700000000,
	})
	if err != nil {
		fmt.Println(err) // names the source; nothing is left under Output
		return
	}
	pinned := a.ManifestSHA256 // into the build manifest and the appliance config

	// On the host, before use:
	if _, err := chainstate.Verify(ctx, a.Path, chainstate.VerifyOptions{Network: "mainnet", ManifestSHA256: pinned}); err != nil {
		fmt.Println(err) // names the corrupted, missing or extra file
		return
	}
	var c lxd.InstanceServer // the host's LXD
	f, _ := os.Open(a.Path)
	defer f.Close()
	op, _ := c.CreateStoragePoolVolumeFromBackup("local", lxd.StoragePoolVolumeBackupArgs{BackupFile: f})
	_ = op.Wait()
	vol, _, _ := c.GetStoragePoolVolume("local", "custom", a.Volume)
	// Per deployment: a clone, instant on ZFS.
	cop, _ := c.CopyStoragePoolVolume("local", c, "local", *vol, &lxd.StoragePoolVolumeCopyArgs{Name: "mainnet-btcpayserver-chainstate"})
	_ = cop.Wait()
}
