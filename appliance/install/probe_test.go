package install

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/internal/testenv"
)

// TestProbeToolMade probes disks the standard tools formatted, and checks
// blkid sees the same thing.
func TestProbeToolMade(t *testing.T) {
	testenv.RequireTools(t, "sgdisk", "mkfs.ext4", "mkfs.vfat", "blkid")
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		make  func(img string)
		want  []string
		blkid string
	}{
		{"blank", func(string) {}, nil, ""},
		{"gpt", func(img string) { run(t, "sgdisk", "-o", "-n", "1:2048:+1M", img) }, []string{"GPT", "MBR"}, "PTTYPE=\"gpt\""},
		{"ext4", func(img string) { run(t, "mkfs.ext4", "-q", "-F", img) }, []string{"ext4"}, "TYPE=\"ext4\""},
		{"vfat", func(img string) { run(t, "mkfs.vfat", "-F", "32", img) }, []string{"vfat"}, "TYPE=\"vfat\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := sparseDisk(t, dir, tc.name+".img", 64*MiB)
			tc.make(img)
			got, err := Probe(img)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Probe: %v, want %v", got, tc.want)
			}
			if tc.blkid != "" {
				if out := run(t, "blkid", "-p", img); !strings.Contains(out, tc.blkid) {
					t.Errorf("blkid -p: %s, want %s", out, tc.blkid)
				}
			}
		})
	}
}

// TestProbeMagic checks the signatures no tool here can make (no zpool,
// pvcreate or sfdisk) at the offsets blkid reads them from.
func TestProbeMagic(t *testing.T) {
	b := make([]byte, probeSize)
	binary.LittleEndian.PutUint64(b[128<<10+5*1024:], 0x00bab10c)
	if got := Signatures(b); !reflect.DeepEqual(got, []string{"zfs_member"}) {
		t.Errorf("ZFS uberblock: %v", got)
	}
	b = make([]byte, probeSize)
	copy(b[512:], "LABELONE")
	copy(b[512+24:], "LVM2 001")
	if got := Signatures(b); !reflect.DeepEqual(got, []string{"LVM2_member"}) {
		t.Errorf("LVM2 label: %v", got)
	}
	b = make([]byte, probeSize)
	b[446+4] = 0x83 // one Linux partition entry
	b[510], b[511] = 0x55, 0xaa
	if got := Signatures(b); !reflect.DeepEqual(got, []string{"MBR"}) {
		t.Errorf("MBR: %v", got)
	}
	if got := Signatures(make([]byte, 100)); got != nil {
		t.Errorf("short blank read: %v", got)
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
	if err := Install(context.Background(), p, plan, stopAt(StepPartitioned)); !errors.Is(err, errPowerCut) {
		t.Fatal(err)
	}
	if !Resumable(img, p.Digest, "nuc1") {
		t.Error("after partitioned: not resumable")
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
