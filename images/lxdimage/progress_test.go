package lxdimage

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// lastDone feeds tool output through a parser and returns the last amount
// the progress reporter saw (its final "done" event).
func lastDone(t *testing.T, feed func(*progress.Task)) int64 {
	t.Helper()
	var buf bytes.Buffer
	task := progress.New(&buf, progress.JSON).Start("x", 0, "")
	feed(task)
	task.Done(nil)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var ev progress.Event
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &ev); err != nil {
		t.Fatal(err)
	}
	return ev.Done
}

func TestQemuProgressParsesPercent(t *testing.T) {
	got := lastDone(t, func(task *progress.Task) {
		p := &qemuProgress{task: task, size: 1000}
		p.Write([]byte("    (0.00/100%)\r    (45.50/100%)\r    (100.00/100%)\r\n"))
	})
	if got != 1000 {
		t.Errorf("bytes done %d, want 1000", got)
	}
}

func TestDiskIDsAreFixedPerImage(t *testing.T) {
	a := Spec{Epoch: 1, Properties: Properties{Name: "one"}}.diskIDs()
	if a != (Spec{Epoch: 1, Properties: Properties{Name: "one"}}).diskIDs() {
		t.Error("the same image got different disk IDs")
	}
	if a == (Spec{Epoch: 2, Properties: Properties{Name: "one"}}).diskIDs() ||
		a == (Spec{Epoch: 1, Properties: Properties{Name: "two"}}).diskIDs() {
		t.Error("different images got the same disk IDs")
	}
	if len(a.Disk) != 36 || a.Disk[14] != '4' || a.Disk == a.ESP || a.RootFS == a.HashSeed {
		t.Errorf("IDs %+v", a)
	}
}
