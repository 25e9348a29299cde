package install

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// TestProbeToolMade probes disks the standard tools made and checks that
// blkid -p and wipefs see a signature on the same file (so the fixture is
// real) and that Probe names exactly what wipefs lists.
func TestProbeToolMade(t *testing.T) {
	testenv.RequireTools(t, "sgdisk", "mkfs.ext2", "mkfs.ext3", "mkfs.ext4", "mkfs.vfat", "blkid", "wipefs", "cryptsetup",
		"mkfs.btrfs", "mkfs.xfs", "mkswap", "mkfs.ntfs", "mkfs.exfat", "mksquashfs", "xorriso", "make-bcache")
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("not a secret, a test key"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	luks := func(typ string) func(string) {
		return func(img string) {
			run(t, "cryptsetup", "luksFormat", "-q", "--type", typ, "--key-file", key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img)
		}
	}
	for _, tc := range []struct {
		name string
		make func(img string)
		want []string
	}{
		{"blank", func(string) {}, nil},
		{"gpt", func(img string) { run(t, "sgdisk", "-o", "-n", "1:2048:+1M", img) }, []string{"GPT", "MBR"}},
		{"ext2", func(img string) { run(t, "mkfs.ext2", "-q", "-F", img) }, []string{"ext2"}},
		{"ext3", func(img string) { run(t, "mkfs.ext3", "-q", "-F", img) }, []string{"ext3"}},
		{"ext4", func(img string) { run(t, "mkfs.ext4", "-q", "-F", img) }, []string{"ext4"}},
		{"vfat", func(img string) { run(t, "mkfs.vfat", "-F", "32", img) }, []string{"vfat"}},
		{"luks1", luks("luks1"), []string{"crypto_LUKS"}},
		{"luks2", luks("luks2"), []string{"crypto_LUKS"}},
		{"luks2 secondary header", func(img string) {
			luks("luks2")(img)
			writeAt(t, img, 0, make([]byte, 4096)) // the primary header lost
		}, []string{"crypto_LUKS"}},
		{"btrfs", func(img string) { run(t, "mkfs.btrfs", "-q", img) }, []string{"btrfs"}},
		{"xfs", func(img string) { run(t, "mkfs.xfs", "-q", img) }, []string{"xfs"}},
		{"swap", func(img string) { run(t, "mkswap", img) }, []string{"swap"}},
		{"swsuspend", func(img string) {
			run(t, "mkswap", img)
			// What the kernel writes over the swap signature when it
			// hibernates into the area.
			writeAt(t, img, 4096-10, []byte("S1SUSPEND\x00"))
		}, []string{"swsuspend"}},
		{"ntfs", func(img string) { run(t, "mkfs.ntfs", "-q", "-F", "-Q", img) }, []string{"ntfs", "MBR"}},
		{"exfat", func(img string) { run(t, "mkfs.exfat", img) }, []string{"exfat", "MBR"}},
		{"squashfs", func(img string) { run(t, "mksquashfs", src, img, "-quiet", "-noappend") }, []string{"squashfs"}},
		{"iso9660", func(img string) {
			iso := filepath.Join(dir, "x.iso")
			run(t, "xorriso", "-as", "mkisofs", "-quiet", "-o", iso, src)
			copyInto(t, iso, img)
		}, []string{"iso9660"}},
		{"bcache", func(img string) { run(t, "make-bcache", "-B", img) }, []string{"bcache"}},
		{"ceph_bluestore", func(img string) {
			// No Debian tool makes an OSD; its label starts with this
			// text, and blkid must agree it is one.
			writeAt(t, img, 0, []byte("bluestore block device\n0123456789abcdef\n"))
		}, []string{"ceph_bluestore"}},
		{"data at the end", func(img string) { writeAt(t, img, 300*MiB-100, []byte("x")) }, []string{"data"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := sparseDisk(t, dir, tc.name+".img", 300*MiB)
			tc.make(img)
			got, err := Probe(img)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Probe: %v, want %v", got, tc.want)
			}
			if tc.want == nil || tc.name == "data at the end" {
				return
			}
			if out, err := command.Output(context.Background(), "blkid", "-p", "-o", "export", img); err != nil || !regexp.MustCompile(`(?m)^(TYPE|PTTYPE)=`).MatchString(out) {
				t.Errorf("blkid -p finds no signature: %v %s", err, out)
			}
			// wipefs lists every signature it would erase; the same set,
			// in Probe's names.
			names := map[string]string{"gpt": "GPT", "PMBR": "MBR", "dos": "MBR"}
			wipefs := map[string]bool{}
			for _, typ := range strings.Fields(run(t, "wipefs", "--output", "TYPE", "--noheadings", img)) {
				wipefs[cmp.Or(names[typ], typ)] = true
			}
			probed := map[string]bool{}
			for _, s := range got {
				probed[s] = true
			}
			if !reflect.DeepEqual(probed, wipefs) {
				t.Errorf("Probe finds %v, wipefs %v", got, wipefs)
			}
		})
	}
}

