package install

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// BenchmarkOSWrite compares the installer's OS write (writeImage: 4 MiB
// blocks, sha256 on the fly, fsync) with dd of the same bytes onto the same loop device (over
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
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])
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

	// The three writes take turns in every round, so load from other work
	// on the machine falls on all of them alike.
	writes := map[string]func() error{
		"ssbuild": func() error { return writeWith(src, dev, want) },
		"ssbuild-nohash": func() error {
			return writeWith(src, dev, "")
		},
		"dd": func() error {
			_, err := command.Output(context.Background(), "dd", "if="+src, "of="+dev, "bs=4M", "conv=fsync", "status=none")
			return err
		},
	}
	order := []string{"ssbuild", "dd", "ssbuild-nohash"}
	spent := map[string]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, name := range order {
			began := time.Now()
			if err := writes[name](); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			spent[name] += time.Since(began)
		}
	}
	for _, name := range order {
		b.ReportMetric(float64(size)*float64(b.N)/spent[name].Seconds()/1e6, name+"-MB/s")
	}
}

// writeWith is the installer's OS write of src onto dev; want "" skips the
// hash (to see what it costs).
func writeWith(src, dev, want string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dev, os.O_RDWR|os.O_EXCL, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	if want == "" {
		if _, err := copyAt(context.Background(), out, 0, in, nil, io.Discard); err != nil {
			return err
		}
		return out.Sync()
	}
	return writeImage(context.Background(), out, 0, in, want, io.Discard)
}
