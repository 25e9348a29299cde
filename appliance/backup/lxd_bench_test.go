package backup

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"filippo.io/age"
	lxd "github.com/canonical/lxd/client"
)

// The backup side of bench/lxd-exec.sh: one volume's full backup (no files
// cache) read through LXDRunner, as production reads it, against
// LocalRunner on the same tree seen from this machine (the instance's dir
// pool rootfs). The bed is appliance/lxdexec's TestBenchBed; these skip
// unless the script names it.

func benchLXD(b *testing.B) (lxd.InstanceServer, string, string, string) {
	socket := os.Getenv("SSBUILD_BENCH_LXD_SOCKET")
	if socket == "" {
		b.Skip("SSBUILD_BENCH_LXD_SOCKET is not set (bench/lxd-exec.sh sets it)")
	}
	c, err := lxd.ConnectLXDUnix(socket, nil)
	if err != nil {
		b.Fatal(err)
	}
	return c, os.Getenv("SSBUILD_BENCH_LXD_INSTANCE"), os.Getenv("SSBUILD_BENCH_LXD_DIR"), os.Getenv("SSBUILD_BENCH_LXD_HOSTDIR")
}

// backupVolume writes one backup of the volume read through src.
func backupVolume(b *testing.B, src VolumeSource) {
	keys, id := benchKeys(b)
	b.StopTimer()
	folder := filepath.Join(b.TempDir(), "backups")
	run(b, "sync")
	b.StartTimer()
	w, err := NewWriter(folder, Manifest{Deployment: "bench", Project: "bench", Created: time.Now().UTC()}, keys, []age.Recipient{id.Recipient()})
	if err != nil {
		b.Fatal(err)
	}
	it := Item{File: "bench/data/data.tar.age", Kind: "volume", Instance: "bench", Service: "data", Volume: "data", Path: "/"}
	vs, err := w.AddVolume(context.Background(), it, src)
	if err != nil {
		w.Abort()
		b.Fatal(err)
	}
	if _, err := w.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(vs.BytesRead)/(1<<20), "MiB-files-read")
}

func BenchmarkVolumeLXD(b *testing.B) {
	c, inst, dir, _ := benchLXD(b)
	for b.Loop() {
		backupVolume(b, VolumeSource{Run: LXDRunner{LXD: c, Instance: inst}, Dir: dir, Path: "/"})
	}
}

func BenchmarkVolumeLocal(b *testing.B) {
	_, _, _, hostDir := benchLXD(b)
	for b.Loop() {
		backupVolume(b, VolumeSource{Run: LocalRunner{}, Dir: hostDir, Path: "/"})
	}
}
