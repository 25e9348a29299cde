package squashfs

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// Make gives mksquashfs every core, so images built on machines with
// different core counts must still be the same bytes.
func TestSameBytesWithAnyProcessorCount(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	r := rand.New(rand.NewSource(1))
	// Whole blocks, tails packed into fragments, and small files that are
	// fragments only, compressible and not: the parts threads race on.
	for i := range 40 {
		size := r.Intn(3 << 17)
		body := make([]byte, size)
		if i%2 == 0 {
			r.Read(body)
		} else {
			copy(body, bytes.Repeat([]byte(fmt.Sprintf("line %d\n", i)), size/7+1))
		}
		p := filepath.Join(tree, fmt.Sprintf("d%d", i%5), fmt.Sprintf("f%02d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var images [][]byte
	for _, procs := range []int{1, 2, 5} {
		out := filepath.Join(dir, "p"+strconv.Itoa(procs)+".sqfs")
		args := []string{tree, out, "-noappend", "-comp", "gzip", "-b", "128K", "-all-root",
			"-reproducible", "-mkfs-time", "0", "-all-time", "0", "-processors", strconv.Itoa(procs)}
		if err := Make(context.Background(), nil, "test", args); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		images = append(images, b)
	}
	for i := 1; i < len(images); i++ {
		if !bytes.Equal(images[0], images[i]) {
			t.Errorf("image %d differs from the one built with 1 processor", i)
		}
	}
}

func TestArgsUseEveryCore(t *testing.T) {
	got := withProcessors([]string{"dir", "out", "-noappend"})
	want := []string{"dir", "out", "-noappend", "-processors", strconv.Itoa(runtime.NumCPU())}
	if !slices.Equal(got, want) {
		t.Errorf("args %q, want %q", got, want)
	}
	// A count the caller chose stays.
	given := []string{"dir", "out", "-processors", "1"}
	if got := withProcessors(given); !slices.Equal(got, given) {
		t.Errorf("args %q, want %q", got, given)
	}
}

// The time options carry the epoch; SOURCE_DATE_EPOCH in the environment
// (the user's, or set for a FAT written meanwhile by gptimage.WithEpoch)
// must not make mksquashfs refuse to run.
func TestTimesWithSourceDateEpochSet(t *testing.T) {
	testenv.RequireTools(t, "mksquashfs")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	out := filepath.Join(t.TempDir(), "out.sqfs")
	args := []string{dir, out, "-noappend", "-all-root", "-mkfs-time", "0", "-all-time", "0"}
	if err := Make(context.Background(), nil, "test", args); err != nil {
		t.Fatal(err)
	}
}
