package backup

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// The benchmarks of bench/backup.sh: export and import of a real directory
// tree (SSBUILD_BENCH_DATA: a PostgreSQL data dir and mixed files) through
// this package, against tar of the same tree. Its db/dump.sql is stored
// as a dump, streamed whole; the rest as volume paths read by find and
// tar -c with a files cache, as a backup reads a Docker volume's folder. Every side ends
// with its data on disk (syncfs for the backup, sync -f for tar).
// SSBUILD_BENCH_CHANGE is a shell command that makes a small change to the
// tree (bench/backup.sh runs a few pgbench transactions), run untimed
// before the incremental backup.

func benchData(b *testing.B) string {
	dir := os.Getenv("SSBUILD_BENCH_DATA")
	if dir == "" {
		b.Skip("SSBUILD_BENCH_DATA is not set (bench/backup.sh sets it)")
	}
	return dir
}

func benchKeys(b *testing.B) (*Keys, *age.X25519Identity) {
	k, err := DeriveKeys("a benchmark deployment's backup secret, 32 bytes or more")
	if err != nil {
		b.Fatal(err)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		b.Fatal(err)
	}
	return k, id
}

func run(b *testing.B, name string, args ...string) {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// exportTree writes one backup of the tree into folder: db/dump.sql as a
// dump (streamed whole: a backup makes it again), then every other
// top-level entry as a volume path read by find and tar -c (volume.go)
// with the files cache in cache.
func exportTree(b *testing.B, data, folder, cache string, keys *Keys, id *age.X25519Identity) Manifest {
	w, err := NewWriter(folder, Manifest{Deployment: "bench", Project: "bench", Created: time.Now().UTC()}, keys, []age.Recipient{id.Recipient()})
	if err != nil {
		b.Fatal(err)
	}
	w.FilesCache = cache
	entries, err := os.ReadDir(data)
	if err != nil {
		b.Fatal(err)
	}
	var paths []volumePath
	for _, e := range entries {
		if e.Name() == "db" {
			f, err := os.Open(filepath.Join(data, "db", "dump.sql"))
			if err != nil {
				b.Fatal(err)
			}
			err = w.AddReader(Item{File: "bench/db/dump.sql.age", Kind: "dump", Instance: "bench", Service: "db"}, f)
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
			continue
		}
		paths = append(paths, volumePath{
			it:   Item{File: "bench/data/" + e.Name() + ".tar.age", Kind: "volume", Instance: "bench", Service: "data", Volume: "data", Path: e.Name()},
			desc: "data:" + e.Name(),
			source: func() (VolumeSource, error) {
				return VolumeSource{Run: LocalRunner{}, Dir: data, Path: e.Name()}, nil
			},
		})
	}
	// As backupInstance: the dumps first, then the volume paths, read as
	// addVolumes reads them.
	if err := w.addVolumes(context.Background(), paths, progress.Discard()); err != nil {
		b.Fatal(err)
	}
	m, err := w.Close()
	if err != nil {
		b.Fatal(err)
	}
	return m
}

func BenchmarkTarCreate(b *testing.B) {
	data := benchData(b)
	for b.Loop() {
		b.StopTimer()
		out := filepath.Join(b.TempDir(), "data.tar")
		run(b, "sync") // start with nothing waiting to be written, as every side does
		b.StartTimer()
		run(b, "tar", "-cf", out, "-C", data, ".")
		run(b, "sync", "-f", out)
	}
}

func BenchmarkBackupFull(b *testing.B) {
	data := benchData(b)
	keys, id := benchKeys(b)
	for b.Loop() {
		b.StopTimer()
		folder, cache := filepath.Join(b.TempDir(), "backups"), b.TempDir()
		run(b, "sync")
		b.StartTimer()
		m := exportTree(b, data, folder, cache, keys, id)
		b.ReportMetric(float64(m.Stats.NewBytes)/(1<<20), "MiB-written")
	}
}

func BenchmarkBackupIncremental(b *testing.B) {
	data := benchData(b)
	keys, id := benchKeys(b)
	for b.Loop() {
		b.StopTimer()
		folder, cache := filepath.Join(b.TempDir(), "backups"), b.TempDir()
		exportTree(b, data, folder, cache, keys, id)
		if c := os.Getenv("SSBUILD_BENCH_CHANGE"); c != "" {
			run(b, "sh", "-c", c)
		}
		run(b, "sync")
		b.StartTimer()
		m := exportTree(b, data, folder, cache, keys, id)
		b.ReportMetric(float64(m.Stats.NewBytes)/(1<<20), "MiB-written")
		b.ReportMetric(float64(m.Stats.VolumeBytesRead)/(1<<20), "MiB-files-read")
		b.ReportMetric(float64(m.Stats.VolumeBytes-m.Stats.VolumeBytesRead)/(1<<20), "MiB-files-reused")
		b.ReportMetric(float64(m.Stats.New), "chunks-new")
		b.ReportMetric(float64(m.Stats.Chunks), "chunks")
	}
}

// BenchmarkTarStream reads the tar stream of the tree and drops it: what
// every backup reads before it does anything, the floor of an incremental
// one as long as the whole tree is streamed.
func BenchmarkTarStream(b *testing.B) {
	data := benchData(b)
	for b.Loop() {
		out, wait := tarStream(b, data)
		if _, err := io.Copy(io.Discard, out); err != nil {
			b.Fatal(err)
		}
		wait()
	}
}

func BenchmarkTarExtract(b *testing.B) {
	data := benchData(b)
	for b.Loop() {
		b.StopTimer()
		tmp := b.TempDir()
		tarball, into := filepath.Join(tmp, "data.tar"), filepath.Join(tmp, "out")
		run(b, "tar", "-cf", tarball, "-C", data, ".")
		os.Mkdir(into, 0o700)
		run(b, "sync")
		b.StartTimer()
		run(b, "tar", "-xf", tarball, "-C", into)
		run(b, "sync", "-f", into)
	}
}

func BenchmarkRestore(b *testing.B) {
	data := benchData(b)
	keys, id := benchKeys(b)
	for b.Loop() {
		b.StopTimer()
		tmp := b.TempDir()
		folder, into := filepath.Join(tmp, "backups"), filepath.Join(tmp, "out")
		m := exportTree(b, data, folder, b.TempDir(), keys, id)
		os.Mkdir(into, 0o700)
		run(b, "sync")
		b.StartTimer()
		// As Restore does: the whole backup verified and decrypted first, then put back.
		if _, err := VerifyWith(folder, VerifyOptions{Identities: []age.Identity{id}, Signer: keys.Signer()}); err != nil {
			b.Fatal(err)
		}
		for _, it := range m.Items {
			if it.Kind == "dump" {
				os.Mkdir(filepath.Join(into, "db"), 0o700)
				f, err := os.Create(filepath.Join(into, "db", "dump.sql"))
				if err != nil {
					b.Fatal(err)
				}
				err = Decrypt(folder, it.File, []age.Identity{id}, f)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					b.Fatal(err)
				}
				continue
			}
			cmd := exec.Command("tar", "-xf", "-", "-C", into)
			in, err := cmd.StdinPipe()
			if err != nil {
				b.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			err = Decrypt(folder, it.File, []age.Identity{id}, in)
			in.Close()
			if werr := cmd.Wait(); err == nil {
				err = werr
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		run(b, "sync", "-f", into)
	}
}

// tarStream is `tar -c` of data as Docker streams a volume; call wait
// once the stream is read.
func tarStream(b *testing.B, data string) (io.Reader, func()) {
	cmd := exec.Command("tar", "-cf", "-", "-C", data, ".")
	out, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		b.Fatal(err)
	}
	return out, func() {
		if err := cmd.Wait(); err != nil {
			b.Fatal(err)
		}
	}
}
