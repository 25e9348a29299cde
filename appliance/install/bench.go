package install

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"
)

// CmdlineBench is the kernel command line switch of the installer's
// benchmark: with ssbuild.bench=dd, a finished install writes os.img once
// more the way `dd bs=4M conv=fsync` would (no hashing, one fsync at the
// end) onto the start of the target's ZFS partition, from the same stick
// in the same machine, and prints both times. The page cache is dropped
// before each of the two writes, so each reads the stick cold. Only for
// benchmarks: it overwrites the start of the (unformatted) ZFS partition.
const CmdlineBench = "ssbuild.bench"

// BenchResult is the install's OS write against a dd-equivalent write of
// the same bytes.
type BenchResult struct {
	Bytes        int64
	Install, Raw time.Duration
	TargetOffset int64 // where the raw write went on the target
}

func (b BenchResult) String() string {
	mibps := func(d time.Duration) float64 { return float64(b.Bytes) / (1 << 20) / d.Seconds() }
	return fmt.Sprintf("bench: os.img %d bytes: install OS write %.2f s (%.1f MiB/s), dd-equivalent write %.2f s (%.1f MiB/s), install/dd time %.2f",
		b.Bytes, b.Install.Seconds(), mibps(b.Install), b.Raw.Seconds(), mibps(b.Raw), b.Install.Seconds()/b.Raw.Seconds())
}

// dropCaches empties the page cache (clean pages), so the next read of
// the stick comes from the device.
func dropCaches(procRoot string) error {
	if err := os.WriteFile(procRoot+"/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		return fmt.Errorf("bench: drop caches: %w", err)
	}
	return nil
}

// rawWrite is dd of=target bs=4M seek=off conv=notrunc,fsync of src: the
// same block size as the install, no hashing, one fsync.
func rawWrite(ctx context.Context, procRoot, src, target string, off int64) (int64, time.Duration, error) {
	if err := dropCaches(procRoot); err != nil {
		return 0, 0, err
	}
	in, err := os.Open(src)
	if err != nil {
		return 0, 0, fmt.Errorf("bench: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(target, os.O_WRONLY, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("bench: %w", err)
	}
	defer out.Close()
	start := time.Now()
	n, err := copyAt(ctx, out, off, in, nil, io.Discard)
	if err == nil {
		err = out.Sync()
	}
	if err != nil {
		return n, 0, fmt.Errorf("bench: write %s: %w", target, err)
	}
	return n, time.Since(start), nil
}

// zfsPartitionStart is the byte offset of the target's ZFS partition.
func zfsPartitionStart(target string) (int64, error) {
	f, err := os.Open(target)
	if err != nil {
		return 0, fmt.Errorf("bench: %w", err)
	}
	defer f.Close()
	start, _, err := (&writer{f: f}).partitionRange(partZFS)
	if err != nil {
		return 0, fmt.Errorf("bench: %s: %w", target, err)
	}
	return start, nil
}

// benchRun is what Run does with ssbuild.bench=dd: it times the install's
// OS write (between the journal's partitioned and os-written records) and
// then the dd-equivalent write.
type benchRun struct {
	procRoot            string
	partitioned, osDone time.Time
}

func (b *benchRun) afterStep(next func(string) error) func(string) error {
	return func(step string) error {
		switch step {
		case StepPartitioned:
			b.partitioned = time.Now()
		case StepOSWritten:
			b.osDone = time.Now()
		}
		if next != nil {
			return next(step)
		}
		return nil
	}
}

func (b *benchRun) finish(ctx context.Context, osImage, target string) (BenchResult, error) {
	if b.partitioned.IsZero() || b.osDone.IsZero() {
		return BenchResult{}, fmt.Errorf("bench: the OS write was not timed (a continued install?)")
	}
	off, err := zfsPartitionStart(target)
	if err != nil {
		return BenchResult{}, err
	}
	n, raw, err := rawWrite(ctx, b.procRoot, osImage, target, off)
	if err != nil {
		return BenchResult{}, err
	}
	return BenchResult{Bytes: n, Install: b.osDone.Sub(b.partitioned), Raw: raw, TargetOffset: off}, nil
}
