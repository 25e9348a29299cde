package install

import (
	"fmt"
	"os"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/sovereign-stack/ssbuild/appliance/install/efiboot"
	"github.com/sovereign-stack/ssbuild/handoff/stick"
)

// BootEntry is the firmware boot entry for the bootloader Install put on
// target's ESP, read from the target's GPT (the partition's GUID and
// sectors are what the firmware matches).
func BootEntry(target, host string) (efiboot.Entry, error) {
	f, err := os.Open(target)
	if err != nil {
		return efiboot.Entry{}, fmt.Errorf("boot entry: %w", err)
	}
	defer f.Close()
	d, err := diskfs.OpenBackend(file.New(f, true), diskfs.WithSectorSize(diskfs.SectorSizeDefault))
	if err != nil {
		return efiboot.Entry{}, fmt.Errorf("boot entry: %s: %w", target, err)
	}
	t, err := d.GetPartitionTable()
	if err != nil {
		return efiboot.Entry{}, fmt.Errorf("boot entry: %s: read GPT: %w", target, err)
	}
	g, ok := t.(*gpt.Table)
	if !ok || len(g.Partitions) < partESP {
		return efiboot.Entry{}, fmt.Errorf("boot entry: %s: no GPT with an ESP", target)
	}
	esp := g.Partitions[partESP-1]
	return efiboot.Entry{
		Description: "Sovereign Stack (" + host + ")",
		PartNumber:  partESP, PartGUID: esp.GUID,
		PartStart: esp.Start, PartSize: esp.End - esp.Start + 1,
		Loader: `\` + strings.ReplaceAll(stick.BootloaderESP, "/", `\`),
	}, nil
}

// registerBoot makes target the firmware's first boot entry. A failure
// is reported, not fatal: the disk also boots by the removable-media path
// on firmware that looks for it.
func registerBoot(env Env, target, host string) {
	rep := env.Progress
	if env.EFIVars == "" {
		return
	}
	if _, err := os.Stat(env.EFIVars); err != nil {
		rep.Info("no UEFI variables (%v): %s boots only by the removable-media path EFI/BOOT/BOOTX64.EFI", err, target)
		return
	}
	e, err := BootEntry(target, host)
	if err == nil {
		var n uint16
		if n, err = efiboot.Register(env.EFIVars, e); err == nil {
			rep.Info("firmware boot entry Boot%04X %q (%s on %s) is first in BootOrder", n, e.Description, e.Loader, target)
			return
		}
	}
	rep.Info("WARNING: could not register %s with the firmware (%v): if the machine stops in its firmware after the stick is pulled, choose %s in its boot menu", target, err, target)
}
