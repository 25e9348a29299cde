package installer

import (
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// writeBehind starts the disk on what another process (mksquashfs) writes
// to path, while it writes: every few milliseconds the bytes added since
// are handed to writeback (sync_file_range, which does not wait). The
// final fsync then has little left to write, where cp+sync writes it all
// at the end. Best effort: any error only means the fsync does the work.
// The returned stop waits for the watcher to end.
func writeBehind(path string) (stop func()) {
	f, err := os.Open(path)
	if err != nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer f.Close()
		const step = 32 << 20 // large ranges: the disk likes long writes
		var from int64
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			info, err := f.Stat()
			if err != nil {
				return
			}
			// The last MiB may still be partly written: leave it for next time.
			if to := info.Size() - mib; to-from >= step {
				if unix.SyncFileRange(int(f.Fd()), from, to-from, unix.SYNC_FILE_RANGE_WRITE) != nil {
					return
				}
				from = to
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}
