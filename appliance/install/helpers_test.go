package install

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

const (
	MiB = int64(1) << 20
	GiB = int64(1) << 30
)

// testLayout is the demo recipe's layout.
var testLayout = recipes.Layout{ESP: recipes.Size(256 * MiB), OS: recipes.Size(8 * GiB),
	MinZFS: recipes.Size(4 * GiB), MinDisk: recipes.Size(16 * GiB)}

// espFiles are the boot files the image build puts on the stick.
var espFiles = map[string]string{
	"EFI/BOOT/BOOTX64.EFI":        "MZ fake systemd-boot\n",
	"loader/loader.conf":          "default ssbuild.conf\ntimeout 0\n",
	"loader/entries/ssbuild.conf": "title ssbuild\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=PARTLABEL=ssbuild-os rw\n",
	"vmlinuz":                     "fake kernel\n",
	"initrd.img":                  "fake initrd\n",
}

// makePayload builds a payload directory like the stick's: an ext4 OS
// image made by mkfs.ext4 -d, the ESP tree and SHA256SUMS.
func makePayload(t testing.TB) string {
	t.Helper()
	testenv.RequireTools(t, "mkfs.ext4")
	dir := t.TempDir()
	root := filepath.Join(t.TempDir(), "root")
	for _, d := range []string{"etc", "usr/bin", "var/lib"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/os-release"), []byte("ID=test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, stick.OSImage)
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "rootfs", "-d", root, img, "64M")
	for name, data := range espFiles {
		p := filepath.Join(dir, stick.ESPDir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A kernel-and-initrd-sized file: many clusters, several FAT sectors.
	if err := os.WriteFile(filepath.Join(dir, stick.ESPDir, bigESPFile), bigESPData(), 0o644); err != nil {
		t.Fatal(err)
	}
	writeManifest(t, dir)
	return dir
}

const bigESPFile = "initrd-large.img"

// bigESPData is the same 40 MiB of pseudo-random bytes every time.
func bigESPData() []byte {
	b := make([]byte, 40<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

func writeManifest(t testing.TB, dir string) {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || p == filepath.Join(dir, stick.Manifest) {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		rel, _ := filepath.Rel(dir, p)
		lines = append(lines, hex.EncodeToString(sum[:])+"  "+filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	if err := os.WriteFile(filepath.Join(dir, stick.Manifest), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// sparseDisk makes a sparse disk image of size bytes.
func sparseDisk(t testing.TB, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := command.Output(context.Background(), name, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// detachLoops detaches, by name, every loop device backed by img (the
// installer's own are autoclear; this catches one a failing test left).
func detachLoops(t testing.TB, img string) {
	t.Cleanup(func() {
		out, _ := command.Output(context.Background(), "losetup", "-n", "-O", "NAME", "-j", img)
		for _, dev := range strings.Fields(out) {
			if _, err := command.Output(context.Background(), "losetup", "-d", dev); err != nil {
				t.Errorf("detach %s: %v", dev, err)
			}
		}
	})
}

type gptPart struct {
	start, end int64 // sectors
	typeGUID   string
	name       string
}

// sgdiskParts reads the partition table the way a user would: sgdisk -v
// must find no problems, and sgdisk -i gives each partition's facts.
func sgdiskParts(t testing.TB, img string) []gptPart {
	t.Helper()
	if v := run(t, "sgdisk", "-v", img); !strings.Contains(v, "No problems found") {
		t.Fatalf("sgdisk -v %s:\n%s", img, v)
	}
	p := run(t, "sgdisk", "-p", img)
	var parts []gptPart
	for _, line := range strings.Split(p, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		if _, err := strconv.Atoi(f[0]); err != nil {
			continue
		}
		info := run(t, "sgdisk", "-i", f[0], img)
		parts = append(parts, gptPart{
			start:    atoi(t, field(t, info, `First sector: (\d+)`)),
			end:      atoi(t, field(t, info, `Last sector: (\d+)`)),
			typeGUID: field(t, info, `Partition GUID code: ([0-9A-F-]+)`),
			name:     field(t, info, `Partition name: '([^']*)'`),
		})
	}
	return parts
}

func field(t testing.TB, s, re string) string {
	t.Helper()
	m := regexp.MustCompile(re).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("no %s in:\n%s", re, s)
	}
	return m[1]
}

func atoi(t testing.TB, s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// blkidAt probes the filesystem at a byte range of img.
func blkidAt(t testing.TB, img string, off, size int64) map[string]string {
	t.Helper()
	out, err := command.Output(context.Background(), "blkid", "-p", "-o", "export",
		"-O", strconv.FormatInt(off, 10), "-S", strconv.FormatInt(size, 10), img)
	m := map[string]string{}
	if err != nil {
		return m // blkid exits 2 when it finds nothing
	}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// checkInstalled checks an installed target with the standard tools: exact
// layout, types and labels, clean filesystems, the boot files and the
// config with its modes.
func checkInstalled(t *testing.T, img string, l recipes.Layout, files []File) {
	t.Helper()
	info, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	sectors := info.Size() / 512
	parts := sgdiskParts(t, img)
	osStart := (MiB + int64(l.ESP)) / 512
	zfsStart := osStart + int64(l.OS)/512
	want := []gptPart{
		{2048, osStart - 1, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", hostdisk.LabelESP},
		{osStart, zfsStart - 1, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", hostdisk.LabelOS},
		{zfsStart, sectors - 34, "6A898CC3-1DD2-11B2-99A6-080020736631", hostdisk.LabelZFS},
	}
	if fmt.Sprint(parts) != fmt.Sprint(want) {
		t.Fatalf("partitions:\n got %v\nwant %v", parts, want)
	}
	esp := blkidAt(t, img, 2048*512, int64(l.ESP))
	if esp["TYPE"] != "vfat" || esp["LABEL"] != hostdisk.FATLabelESP || esp["VERSION"] != "FAT32" {
		t.Errorf("ESP: blkid says %v, want FAT32 labelled %s", esp, hostdisk.FATLabelESP)
	}
	if os := blkidAt(t, img, osStart*512, int64(l.OS)); os["TYPE"] != "ext4" {
		t.Errorf("OS partition: blkid says %v, want ext4", os)
	}
	if zfs := blkidAt(t, img, zfsStart*512, (sectors-34-zfsStart+1)*512); len(zfs) != 0 {
		t.Errorf("ZFS partition: blkid finds %v, want it unformatted", zfs)
	}

	// The ESP: fsck.fat on a copy of its bytes, the boot files with mtools.
	espImg := filepath.Join(t.TempDir(), "esp.img")
	run(t, "dd", "if="+img, "of="+espImg, "bs=1M", "skip=1", fmt.Sprintf("count=%d", int64(l.ESP)/MiB), "status=none")
	run(t, "fsck.fat", "-n", espImg)
	sum := sha256.New()
	if _, err := command.Run(context.Background(), command.Cmd{Name: "mtype", Args: []string{"-i", espImg, "::/" + bigESPFile}, Stdout: sum}); err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(bigESPData()); hex.EncodeToString(sum.Sum(nil)) != hex.EncodeToString(want[:]) {
		t.Errorf("ESP %s: content differs from the payload's", bigESPFile)
	}
	for name, data := range espFiles {
		if got := run(t, "mtype", "-i", espImg, "::/"+name); got != strings.TrimSpace(data) {
			t.Errorf("ESP %s: %q, want %q", name, got, data)
		}
	}

	// The OS filesystem: e2fsck clean, grown to the partition, files there.
	osDev := fmt.Sprintf("%s?offset=%d", img, osStart*512)
	run(t, "e2fsck", "-fn", osDev)
	hdr := run(t, "dumpe2fs", "-h", osDev)
	blocks := atoi(t, field(t, hdr, `Block count:\s+(\d+)`))
	bsize := atoi(t, field(t, hdr, `Block size:\s+(\d+)`))
	if canGrow(t) {
		if blocks*bsize != int64(l.OS) {
			t.Errorf("OS filesystem is %d bytes, want the whole partition (%d)", blocks*bsize, int64(l.OS))
		}
	} else {
		// Without CAP_SYS_RESOURCE (this sandbox; never the installer's
		// init) the kernel refuses the online resize: the first boot must
		// find the marker that tells it to grow the filesystem.
		if got := run(t, "debugfs", "-R", "cat "+GrowMarker, osDev); !strings.Contains(got, "EXT4_IOC_RESIZE_FS") {
			t.Errorf("OS filesystem not grown and %s says %q", GrowMarker, got)
		}
	}
	for _, f := range files {
		if got := run(t, "debugfs", "-R", "cat "+f.Path, osDev); got != strings.TrimSpace(string(f.Data)) {
			t.Errorf("%s in the OS: %q, want %q", f.Path, got, f.Data)
		}
		stat := run(t, "debugfs", "-R", "stat "+f.Path, osDev)
		mode := field(t, stat, `Mode:\s+(\d+)`)
		if want := fmt.Sprintf("%04o", f.Mode.Perm()); mode != want {
			t.Errorf("%s mode %s, want %s", f.Path, mode, want)
		}
		if !regexp.MustCompile(`User:\s+0\s+Group:\s+0`).MatchString(stat) {
			t.Errorf("%s not owned by root:\n%s", f.Path, stat)
		}
	}
	if got := run(t, "debugfs", "-R", "cat /etc/os-release", osDev); got != "ID=test" {
		t.Errorf("OS image content: /etc/os-release %q", got)
	}
}

// testLog sends progress lines to the test log.
type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// canGrow reports whether this process may grow a mounted ext4 filesystem
// (CAP_SYS_RESOURCE, bit 24 of CapEff).
func canGrow(t testing.TB) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	caps, err := strconv.ParseUint(field(t, string(b), `CapEff:\s+([0-9a-f]+)`), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	return caps&(1<<24) != 0
}
