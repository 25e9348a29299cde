package installer_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sovereign-stack/ssbuild/images/installer"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// benchInputs writes stand-ins for an installer's inputs, sized like the
// real ones: kernel 8 MiB, initramfs 40 MiB (with the ssbuild binary),
// systemd-boot, and a 512 MiB incompressible OS image (an already
// compressed file system, the common case) plus a recipe. The OS image's
// digest is computed while it is written and given to the build, as
// installerbuild gives the one its output cache computed while copying
// (knownSum false: not given, the build hashes the file itself).
func benchInputs(b *testing.B, knownSum bool) (installer.Spec, int64) {
	b.Helper()
	dir := b.TempDir()
	r := rand.New(rand.NewSource(1))
	write := func(name string, size int64) (string, string) {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.CopyN(io.MultiWriter(f, h), r, size); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		return p, hex.EncodeToString(h.Sum(nil))
	}
	path := func(name string, size int64) string { p, _ := write(name, size); return p }
	// In this order: the same bytes as ever, so the same image.
	spec := installer.Spec{Name: "bench", Epoch: 1700000000,
		Kernel: path("vmlinuz", 8<<20), Initramfs: path("initrd.img", 40<<20), SystemdBoot: path("systemd-bootx64.efi", 140<<10)}
	osImg, osSum := write("os.img", 512<<20)
	if !knownSum {
		osSum = ""
	}
	spec.Payload = []installer.PayloadFile{
		{Name: "os.img", Path: osImg, SHA256: osSum},
		{Name: "recipe.yaml", Path: path("recipe.yaml", 4<<10)},
	}
	total := int64(8<<20 + 40<<20 + 140<<10 + 512<<20 + 4<<10)
	return spec, total
}

// BenchmarkAssemble builds the image from the inputs; compare with
// BenchmarkCopyInputs, cp of the same bytes on the same disk.
func BenchmarkAssemble(b *testing.B) { benchAssemble(b, true) }

// BenchmarkAssembleUnknownSums is BenchmarkAssemble when the caller has no
// digest of the OS image: the build reads it once more, before packing.
func BenchmarkAssembleUnknownSums(b *testing.B) { benchAssemble(b, false) }

func benchAssemble(b *testing.B, knownSum bool) {
	testenv.RequireTools(b, "mksquashfs")
	spec, total := benchInputs(b, knownSum)
	b.SetBytes(total)
	b.ResetTimer() // writing the inputs is not the build
	defer reportCPU(b)()
	var events bytes.Buffer
	var res installer.Result
	for i := 0; i < b.N; i++ {
		spec.Output = filepath.Join(b.TempDir(), "installer.img")
		events.Reset()
		spec.Progress = progress.New(&events, progress.JSON)
		var err error
		if res, err = installer.Build(context.Background(), spec); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// The same inputs give the same image whatever the way it is written.
	b.Logf("image sha256 %s", res.SHA256)
	// The last build's steps, for the figures.
	for _, line := range strings.Split(strings.TrimSpace(events.String()), "\n") {
		var ev progress.Event
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Event == "done" {
			b.Logf("%-22s %6d ms", ev.Task, ev.ElapsedMS)
		}
	}
}

func BenchmarkCopyInputs(b *testing.B) {
	spec, total := benchInputs(b, false)
	b.SetBytes(total)
	b.ResetTimer()
	defer reportCPU(b)()
	for i := 0; i < b.N; i++ {
		dest := b.TempDir()
		args := []string{spec.Kernel, spec.Initramfs, spec.SystemdBoot}
		for _, p := range spec.Payload {
			args = append(args, p.Path)
		}
		if out, err := exec.Command("cp", append(args, dest)...).CombinedOutput(); err != nil {
			b.Fatalf("cp: %v: %s", err, out)
		}
		// The image is synced before it is renamed: so is the copy.
		if out, err := exec.Command("sync", "-f", dest).CombinedOutput(); err != nil {
			b.Fatalf("sync: %v: %s", err, out)
		}
	}
}

// reportCPU reports the processor time per iteration (cpu-s/op) of this
// process and the tools it waited for (mksquashfs; cp and sync), from the
// call to the returned function's: a figure a busy machine moves less than
// the wall time. Writeback by the kernel's threads is in neither.
func reportCPU(b *testing.B) func() {
	start := cpuSeconds(b)
	return func() { b.ReportMetric((cpuSeconds(b)-start)/float64(b.N), "cpu-s/op") }
}

func cpuSeconds(b *testing.B) float64 {
	var total float64
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if err := syscall.Getrusage(who, &ru); err != nil {
			b.Fatal(err)
		}
		total += float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	}
	return total
}