func writeAt(t testing.TB, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// copyInto writes the file src at the start of dst, keeping dst's size.
func copyInto(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, dst, 0, b)
}

// TestProbeMagic checks the signatures no tool here can make (no zpool,
// pvcreate, and no md driver in this kernel for mdadm --create) at the
// offsets blkid reads them from.
func TestProbeMagic(t *testing.T) {
	const size = 64 * MiB
	probe := func(b []byte) []string {
		return Signatures(b[:probeSize], b[len(b)-probeSize:], int64(len(b)))
	}
	b := make([]byte, size)
	binary.LittleEndian.PutUint64(b[128<<10+5*1024:], 0x00bab10c)
	if got := probe(b); !reflect.DeepEqual(got, []string{"zfs_member"}) {
		t.Errorf("ZFS uberblock: %v", got)
	}
	b = make([]byte, size)
	binary.BigEndian.PutUint64(b[size-256<<10+128<<10+7*1024:], 0x00bab10c) // label 3
	if got := probe(b); !reflect.DeepEqual(got, []string{"zfs_member"}) {
		t.Errorf("ZFS uberblock at the end: %v", got)
	}
	b = make([]byte, size)
	copy(b[512:], "LABELONE")
	copy(b[512+24:], "LVM2 001")
	if got := probe(b); !reflect.DeepEqual(got, []string{"LVM2_member"}) {
		t.Errorf("LVM2 label: %v", got)
	}
	b = make([]byte, size)
	b[446+4] = 0x83 // one Linux partition entry
	b[510], b[511] = 0x55, 0xaa
	if got := probe(b); !reflect.DeepEqual(got, []string{"MBR"}) {
		t.Errorf("MBR: %v", got)
	}
	md := func(off int64, major uint32) []string {
		b := make([]byte, size)
		copy(b[off:], mdMagic)
		binary.LittleEndian.PutUint32(b[off+4:], major)
		return probe(b)
	}
	for name, off := range map[string]int64{
		"md 1.1": 0, "md 1.2": 4096,
		"md 1.0":  (size/512 - 16) &^ 7 * 512,
		"md 0.90": size - 64<<10,
	} {
		major := uint32(1)
		if name == "md 0.90" {
			major = 0
		}
		if got := md(off, major); !reflect.DeepEqual(got, []string{"linux_raid_member"}) {
			t.Errorf("%s at %d: %v", name, off, got)
		}
	}
	if got := Signatures(make([]byte, 100), make([]byte, 100), 100); got != nil {
		t.Errorf("short blank read: %v", got)
	}
	if got := Signatures([]byte{0, 1}, []byte{0, 1}, 2); !reflect.DeepEqual(got, []string{"data"}) {
		t.Errorf("short non-zero read: %v", got)
	}
}

