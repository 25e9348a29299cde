package chainstate_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/chainstate"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/recipes"
)

var update = flag.Bool("update", false, "re-record testdata/*.golden")

// The LXD metadata of an artifact is a golden file: a change to what LXD is
// told about the volume shows up in review.
func TestIndexGolden(t *testing.T) {
	snap, _ := writeSnapshot(t, t.TempDir(), "utxo-840000.dat", "mainnet")
	out := filepath.Join(t.TempDir(), "c.tar")
	pack(t, recipes.Chainstate{Network: "mainnet", Kind: "assumeutxo", Source: snap}, out)
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	if hdr, err := tr.Next(); err != nil || hdr.Name != "backup/index.yaml" {
		t.Fatalf("first entry %v, %v; want backup/index.yaml", hdr, err)
	}
	got, _ := io.ReadAll(tr)
	golden := filepath.Join("testdata", "index-assumeutxo.yaml.golden")
	if *update {
		os.MkdirAll("testdata", 0o755)
		os.WriteFile(golden, got, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (record it with go test -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("backup/index.yaml differs from %s:\n%s", golden, got)
	}
}

// Packing reports its bytes through the progress reporter: a machine reading
// --json events sees the pack finish with every byte of the source counted.
func TestPackProgress(t *testing.T) {
	src := makeDatadir(t)
	var total int64
	for _, size := range datadirFiles {
		total += int64(size)
	}
	var buf bytes.Buffer
	_, err := chainstate.Pack(context.Background(), chainstate.Options{
		Chainstate: recipes.Chainstate{Network: "regtest", Kind: "pruned-datadir", Source: src},
		Output:     filepath.Join(t.TempDir(), "c.tar"),
		Progress:   progress.New(&buf, progress.JSON),
	})
	if err != nil {
		t.Fatal(err)
	}
	var done *progress.Event
	for _, line := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		var ev progress.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if ev.Event == "done" && ev.Task == "chainstate: pack "+filepath.Base(src) {
			done = &ev
		}
	}
	// Each file also carries its marker at the start.
	for name := range datadirFiles {
		total += int64(len(marker(name)))
	}
	if done == nil || done.Unit != "bytes" || done.Done != total || done.Total != total {
		t.Errorf("pack done event %+v, want %d of %d bytes; events:\n%s", done, total, total, buf.String())
	}
}
