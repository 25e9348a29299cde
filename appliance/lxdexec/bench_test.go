package lxdexec_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/appliance/lxdexec"
	"github.com/sovereign-stack/ssbuild/images/lxdimage"
	"github.com/sovereign-stack/ssbuild/testkit/rootfstest"
	"github.com/sovereign-stack/ssbuild/testkit/testbed"
)

// The benchmarks of bench/lxd-exec.sh: how fast a volume's tree is read
// through LXD's exec API (what appliance/backup's LXDRunner does on every
// backup) against tar inside the instance. TestBenchBed starts the bed
// the script's runs share; the benchmarks skip unless the script names
// it (SSBUILD_BENCH_LXD_SOCKET, _INSTANCE, _DIR).

// benchVolume is where TestBenchBed puts the tree in the instance: a
// Docker volume's folder, as a backup finds one.
const benchVolume = "/var/lib/docker/volumes/bench/_data"

// TestBenchBed starts a one-host test bed with one container of the
// bookworm test image (as images/lxdimage's tests do), fills benchVolume
// with a ~500 MiB tree (a 200 MiB file, as a big database file, and copies
// of this machine's /usr/share/doc and /usr/share/locale), writes the
// variables the benchmarks read to the file SSBUILD_BENCH_LXD_BED names,
// and holds the bed until SIGTERM or SIGINT (or until its parent, the
// script, is gone); then the bed is closed as in any test.
func TestBenchBed(t *testing.T) {
	envFile := os.Getenv("SSBUILD_BENCH_LXD_BED")
	if envFile == "" {
		t.Skip("SSBUILD_BENCH_LXD_BED is not set (bench/lxd-exec.sh sets it)")
	}
	parent := os.Getppid()
	stop, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	ctx, cancelBuild := context.WithTimeout(stop, 15*time.Minute)
	defer cancelBuild()

	rootfs := rootfstest.Dir(t)
	out := filepath.Join(t.TempDir(), "image")
	m, err := lxdimage.Build(ctx, lxdimage.Spec{RootFS: rootfs, OutDir: out, Epoch: 1700000000, Compression: "gzip",
		Properties: lxdimage.Properties{OS: "debian", Release: "bookworm", Description: "ssbuild bench image"}})
	if err != nil {
		t.Fatal(err)
	}
	bed := testbed.New(t, testbed.Options{})
	h := bed.Hosts[0]
	c := h.LXD()
	if err := testbed.UseDirPool(c, "bench"); err != nil {
		t.Fatal(err)
	}
	fp, err := testbed.ImportImage(c, out, m.Images[0].Files...)
	if err != nil {
		t.Fatal(err)
	}
	// Privileged, so the tree written from this machine into the dir
	// pool belongs to the instance's root as it is; a minbase tree has no
	// init: sleep is PID 1, exec works the same.
	const name = "bench"
	if err := testbed.Launch(c, name, fp, map[string]string{"security.privileged": "true",
		"raw.lxc": "lxc.init.cmd = /usr/bin/sleep infinity"}); err != nil {
		t.Fatal(err)
	}
	hostRootfs := filepath.Join(h.LXDDir, "storage-pools", "bench", "containers", name, "rootfs")
	vol := filepath.Join(hostRootfs, benchVolume)
	if err := os.MkdirAll(vol, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := writeNoise(filepath.Join(vol, "base.dat"), 200<<20); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"/usr/share/doc", "/usr/share/locale"} {
		if out, err := exec.CommandContext(ctx, "cp", "-a", d, vol).CombinedOutput(); err != nil {
			t.Fatalf("cp -a %s: %v: %s", d, err, out)
		}
	}
	// The instance must read the same tree.
	stdout, stderr, code, err := lxdexec.Run(c, name, "du", "-sm", benchVolume)
	if err != nil || code != 0 {
		t.Fatalf("du in the instance: %d, %v: %s", code, err, stderr)
	}
	env := fmt.Sprintf("SSBUILD_BENCH_LXD_SOCKET=%s\nSSBUILD_BENCH_LXD_INSTANCE=%s\nSSBUILD_BENCH_LXD_DIR=%s\nSSBUILD_BENCH_LXD_HOSTDIR=%s\n",
		h.Socket(), name, benchVolume, vol)
	if err := os.WriteFile(envFile+".tmp", []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(envFile+".tmp", envFile); err != nil {
		t.Fatal(err)
	}
	t.Logf("bed %s: instance %s, tree %s MiB", bed.ID, name, strings.Fields(stdout)[0])
	for stop.Err() == nil && os.Getppid() == parent {
		select {
		case <-stop.Done():
		case <-time.After(time.Second):
		}
	}
}

// writeNoise writes size pseudo-random bytes: a big file no tool could
// compress or skip.
func writeNoise(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	_, err = io.CopyN(w, rand.NewChaCha8([32]byte{1}), size)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// benchInstance connects to the bed's LXD; it skips outside the script.
func benchInstance(b *testing.B) (lxd.InstanceServer, string, string) {
	socket := os.Getenv("SSBUILD_BENCH_LXD_SOCKET")
	if socket == "" {
		b.Skip("SSBUILD_BENCH_LXD_SOCKET is not set (bench/lxd-exec.sh sets it)")
	}
	c, err := lxd.ConnectLXDUnix(socket, nil)
	if err != nil {
		b.Fatal(err)
	}
	return c, os.Getenv("SSBUILD_BENCH_LXD_INSTANCE"), os.Getenv("SSBUILD_BENCH_LXD_DIR")
}

// BenchmarkTarInside is the floor: tar of the tree read by a pipe inside
// the instance, nothing crossing the exec API but the command.
func BenchmarkTarInside(b *testing.B) {
	c, inst, dir := benchInstance(b)
	for b.Loop() {
		_, stderr, code, err := lxdexec.Run(c, inst, "sh", "-c", "tar -cf - -C '"+dir+"' . | cat >/dev/null")
		if err != nil || code != 0 {
			b.Fatalf("tar in %s: %d, %v: %s", inst, code, err, stderr)
		}
	}
}

// BenchmarkStream is the same tar's stream copied out through Stream, as
// LXDRunner reads a volume (tar's default 10 KiB records).
func BenchmarkStream(b *testing.B) { benchStream(b) }

// BenchmarkStreamRecords32K is BenchmarkStream with tar writing 32 KiB
// records (-b 64): LXD sends one websocket message per read of the
// command's pipe, at most 32 KiB (its io.Copy buffer), so this is a third
// of the messages.
func BenchmarkStreamRecords32K(b *testing.B) { benchStream(b, "-b", "64") }

func benchStream(b *testing.B, tarArgs ...string) {
	c, inst, dir := benchInstance(b)
	argv := append([]string{"tar", "-cf", "-", "-C", dir}, tarArgs...)
	argv = append(argv, ".")
	for b.Loop() {
		n := &counter{}
		stderr, code, err := lxdexec.Stream(c, inst, argv, nil, n)
		if err != nil || code != 0 {
			b.Fatalf("tar in %s: %d, %v: %s", inst, code, err, stderr)
		}
		b.ReportMetric(float64(n.n)/(1<<20), "MiB")
	}
}

// counter counts what it is given and drops it (io.Discard, but not an
// io.ReaderFrom, which would change how the client copies).
type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