// TestProbeRefusedUnchanged: Run refuses a disk holding each kind of data
// the tools make, naming the disk and what it holds, and the disk's bytes
// are the same afterwards.
func TestRunRefusesDataDisks(t *testing.T) {
	testenv.RequireTools(t, "sgdisk", "mkfs.ext4", "cryptsetup", "mkfs.xfs", "mkswap", "blkid")
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte("not a secret, a test key"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, says string
		make       func(disk string)
	}{
		{"luks2", "a LUKS encrypted volume (crypto_LUKS)", func(disk string) {
			run(t, "cryptsetup", "luksFormat", "-q", "--type", "luks2", "--key-file", key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", disk)
		}},
		{"xfs", "an XFS filesystem (xfs)", func(disk string) { run(t, "mkfs.xfs", "-q", disk) }},
		{"swap", "a swap area (swap)", func(disk string) { run(t, "mkswap", disk) }},
		{"data", "data (non-zero bytes in its first or last MiB)", func(disk string) {
			info, _ := os.Stat(disk)
			writeAt(t, disk, info.Size()-MiB+7, []byte("some bytes"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, power := fakeMachine(t, fakeDisk{name: "sda", size: 20 * GiB}, fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
			disk := filepath.Join(env.DevRoot, "sda")
			tc.make(disk)
			before := fingerprint(t, disk)
			err := Run(context.Background(), env)
			var refused *RefusedError
			if !errors.As(err, &refused) || !strings.Contains(err.Error(), disk) || !strings.Contains(err.Error(), "it holds "+tc.says) {
				t.Fatalf("Run: %v; want a refusal naming %s and %q", err, disk, tc.says)
			}
			if fingerprint(t, disk) != before {
				t.Error("the refused disk changed")
			}
			if len(power.calls) != 0 {
				t.Errorf("power: %v", power.calls)
			}
		})
	}
}

func TestJournalTorn(t *testing.T) {
	img := sparseDisk(t, t.TempDir(), "d.img", 8*MiB)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, ok, _ := ReadJournal(img); ok {
		t.Fatal("blank disk has a journal")
	}
	j := Journal{Payload: "abc", Host: "nuc1", Step: StepOSWritten}
	if err := writeJournal(f, j); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := ReadJournal(img); !ok || err != nil || got != j {
		t.Fatalf("journal: %+v %v %v", got, ok, err)
	}
	if _, err := f.WriteAt([]byte("x"), journalOffset+40); err != nil { // a torn write
		t.Fatal(err)
	}
	if got, ok, _ := ReadJournal(img); !ok || got.Step != "" || got.Completed(StepVerified) {
		t.Errorf("torn journal: %+v %v; want ours with no step completed", got, ok)
	}
	if Resumable(img, "abc", "nuc1") || !ForeignJournal(img, "abc", "nuc1") {
		t.Error("a torn journal is resumable: it names no payload, so it proves nothing")
	}
}

// TestResumable: an unfinished install continues only while the disk still
// holds our partition table; someone's own partitions written since win.
func TestResumable(t *testing.T) {
	testenv.RequireTools(t, "sgdisk", "mkfs.ext4")
	p, err := VerifyPayload(makePayload(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	img := sparseDisk(t, t.TempDir(), "d.img", 80*GiB)
	if Resumable(img, p.Digest, "nuc1") {
		t.Error("blank disk resumable")
	}
	stopAt := func(step string) Options {
		return Options{AfterStep: func(s string) error {
			if s == step {
				return errPowerCut
			}
			return nil
		}}
	}
	plan := Plan{Target: img, Layout: testLayout, Host: "nuc1"}
	if err := Install(context.Background(), p, plan, stopAt(StepVerified)); !errors.Is(err, errPowerCut) {
		t.Fatal(err)
	}
	if !Resumable(img, p.Digest, "nuc1") {
		t.Error("after verified: not resumable")
	}
	// The journal binds the half-done install to its payload and host:
	// for anyone else the disk holds data.
	if Resumable(img, "other", "nuc1") || Resumable(img, p.Digest, "nuc2") {
		t.Error("after verified: resumable for another payload or host")
	}
	if ForeignJournal(img, p.Digest, "nuc1") || !ForeignJournal(img, p.Digest, "nuc2") || !ForeignJournal(img, "other", "nuc1") {
		t.Error("ForeignJournal")
	}
	if err := Install(context.Background(), p, plan, stopAt(StepPartitioned)); !errors.Is(err, errPowerCut) {
		t.Fatal(err)
	}
	if !Resumable(img, p.Digest, "nuc1") {
		t.Error("after partitioned: not resumable")
	}
	if Resumable(img, "other", "nuc1") || Resumable(img, p.Digest, "nuc2") {
		t.Error("after partitioned: resumable for another payload or host")
	}
	run(t, "sgdisk", "-o", "-n", "1:2048:+1G", "-c", "1:data", img)
	if Resumable(img, p.Digest, "nuc1") {
		t.Error("repartitioned by someone else since: still resumable")
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := writeJournal(f, Journal{Payload: p.Digest, Host: "nuc1", Step: StepDone}); err != nil {
		t.Fatal(err)
	}
	if !Resumable(img, p.Digest, "nuc1") || Resumable(img, p.Digest, "nuc2") || Resumable(img, "other", "nuc1") {
		t.Error("done: resumable only for the same payload and host")
	}
}

// TestProbeMDAgreesWithBlkid: this kernel has no md driver, so mdadm
// --create cannot make a member here. The superblocks are written by hand
// at the offsets mdadm uses, with the fields blkid checks (magic, version,
// 1.x's own offset, 0.90's array size), and blkid -p and wipefs must call
// each one a linux_raid_member, as Probe does.
func TestProbeMDAgreesWithBlkid(t *testing.T) {
	testenv.RequireTools(t, "blkid", "wipefs")
	const size = 64*MiB + 3*512 // not 4 KiB-aligned: the end offsets round down
	v1 := func(off int64) []byte {
		sb := make([]byte, 256)
		copy(sb, mdMagic)
		binary.LittleEndian.PutUint32(sb[4:], 1)                 // major_version
		binary.LittleEndian.PutUint64(sb[144:], uint64(off)/512) // super_offset, in sectors
		copy(sb[32:], "ssbuild-test:0")                          // set_name
		return sb
	}
	v090 := func() []byte {
		sb := make([]byte, 4096)
		copy(sb, mdMagic)
		binary.LittleEndian.PutUint32(sb[8:], 90)    // minor_version
		binary.LittleEndian.PutUint32(sb[32:], 1024) // size of the array in KiB
		return sb
	}
	end10 := (size/512 - 16) &^ 7 * 512
	end090 := size&^(64<<10-1) - 64<<10
	for _, tc := range []struct {
		name    string
		off     int64
		sb      []byte
		version string
	}{
		{"1.1", 0, v1(0), "1.1"},
		{"1.2", 4096, v1(4096), "1.2"},
		{"1.0", end10, v1(end10), "1.0"},
		{"0.90", end090, v090(), "0.90.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := sparseDisk(t, t.TempDir(), "md.img", size)
			writeAt(t, img, tc.off, tc.sb)
			out := run(t, "blkid", "-p", "-o", "export", img)
			if !strings.Contains(out, "TYPE=linux_raid_member") || !strings.Contains(out, "VERSION="+tc.version) {
				t.Fatalf("blkid -p: %s; want a linux_raid_member of version %s", out, tc.version)
			}
			if w := run(t, "wipefs", "--output", "TYPE", "--noheadings", img); strings.TrimSpace(w) != "linux_raid_member" {
				t.Errorf("wipefs: %q", w)
			}
			if got, err := Probe(img); err != nil || !reflect.DeepEqual(got, []string{"linux_raid_member"}) {
				t.Errorf("Probe: %v %v", got, err)
			}
		})
	}
}
