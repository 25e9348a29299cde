package install

import (
	"cmp"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sovereign-stack/ssbuild/recipes"
)

// Choice is what target selection needs from the recipe.
type Choice struct {
	Target recipes.Target // explicit serial, WWID or path; empty means auto
	Layout recipes.Layout
	Wipe   bool // install over a disk holding partitions or filesystems
}

// RefusedError says why a disk was not installed onto and how to allow it.
type RefusedError struct {
	Disk   Disk
	Reason string
	Allow  string // what the recipe must say to allow it; empty when nothing can
}

func (e *RefusedError) Error() string {
	msg := fmt.Sprintf("refusing to install onto %s: %s", e.Disk, e.Reason)
	if e.Allow != "" {
		msg += "; " + e.Allow
	}
	return msg
}

// MinDiskSize is the smallest disk the layout fits on: the recipe's minDisk,
// or what the partitions need (recipes.Layout.Need) when that is more.
func MinDiskSize(l recipes.Layout) int64 {
	return int64(max(l.Need(), l.MinDisk))
}

// SelectTarget picks the install disk among disks, never one named in boot
// (the installer's own medium). An explicit choice must match exactly one
// disk; auto takes the largest non-removable, writable disk that is not on
// a hot-pluggable bus (USB, SD/MMC, ...; see Disk.Hotplug), preferring,
// unless the recipe says wipe, the largest one that holds no data. The chosen disk
// is refused when it is too small, read-only, or holds partitions or
// filesystems and the recipe does not say wipe — unless what it holds is an
// unfinished install of this payload (resumable), which is continued.
func SelectTarget(disks []Disk, boot map[string]bool, c Choice, resumable func(Disk) bool) (Disk, error) {
	var d Disk
	if c.Target.Auto() {
		// best is the largest candidate; usable the largest one that can be
		// taken as it is (blank or this install's own, and big enough). A
		// disk holding data is never chosen over a usable one: it is the
		// target (and refused) only when no usable disk exists.
		var best, usable *Disk
		var skipped []string
		need := MinDiskSize(c.Layout)
		for i := range disks {
			switch x := disks[i]; {
			case boot[x.Name]:
				skipped = append(skipped, x.Path+" (installer medium)")
			case x.Hotplug != "":
				skipped = append(skipped, x.Path+" (on "+x.Hotplug+", hot-pluggable)")
			case x.Removable:
				skipped = append(skipped, x.Path+" (removable)")
			case x.ReadOnly:
				skipped = append(skipped, x.Path+" (read-only)")
			default:
				if best == nil || x.Size > best.Size {
					best = &disks[i]
				}
				free := len(holds(x)) == 0 || (resumable != nil && resumable(x))
				if !c.Wipe && free && x.Size >= need && (usable == nil || x.Size > usable.Size) {
					usable = &disks[i]
				}
			}
		}
		if best == nil {
			return Disk{}, fmt.Errorf("no install disk: no fixed (not removable, not on USB or SD/MMC), writable disk besides the installer medium (seen: %s)", strings.Join(skipped, ", "))
		}
		d = *cmp.Or(usable, best)
	} else {
		var err error
		if d, err = explicitTarget(disks, c.Target); err != nil {
			return Disk{}, err
		}
		if boot[d.Name] {
			return Disk{}, &RefusedError{Disk: d, Reason: "it is the installer's own medium",
				Allow: "choose another disk in installer.target"}
		}
	}
	if d.ReadOnly {
		return Disk{}, &RefusedError{Disk: d, Reason: "it is read-only"}
	}
	if need := MinDiskSize(c.Layout); d.Size < need {
		return Disk{}, &RefusedError{Disk: d, Reason: fmt.Sprintf("it is smaller than %s, the smallest disk the layout allows", humanBytes(need)),
			Allow: "lower installer.layout sizes or use a larger disk"}
	}
	if held := holds(d); len(held) > 0 && !c.Wipe && (resumable == nil || !resumable(d)) {
		return Disk{}, &RefusedError{Disk: d, Reason: "it holds " + strings.Join(held, ", "),
			Allow: "set installer.wipe: true in the recipe to erase it, or wipe it yourself"}
	}
	return d, nil
}

// holds describes what is on a disk: partitions the kernel sees and
// signatures at its start.
func holds(d Disk) []string {
	var held []string
	if len(d.Partitions) > 0 {
		parts := slices.Clone(d.Partitions)
		for i := range parts {
			if i < len(d.PartSizes) && d.PartSizes[i] > 0 {
				parts[i] += " (" + humanBytes(d.PartSizes[i]) + ")"
			}
		}
		held = append(held, fmt.Sprintf("partitions %s", strings.Join(parts, " ")))
	}
	gpt := slices.Contains(d.Found, "GPT")
	for _, s := range d.Found {
		if s == "MBR" && gpt {
			continue // the protective MBR in front of a GPT
		}
		held = append(held, describe(s))
	}
	return held
}

var signatureWords = map[string]string{
	"GPT":               "a GPT partition table",
	"MBR":               "an MBR partition table",
	"ext2":              "an ext2 filesystem",
	"ext3":              "an ext3 filesystem",
	"ext4":              "an ext4 filesystem",
	"jbd":               "an ext3/ext4 external journal",
	"vfat":              "a FAT filesystem",
	"ntfs":              "an NTFS filesystem",
	"exfat":             "an exFAT filesystem",
	"xfs":               "an XFS filesystem",
	"btrfs":             "a btrfs filesystem",
	"squashfs":          "a squashfs filesystem",
	"iso9660":           "an ISO 9660 filesystem",
	"swap":              "a swap area",
	"swsuspend":         "a hibernation image in a swap area",
	"crypto_LUKS":       "a LUKS encrypted volume",
	"linux_raid_member": "an md RAID member",
	"bcache":            "a bcache device",
	"ceph_bluestore":    "a Ceph BlueStore OSD",
	"zfs_member":        "a ZFS pool label",
	"LVM2_member":       "an LVM physical volume",
	"data":              "data (non-zero bytes in its first or last MiB)",
	"journal":           "another install's journal (another payload or host)",
}

// describe is the words for a signature, with blkid's name.
func describe(sig string) string {
	if w, ok := signatureWords[sig]; ok && !slices.Contains([]string{"GPT", "MBR", "data", "journal"}, sig) {
		return w + " (" + sig + ")"
	} else if ok {
		return w
	}
	return sig
}

func explicitTarget(disks []Disk, t recipes.Target) (Disk, error) {
	var want string
	match := func(d Disk) bool { return false }
	switch {
	case t.Serial != "":
		want = "serial " + t.Serial
		match = func(d Disk) bool { return d.Serial == t.Serial }
	case t.WWID != "":
		want = "WWID " + t.WWID
		match = func(d Disk) bool { return d.WWID == t.WWID }
	case t.Path != "":
		want = "path " + t.Path
		p := t.Path
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r // /dev/disk/by-id/... names a /dev node
		}
		match = func(d Disk) bool { return d.Path == t.Path || d.Path == p }
	}
	var found []Disk
	for _, d := range disks {
		if match(d) {
			found = append(found, d)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		var seen []string
		for _, d := range disks {
			seen = append(seen, d.String())
		}
		return Disk{}, fmt.Errorf("no disk with %s (installer.target); disks: %s", want, strings.Join(seen, "; "))
	default:
		return Disk{}, fmt.Errorf("%d disks with %s (installer.target): choose by path or WWID", len(found), want)
	}
}
