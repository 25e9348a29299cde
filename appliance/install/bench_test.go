package install

import (
	"context"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/testenv"
)

// BenchmarkOSWrite compares the installer's OS write (copyAt, 4 MiB
// blocks, fsync) with dd of the same bytes onto the same loop device (over
// a sparse file on this machine's disk), both synced:
//
//	go test -run - -bench OSWrite -benchtime 3x ./appliance/install
func BenchmarkOSWrite(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireTools(b, "losetup", "dd")
	dir := b.TempDir()
	src := filepath.Join(dir, "os.img")
	const size = 512 << 20
	data := make([]byte, size) // random: a root filesystem does not compress or skip
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		b.Fatal(err)
	}
	backing := sparseDisk(b, dir, "target.img", 2*GiB)
	dev, err := command.Output(context.Background(), "losetup", "-f", "--show", backing)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if _, err := command.Output(context.Background(), "losetup", "-d", dev); err != nil {
			b.Errorf("detach %s: %v", dev, err)
		}
	})
	// Allocate the backing file's blocks first, so neither side pays for it.
	if _, err := command.Output(context.Background(), "dd", "if="+src, "of="+dev, "bs=4M", "conv=fsync", "status=none"); err != nil {
		b.Fatal(err)
	}

	b.Run("ssbuild", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			in, err := os.Open(src)
			if err != nil {
				b.Fatal(err)
			}
			out, err := os.OpenFile(dev, os.O_RDWR|os.O_EXCL, 0)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := copyAt(context.Background(), out, 0, in, io.Discard); err != nil {
				b.Fatal(err)
			}
			if err := out.Sync(); err != nil {
				b.Fatal(err)
			}
			out.Close()
			in.Close()
		}
	})
	b.Run("dd", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			if _, err := command.Output(context.Background(), "dd", "if="+src, "of="+dev, "bs=4M", "conv=fsync", "status=none"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
