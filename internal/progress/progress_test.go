package progress

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// clock is a fake time source so the tests see exact durations.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTest(mode Mode) (*Reporter, *bytes.Buffer, *clock) {
	var b bytes.Buffer
	c := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	r := New(&b, mode)
	r.now = c.now
	return r, &b, c
}

func TestPlainLines(t *testing.T) {
	r, out, c := newTest(Plain)
	task := r.Start("squashfs", 4<<20, "bytes")
	c.t = c.t.Add(time.Second)
	task.Add(1 << 20) // throttled: less than 5s since start
	c.t = c.t.Add(5 * time.Second)
	task.Add(1 << 20)
	c.t = c.t.Add(time.Second)
	task.Done(nil)
	r.Start("debootstrap", 0, "").Done(errors.New("mirror unreachable"))
	want := "squashfs: started (4.0 MiB)\n" +
		"squashfs: 2.0 MiB of 4.0 MiB (50%), 341.3 KiB/s\n" +
		"squashfs: done in 7s (2.0 MiB)\n" +
		"debootstrap: started\n" +
		"debootstrap: FAILED after 0s: mirror unreachable\n"
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out, want)
	}
}

func TestJSONEvents(t *testing.T) {
	r, out, c := newTest(JSON)
	task := r.Start("save images", 3, "images")
	c.t = c.t.Add(2 * time.Second)
	task.Set(2)
	task.Done(nil)
	var events []Event
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var ev Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		events = append(events, ev)
	}
	if len(events) != 3 || events[0].Event != "start" || events[1].Done != 2 || events[2].Event != "done" ||
		events[2].ElapsedMS != 2000 || events[2].Unit != "images" {
		t.Errorf("events: %+v", events)
	}
}

func TestTerminalRedrawsOneLine(t *testing.T) {
	r, out, c := newTest(Terminal)
	task := r.Start("download", 100, "bytes")
	c.t = c.t.Add(time.Second)
	task.Add(50)
	task.Done(nil)
	s := out.String()
	if strings.Count(s, "\n") != 1 || !strings.Contains(s, "\r\033[Kdownload [###############---------------]  50%  50 B/s  ETA 1s") {
		t.Errorf("terminal output %q", s)
	}
}

// withTerminal is what ForFile gives on a terminal (told, not detected),
// with the fake clock.
func withTerminal(terminal, asJSON bool) (*Reporter, *bytes.Buffer, *clock) {
	var b bytes.Buffer
	c := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	r := ForWriter(&b, terminal, asJSON)
	r.now = c.now
	return r, &b, c
}

// redraws returns the lines a terminal shows in turn: each \r\033[K
// starts one.
func redraws(s string) []string {
	var lines []string
	for _, part := range strings.Split(s, "\r\033[K")[1:] {
		lines = append(lines, strings.TrimSuffix(part, "\n"))
	}
	return lines
}

func TestTerminalBarRateAndETA(t *testing.T) {
	r, out, c := withTerminal(true, false)
	task := r.Start("squashfs", 400<<20, "bytes")
	c.t = c.t.Add(10 * time.Second)
	task.Set(100 << 20) // 10 MiB/s, 300 MiB left: 30 s
	c.t = c.t.Add(20 * time.Second)
	task.Set(300 << 20) // still 10 MiB/s, 100 MiB left: 10 s
	c.t = c.t.Add(10 * time.Second)
	task.Done(nil)
	got := redraws(out.String())
	want := []string{
		"squashfs: started (400.0 MiB)",
		"squashfs [#######-----------------------]  25%  10.0 MiB/s  ETA 30s",
		"squashfs [######################--------]  75%  10.0 MiB/s  ETA 10s",
		"squashfs: done in 40s (300.0 MiB)",
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("terminal lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.HasSuffix(out.String(), "\n") || strings.Count(out.String(), "\n") != 1 {
		t.Errorf("only the finished task ends its line: %q", out)
	}

	// Units other than bytes; nothing done yet gives no rate and no ETA.
	r, out, c = withTerminal(true, false)
	task = r.Start("save images", 4, "images")
	c.t = c.t.Add(time.Second)
	task.Set(0)
	c.t = c.t.Add(time.Second)
	task.Set(1)
	got = redraws(out.String())
	if len(got) != 3 || got[1] != "save images [------------------------------]   0%  ETA --" ||
		got[2] != "save images [#######-----------------------]  25%  0.5 images/s  ETA 6s" {
		t.Errorf("lines %q", got)
	}
}

func TestTerminalBarFitsTheWidth(t *testing.T) {
	r, out, c := withTerminal(true, false)
	r.width = 50
	task := r.Start("copy rootfs to /var/tmp/a/rather/long/build/folder/rootfs", 100, "bytes")
	c.t = c.t.Add(time.Second)
	task.Set(10)
	got := redraws(out.String())
	want := "copy rootfs to… [#---------]  10%  10 B/s  ETA 9s"
	if got[1] != want || len([]rune(got[1])) > 49 {
		t.Errorf("redrawn line %q (%d columns), want %q: the name cut, the figures kept", got[1], len([]rune(got[1])), want)
	}
	// Even cut, a redrawn line never wraps.
	r.width = 20
	c.t = c.t.Add(time.Second)
	task.Set(20)
	got = redraws(out.String())
	if n := len([]rune(got[2])); n != 19 {
		t.Errorf("at 20 columns: %q is %d columns", got[2], n)
	}
}

// Off a terminal the lines, and with --json the events, are exactly as
// before the bar: the bar is the terminal's alone.
func TestNoBarOffTerminal(t *testing.T) {
	r, out, c := withTerminal(false, false)
	task := r.Start("squashfs", 4<<20, "bytes")
	c.t = c.t.Add(6 * time.Second)
	task.Add(2 << 20)
	task.Done(nil)
	want := "squashfs: started (4.0 MiB)\nsquashfs: 2.0 MiB of 4.0 MiB (50%), 341.3 KiB/s\nsquashfs: done in 6s (2.0 MiB)\n"
	if out.String() != want {
		t.Errorf("plain:\n%s\nwant:\n%s", out, want)
	}
	r, out, c = withTerminal(true, true) // --json on a terminal
	task = r.Start("squashfs", 4<<20, "bytes")
	c.t = c.t.Add(6 * time.Second)
	task.Add(2 << 20)
	wantJSON := `{"time":"2026-01-02T03:04:05Z","task":"squashfs","event":"start","total":4194304,"unit":"bytes"}` + "\n" +
		`{"time":"2026-01-02T03:04:11Z","task":"squashfs","event":"progress","done":2097152,"total":4194304,"unit":"bytes","elapsed_ms":6000}` + "\n"
	if out.String() != wantJSON {
		t.Errorf("json:\n%s\nwant:\n%s", out, wantJSON)
	}
}

func TestArtifactLines(t *testing.T) {
	r, out, _ := newTest(Plain)
	r.Artifact("image/rootfs.squashfs", "reused", strings.Repeat("ab", 32), "")
	r.Artifact("image/disk.qcow2", "rebuilt", "", "cache entry 0123456789ab is corrupt (x)")
	want := "image/rootfs.squashfs: reused (sha256 abababababab)\nimage/disk.qcow2: rebuilt: cache entry 0123456789ab is corrupt (x)\n"
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out, want)
	}
}

func TestDoneTwiceReportsOnce(t *testing.T) {
	r, out, _ := newTest(Plain)
	task := r.Start("x", 0, "")
	task.Done(nil)
	task.Done(errors.New("late"))
	if strings.Contains(out.String(), "late") {
		t.Errorf("second Done reported: %q", out)
	}
}
