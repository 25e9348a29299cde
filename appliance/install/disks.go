package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Disk is what the installer knows about one whole disk, read from sysfs
// (facts) and from its first sectors (Found).
type Disk struct {
	Name       string   // kernel name: sda, nvme0n1
	Path       string   // device node: /dev/sda
	Size       int64    // bytes
	Removable  bool     // /sys/block/X/removable (USB sticks, card readers)
	ReadOnly   bool     // /sys/block/X/ro
	Serial     string   // device/serial, or the serial from the WWID
	WWID       string   // wwid or device/wwid
	Model      string   // device/model
	Partitions []string // partitions the kernel sees: sda1, nvme0n1p1, ...
	PartNames  []string // their GPT partition names (PARTNAME in uevent)
	Found      []string // signatures found on the disk itself: "GPT", "ext4", ...
	Dev        string   // MAJOR:MINOR
}

func (d Disk) String() string {
	s := fmt.Sprintf("%s (%s", d.Path, humanBytes(d.Size))
	if d.Model != "" {
		s += ", " + d.Model
	}
	if d.Serial != "" {
		s += ", serial " + d.Serial
	}
	return s + ")"
}

// skippedDisks are kernel block devices that are never install targets.
var skippedDisks = []string{"loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd", "mtdblock"}

// ReadDisks lists the whole disks under sysRoot (normally /sys) and names
// their nodes under devRoot (normally /dev). Loop, RAM, optical and
// device-mapper devices are left out; so are disks of size zero (empty card
// readers). Signatures are not read here: see Probe.
func ReadDisks(sysRoot, devRoot string) ([]Disk, error) {
	dir := filepath.Join(sysRoot, "block")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	var disks []Disk
	for _, e := range entries {
		name := e.Name()
		if skipped(name) {
			continue
		}
		d, err := readDisk(filepath.Join(dir, name), name)
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", name, err)
		}
		if d.Size == 0 {
			continue
		}
		d.Path = filepath.Join(devRoot, name)
		disks = append(disks, d)
	}
	sort.Slice(disks, func(i, j int) bool { return disks[i].Name < disks[j].Name })
	return disks, nil
}

func skipped(name string) bool {
	for _, p := range skippedDisks {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func readDisk(dir, name string) (Disk, error) {
	d := Disk{Name: name}
	sectors, err := strconv.ParseInt(readAttr(dir, "size"), 10, 64)
	if err != nil {
		return d, fmt.Errorf("size: %w", err)
	}
	d.Size = sectors * 512 // sysfs counts 512-byte sectors whatever the logical block size
	d.Removable = readAttr(dir, "removable") == "1"
	d.ReadOnly = readAttr(dir, "ro") == "1"
	d.Model = readAttr(dir, "device", "model")
	d.Serial = readAttr(dir, "device", "serial")
	d.WWID = readAttr(dir, "wwid")
	if d.WWID == "" {
		d.WWID = readAttr(dir, "device", "wwid")
	}
	d.Dev = readAttr(dir, "dev")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return d, err
	}
	for _, e := range entries {
		// A partition is a subdirectory with a "partition" attribute.
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "partition")); err == nil {
			d.Partitions = append(d.Partitions, e.Name())
			if n := ueventValue(filepath.Join(dir, e.Name(), "uevent"), "PARTNAME"); n != "" {
				d.PartNames = append(d.PartNames, n)
			}
		}
	}
	return d, nil
}

// readAttr reads one sysfs attribute, trimmed; missing means "".
func readAttr(dir string, path ...string) string {
	b, err := os.ReadFile(filepath.Join(append([]string{dir}, path...)...))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func ueventValue(path, key string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			return v
		}
	}
	return ""
}

// DiskOfDevice names the whole disk holding device MAJOR:MINOR (a partition
// or a disk), through /sys/dev/block. It is how the installer finds the disk
// its payload filesystem is mounted from.
func DiskOfDevice(sysRoot string, major, minor uint32) (string, error) {
	link := filepath.Join(sysRoot, "dev", "block", fmt.Sprintf("%d:%d", major, minor))
	target, err := filepath.EvalSymlinks(link)
	if err != nil {
		return "", fmt.Errorf("device %d:%d: %w", major, minor, err)
	}
	if _, err := os.Stat(filepath.Join(target, "partition")); err == nil {
		return filepath.Base(filepath.Dir(target)), nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	return filepath.Base(target), nil
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
