package squashfs

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

func TestProgressParsesTheBar(t *testing.T) {
	// As mksquashfs 4.5.1 writes it to a pipe, split at awkward places.
	out := "Parallel mksquashfs: Using 2 processors\nCreating 4.0 filesystem on /tmp/t.sq, block size 131072.\n" +
		"\r[=============-      ] 1700/6300  26%\r[====================|] 6300/6300 100%\n\nExportable Squashfs 4.0 filesystem\n"
	var buf bytes.Buffer
	task := progress.New(&buf, progress.JSON).Start("x", 0, "")
	p := &barProgress{task: task}
	for i := 0; i < len(out); i += 7 {
		p.Write([]byte(out[i:min(i+7, len(out))]))
	}
	task.Done(nil)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var ev progress.Event
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Done != 6300 {
		t.Errorf("files done %d, want 6300", ev.Done)
	}
}
