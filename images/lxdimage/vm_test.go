package lxdimage_test

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/images/lxdimage"
	"github.com/sovereign-stack/ssbuild/images/rootfs/rootfstest"
	"github.com/sovereign-stack/ssbuild/internal/testenv"
)

// TestVMImage builds the VM disk from two separate copies of the bookworm
// tree (different ctimes and atimes, as two machines would have): the
// qcow2 must be byte-identical, and its structure what sgdisk, blkid,
// e2fsck, fsck.fat and qemu-img accept. LXD VMs cannot run here (no
// vhost-vsock), so the disk is not booted.
func TestVMImage(t *testing.T) {
	testenv.RequireTools(t, "mkfs.ext4", "debugfs", "e2fsck", "qemu-img", "sgdisk", "blkid", "fsck.fat")
	tmp := t.TempDir()
	a, b := filepath.Join(tmp, "a"), filepath.Join(tmp, "b")
	for _, out := range []string{a, b} {
		spec := bookwormSpec(rootfstest.Dir(t), out)
		spec.Formats = []lxdimage.Format{lxdimage.VM}
		build(t, spec)
	}
	for _, name := range []string{lxdimage.DiskFile, lxdimage.MetadataFile, lxdimage.ManifestFile} {
		if ha, hb := sha256Of(t, filepath.Join(a, name)), sha256Of(t, filepath.Join(b, name)); ha != hb {
			t.Errorf("%s differs between builds from two copies of the tree", name)
			if name == lxdimage.ManifestFile {
				out, _ := exec.Command("diff", filepath.Join(a, name), filepath.Join(b, name)).CombinedOutput()
				t.Logf("%s", out)
			}
		}
	}
	m := readManifest(t, a)
	if m.VMDisk == nil || len(m.Images) != 1 || m.Images[0].Type != "virtual-machine" {
		t.Fatalf("manifest: vm disk %+v, images %+v", m.VMDisk, m.Images)
	}
	for _, tool := range []string{"mkfs.ext4", "qemu-img"} {
		if m.Tools[tool] == "" {
			t.Errorf("manifest has no version of %s", tool)
		}
	}
	qcow2 := filepath.Join(a, lxdimage.DiskFile)

	out := run(t, "qemu-img", "check", qcow2)
	if !strings.Contains(out, "No errors were found") {
		t.Errorf("qemu-img check:\n%s", out)
	}
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "--output=json", qcow2)), &info); err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" {
		t.Errorf("qemu-img info: format %q", info.Format)
	}

	raw := filepath.Join(tmp, "disk.raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw)
	if out := run(t, "sgdisk", "-v", raw); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	table := run(t, "sgdisk", "-p", raw)
	if !strings.Contains(table, "Disk identifier (GUID): "+m.VMDisk.Disk) {
		t.Errorf("disk GUID is not the manifest's %s:\n%s", m.VMDisk.Disk, table)
	}
	parts := partitions(t, table)
	if len(parts) != 2 || parts[0].code != "EF00" || parts[0].name != "UEFI" || parts[1].code != "8300" || parts[1].name != "rootfs" {
		t.Fatalf("partitions %+v, want UEFI (EF00) and rootfs (8300):\n%s", parts, table)
	}
	if p2 := run(t, "sgdisk", "-i", "2", raw); !strings.Contains(p2, "Partition unique GUID: "+m.VMDisk.RootPartition) {
		t.Errorf("root partition GUID is not the manifest's %s:\n%s", m.VMDisk.RootPartition, p2)
	}
	if int64(parts[1].end+1)*512+1<<20 != info.VirtualSize {
		t.Errorf("disk is %d bytes, partitions end at sector %d: want 1 MiB for the backup GPT", info.VirtualSize, parts[1].end)
	}

	esp := extract(t, raw, parts[0], filepath.Join(tmp, "esp.img"))
	if got := run(t, "blkid", "-o", "export", esp); !strings.Contains(got, "TYPE=vfat") || !strings.Contains(got, "LABEL=UEFI") {
		t.Errorf("ESP blkid:\n%s", got)
	}
	if out, err := exec.Command("fsck.fat", "-n", esp).CombinedOutput(); err != nil {
		t.Errorf("fsck.fat -n on the ESP: %v\n%s", err, out)
	}

	root := extract(t, raw, parts[1], filepath.Join(tmp, "root.ext4"))
	got := run(t, "blkid", "-o", "export", root)
	for _, want := range []string{"TYPE=ext4", "LABEL=rootfs", "UUID=" + m.VMDisk.RootFS} {
		if !strings.Contains(got, want) {
			t.Errorf("root blkid lacks %s:\n%s", want, got)
		}
	}
	if out, err := exec.Command("e2fsck", "-fn", root).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
	if got := run(t, "debugfs", "-R", "cat /usr/lib/os-release", root); !strings.Contains(got, "VERSION_CODENAME=bookworm") {
		t.Errorf("/usr/lib/os-release in the root partition:\n%s", got)
	}
	stat := run(t, "debugfs", "-R", "stat /etc/shadow", root)
	for _, want := range []string{"Group:    42", "Mode:  0640", "mtime: 0x6553f100", "ctime: 0x6553f100", "atime: 0x6553f100"} {
		if !strings.Contains(stat, want) {
			t.Errorf("/etc/shadow in the root partition lacks %q:\n%s", want, stat)
		}
	}
	if dev := run(t, "debugfs", "-R", "stat /dev/null", root); !strings.Contains(dev, "Type: character special") {
		t.Errorf("/dev/null in the root partition:\n%s", dev)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

type partition struct {
	start, end int64
	code, name string
}

// partitions parses sgdisk -p's table lines.
func partitions(t *testing.T, table string) []partition {
	var parts []partition
	inTable := false
	for _, l := range strings.Split(table, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == "Number" {
			inTable = true
			continue
		}
		if !inTable || len(f) < 7 {
			continue
		}
		start, _ := strconv.ParseInt(f[1], 10, 64)
		end, _ := strconv.ParseInt(f[2], 10, 64)
		parts = append(parts, partition{start: start, end: end, code: f[5], name: strings.Join(f[6:], " ")})
	}
	return parts
}

// extract copies a partition out of a raw disk image.
func extract(t *testing.T, raw string, p partition, out string) string {
	t.Helper()
	in, err := os.Open(raw)
	must(t, err)
	defer in.Close()
	f, err := os.Create(out)
	must(t, err)
	defer f.Close()
	_, err = io.Copy(f, io.NewSectionReader(in, p.start*512, (p.end-p.start+1)*512))
	must(t, err)
	return out
}
