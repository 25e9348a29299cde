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
	if strings.Count(s, "\n") != 1 || !strings.Contains(s, "\r\033[Kdownload: 50 B of 100 B (50%)") {
		t.Errorf("terminal output %q", s)
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
