package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/handoff/chainstate"
	"github.com/sovereign-stack/ssbuild/handoff/imagedir"
)

// ChainstatePath is where the btcpay instance mounts its deployment's copy
// of the pre-loaded chainstate; bitcoind uses it as its data directory.
const ChainstatePath = "/var/lib/ss-chainstate"

// chainstateVolume names the pre-loaded chainstate of a network in the
// default project (as `ssbuild image` packs it).
func chainstateVolume(chain string) string { return chainstate.VolumeName(chain) }

// chainstateArtifact is the packed chainstate in an `ssbuild image` output.
func chainstateArtifact(imageDir, chain string) string {
	return filepath.Join(imageDir, imagedir.ChainstateFile(chain))
}

// ensureChainstate gives an instance its own copy of the pre-loaded
// chainstate on member: the default project's chainstate-<chain> volume
// (imported once from the image output's verified artifact when missing) is
// copied into the deployment's project as <instance>-chainstate, a clone on
// ZFS. It reports whether the instance has one; without a pre-loaded
// chainstate bitcoind starts from nothing, which is no error.
func ensureChainstate(ctx context.Context, c lxd.InstanceServer, pool, imageDir, chain string, s InstanceSpec, member string, m *mutations) (bool, error) {
	name := s.Name + "-chainstate"
	dst := scoped(c.UseProject(s.Project), member)
	if _, _, err := dst.GetStoragePoolVolume(pool, "custom", name); err == nil {
		return true, nil
	} else if !isNotFound(err) {
		return false, fmt.Errorf("volume %s/%s: %w", s.Project, name, err)
	}
	src := scoped(c.UseProject("default"), member)
	vol, _, err := src.GetStoragePoolVolume(pool, "custom", chainstateVolume(chain))
	if isNotFound(err) {
		artifact := chainstateArtifact(imageDir, chain)
		if _, err := os.Stat(artifact); imageDir == "" || err != nil {
			return false, nil // the image was built without chainstate
		}
		if err := importChainstate(ctx, src, pool, artifact, chain, member, m); err != nil {
			return false, err
		}
		vol, _, err = src.GetStoragePoolVolume(pool, "custom", chainstateVolume(chain))
	}
	if err != nil {
		return false, fmt.Errorf("chainstate volume %s: %w", chainstateVolume(chain), err)
	}
	op, err := dst.CopyStoragePoolVolume(pool, src, pool, *vol, &lxd.StoragePoolVolumeCopyArgs{Name: name, VolumeOnly: true})
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		return false, fmt.Errorf("copy chainstate %s into %s/%s on %s: %w", vol.Name, s.Project, name, memberName(member), err)
	}
	m.add(1)
	return true, nil
}

// importChainstate verifies the artifact, then imports it as the default
// project's chainstate volume on member.
func importChainstate(ctx context.Context, c lxd.InstanceServer, pool, artifact, chain, member string, m *mutations) error {
	if _, err := chainstate.Verify(ctx, artifact, chainstate.VerifyOptions{Network: chain}); err != nil {
		return fmt.Errorf("chainstate artifact %s: %w", artifact, err)
	}
	f, err := os.Open(artifact)
	if err != nil {
		return err
	}
	defer f.Close()
	op, err := c.CreateStoragePoolVolumeFromBackup(pool, lxd.StoragePoolVolumeBackupArgs{BackupFile: f, Name: chainstateVolume(chain)})
	if err := wait(op, err); err != nil {
		return fmt.Errorf("import chainstate %s into pool %s on %s: %w", artifact, pool, memberName(member), err)
	}
	m.add(1)
	return nil
}
