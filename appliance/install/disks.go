package install

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
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
	PartSizes  []int64  // their sizes in bytes, as Partitions
	Found      []string // signatures found on the disk itself: "GPT", "ext4", ...
	Dev        string   // MAJOR:MINOR
	// Hotplug names the hot-pluggable bus the disk hangs off ("usb",
	// "mmc", ...), found from its sysfs device path; "" for a fixed disk.
	// Such a disk is never chosen automatically, whatever its removable
	// flag says (USB-SATA enclosures and many SD readers say 0).
	Hotplug string
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
		d.Hotplug = HotplugBus(sysRoot, name)
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
			sectors, _ := strconv.ParseInt(readAttr(dir, e.Name(), "size"), 10, 64)
			d.PartSizes = append(d.PartSizes, sectors*512)
			if n := ueventValue(filepath.Join(dir, e.Name(), "uevent"), "PARTNAME"); n != "" {
				d.PartNames = append(d.PartNames, n)
			}
		}
	}
	return d, nil
}

// hotplugBuses are the sysfs path components of buses whose disks can be
// plugged in and out: the installer stick's kin, never a fixed install disk.
var hotplugBuses = []struct{ part, bus string }{
	{"/usb", "usb"},
	{"/mmc", "mmc"}, // SD/MMC cards and eMMC behind a card host
	{"/memstick", "memstick"},
	{"/pcmcia", "pcmcia"},
	{"/fw", "firewire"}, // fw0, fw0.0: an SBP-2 disk on FireWire
	{"/sdio", "sdio"},
}

// HotplugBus names the hot-pluggable bus block device name hangs off, from
// where /sys/block/NAME resolves to in the device tree (e.g.
// devices/pci0000:00/0000:00:14.0/usb2/2-1/.../block/sdb); "" when none.
func HotplugBus(sysRoot, name string) string {
	root, err := filepath.EvalSymlinks(sysRoot)
	if err != nil {
		return ""
	}
	resolved, err := filepath.EvalSymlinks(filepath.Join(sysRoot, "block", name))
	if err != nil {
		return ""
	}
	rel, err := filepath.Rel(root, resolved)
	if err != nil {
		return ""
	}
	rel = "/" + filepath.ToSlash(rel)
	for _, b := range hotplugBuses {
		if strings.Contains(rel, b.part) {
			return b.bus
		}
	}
	return ""
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

// Identity is what the installer checks of its target right before the
// first write: the same device node (MAJOR:MINOR), the same disk behind it
// (serial and WWID where sysfs has them), the same size and the same bytes
// where the probe looked (first and last MiB). A disk swapped or re-plugged
// since it was chosen differs in one of them.
type Identity struct {
	Dev          string // MAJOR:MINOR; "" for an image file
	Serial, WWID string
	Size         int64
	Content      string // sha256 of the first and last MiB
}

func (i Identity) String() string {
	s := fmt.Sprintf("size %d, content sha256 %s", i.Size, i.Content)
	if i.Dev != "" {
		s = "device " + i.Dev + ", " + s
	}
	if i.Serial != "" {
		s += ", serial " + i.Serial
	}
	if i.WWID != "" {
		s += ", WWID " + i.WWID
	}
	return s
}

// Identify reads the identity of the disk (or image file) at path.
func Identify(sysRoot, path string) (Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return Identity{}, fmt.Errorf("identify %s: %w", path, err)
	}
	defer f.Close()
	return identifyOpen(sysRoot, f)
}

// identifyOpen is Identify of an open disk, so the check and the writes
// that follow it go to the same device.
func identifyOpen(sysRoot string, f *os.File) (Identity, error) {
	var id Identity
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return id, fmt.Errorf("identify %s: %w", f.Name(), err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		id.Dev = fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		dir := filepath.Join(sysRoot, "dev", "block", id.Dev)
		id.Serial = readAttr(dir, "device", "serial")
		id.WWID = cmp.Or(readAttr(dir, "wwid"), readAttr(dir, "device", "wwid"))
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return id, fmt.Errorf("identify %s: size: %w", f.Name(), err)
	}
	id.Size = size
	n := min(size, probeSize)
	h := sha256.New()
	for _, off := range []int64{0, size - n} {
		if _, err := io.Copy(h, io.NewSectionReader(f, off, n)); err != nil {
			return id, fmt.Errorf("identify %s: read: %w", f.Name(), err)
		}
	}
	id.Content = hex.EncodeToString(h.Sum(nil))
	return id, nil
}

// DisksSettled waits until the block devices under sysRoot (names and
// sizes) have stayed the same for quiet, polling every poll, for at most
// limit, and returns their names. Disks other than the stick appear when
// their buses finish probing; a fixed sleep either wastes time or misses
// the slow ones.
func DisksSettled(ctx context.Context, sysRoot string, quiet, poll, limit time.Duration) ([]string, bool) {
	snapshot := func() (string, []string) {
		ents, _ := os.ReadDir(filepath.Join(sysRoot, "block"))
		var names, state []string
		for _, e := range ents {
			names = append(names, e.Name())
			state = append(state, e.Name()+"="+readAttr(filepath.Join(sysRoot, "block", e.Name()), "size"))
		}
		return strings.Join(state, " "), names
	}
	deadline := time.Now().Add(limit)
	last, names := snapshot()
	since := time.Now()
	for {
		if time.Since(since) >= quiet {
			return names, true
		}
		if time.Now().After(deadline) {
			return names, false
		}
		select {
		case <-ctx.Done():
			return names, false
		case <-time.After(poll):
		}
		var now string
		if now, names = snapshot(); now != last {
			last, since = now, time.Now()
		}
	}
}
