// Package progress is ssbuild's one progress reporter. Long work (downloads,
// debootstrap, squashfs, disk writes, cluster joins) reports through a Task;
// the Reporter renders it for a terminal (one redrawn line), for a log (plain
// lines, throttled) or for machines (JSON events, one per line).
package progress

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Mode selects how progress is rendered.
type Mode int

const (
	Plain    Mode = iota // one line per event, updates throttled
	Terminal             // the running task's line is redrawn in place
	JSON                 // one JSON Event per line
)

// Event is what JSON mode writes, one per line.
type Event struct {
	Time      time.Time `json:"time"`
	Task      string    `json:"task"`
	Event     string    `json:"event"` // start, progress, done, failed, info, artifact
	Done      int64     `json:"done,omitempty"`
	Total     int64     `json:"total,omitempty"`
	Unit      string    `json:"unit,omitempty"`
	ElapsedMS int64     `json:"elapsed_ms,omitempty"`
	Message   string    `json:"message,omitempty"`
	// State is an artifact's origin (event artifact): built, reused, or
	// rebuilt (its cache entry did not verify; Message says why).
	State  string `json:"state,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
}

// Reporter writes progress for any number of tasks to one writer.
type Reporter struct {
	mu       sync.Mutex
	w        io.Writer
	mode     Mode
	now      func() time.Time
	interval time.Duration // minimum time between two updates of one task
	width    int           // Terminal: columns a redrawn line may use
}

// New returns a reporter writing to w in the given mode.
func New(w io.Writer, mode Mode) *Reporter {
	interval := 5 * time.Second
	switch mode {
	case Terminal:
		interval = 100 * time.Millisecond
	case JSON:
		interval = time.Second
	}
	return &Reporter{w: w, mode: mode, now: time.Now, interval: interval, width: defaultWidth}
}

// defaultWidth is a terminal's width when it cannot be asked.
const defaultWidth = 80

// ForFile picks Terminal when f is a terminal, Plain otherwise, and JSON when
// asked for.
func ForFile(f *os.File, asJSON bool) *Reporter {
	r := ForWriter(f, isTerminal(f), asJSON)
	if r.mode == Terminal {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
			r.width = int(ws.Col)
		}
	}
	return r
}

// ForWriter is ForFile's choice for any writer, told whether it is a
// terminal (so tests can have the terminal rendering without a tty).
func ForWriter(w io.Writer, terminal, asJSON bool) *Reporter {
	switch {
	case asJSON:
		return New(w, JSON)
	case terminal:
		return New(w, Terminal)
	default:
		return New(w, Plain)
	}
}

// Discard is a reporter that writes nothing, for tests and library callers
// that do not care.
func Discard() *Reporter { return New(io.Discard, Plain) }

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb"
}

// Info reports a one-off message.
func (r *Reporter) Info(format string, args ...any) {
	r.emit(Event{Task: "", Event: "info", Message: fmt.Sprintf(format, args...)}, true)
}

// Artifact reports where an output file came from: built, reused (from the
// cache, verified) or rebuilt (why: the cache entry that did not verify).
func (r *Reporter) Artifact(name, state, sha256, why string) {
	r.emit(Event{Task: name, Event: "artifact", State: state, SHA256: sha256, Message: why}, true)
}

// Start begins a task. total is the amount of work in unit (bytes, files,
// packages, hosts); zero means unknown.
func (r *Reporter) Start(name string, total int64, unit string) *Task {
	now := r.now()
	t := &Task{r: r, name: name, total: total, unit: unit, start: now, last: now}
	r.emit(Event{Task: name, Event: "start", Total: total, Unit: unit}, true)
	return t
}

// Task is one piece of long work.
type Task struct {
	r          *Reporter
	name, unit string
	mu         sync.Mutex
	done       int64
	total      int64
	start      time.Time
	last       time.Time
	finished   bool
}

// Add records n more units of work done.
func (t *Task) Add(n int64) {
	t.mu.Lock()
	t.done += n
	t.mu.Unlock()
	t.update()
}

// Set records that done units of work are done.
func (t *Task) Set(done int64) {
	t.mu.Lock()
	t.done = done
	t.mu.Unlock()
	t.update()
}

// Write counts len(p) bytes of work, so a Task can sit in an io.Copy.
func (t *Task) Write(p []byte) (int, error) {
	t.Add(int64(len(p)))
	return len(p), nil
}

// Done ends the task, as failed when err is not nil.
func (t *Task) Done(err error) {
	t.mu.Lock()
	if t.finished {
		t.mu.Unlock()
		return
	}
	t.finished = true
	ev := Event{Task: t.name, Event: "done", Done: t.done, Total: t.total, Unit: t.unit,
		ElapsedMS: t.r.now().Sub(t.start).Milliseconds()}
	t.mu.Unlock()
	if err != nil {
		ev.Event = "failed"
		ev.Message = err.Error()
	}
	t.r.emit(ev, true)
}

func (t *Task) update() {
	now := t.r.now()
	t.mu.Lock()
	if t.finished || now.Sub(t.last) < t.r.interval {
		t.mu.Unlock()
		return
	}
	t.last = now
	ev := Event{Task: t.name, Event: "progress", Done: t.done, Total: t.total, Unit: t.unit,
		ElapsedMS: now.Sub(t.start).Milliseconds()}
	t.mu.Unlock()
	t.r.emit(ev, false)
}

func (r *Reporter) emit(ev Event, final bool) {
	ev.Time = r.now().UTC()
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.mode {
	case JSON:
		b, _ := json.Marshal(ev)
		fmt.Fprintf(r.w, "%s\n", b)
	case Terminal:
		// \r + clear line: the running task redraws; finished ones stay.
		line := describe(ev)
		if ev.Event == "progress" && ev.Total > 0 {
			line = bar(ev, r.width)
		}
		if !final {
			line = fit(line, r.width-1) // a wrapped line would not redraw in place
		}
		fmt.Fprintf(r.w, "\r\033[K%s", line)
		if final && ev.Event != "start" {
			fmt.Fprint(r.w, "\n")
		}
	default:
		fmt.Fprintln(r.w, describe(ev))
	}
}

func describe(ev Event) string {
	switch ev.Event {
	case "info":
		return ev.Message
	case "artifact":
		s := fmt.Sprintf("%s: %s", ev.Task, ev.State)
		if len(ev.SHA256) >= 12 {
			s += " (sha256 " + ev.SHA256[:12] + ")"
		}
		if ev.Message != "" {
			s += ": " + ev.Message
		}
		return s
	case "start":
		if ev.Total > 0 {
			return fmt.Sprintf("%s: started (%s)", ev.Task, amount(ev.Total, ev.Unit))
		}
		return fmt.Sprintf("%s: started", ev.Task)
	case "progress":
		s := fmt.Sprintf("%s: %s", ev.Task, amount(ev.Done, ev.Unit))
		if ev.Total > 0 {
			s += fmt.Sprintf(" of %s (%d%%)", amount(ev.Total, ev.Unit), ev.Done*100/ev.Total)
		}
		if secs := float64(ev.ElapsedMS) / 1000; secs > 0 && ev.Unit == "bytes" {
			s += fmt.Sprintf(", %s/s", amount(int64(float64(ev.Done)/secs), ev.Unit))
		}
		return s
	case "failed":
		return fmt.Sprintf("%s: FAILED after %s: %s", ev.Task, elapsed(ev.ElapsedMS), ev.Message)
	default:
		s := fmt.Sprintf("%s: done in %s", ev.Task, elapsed(ev.ElapsedMS))
		if ev.Done > 0 {
			s += fmt.Sprintf(" (%s)", amount(ev.Done, ev.Unit))
		}
		return s
	}
}

// bar is a terminal's line for a task with a known total:
//
//	squashfs [#########---------------]  37%  12.4 MiB/s  ETA 1m05s
//
// The rate is the average since the start; the ETA what is left at it.
func bar(ev Event, width int) string {
	done := min(max(ev.Done, 0), ev.Total)
	pct := done * 100 / ev.Total
	secs := float64(ev.ElapsedMS) / 1000
	rate, eta := "", "ETA --"
	if secs > 0 && done > 0 {
		perSec := float64(done) / secs
		if ev.Unit == "bytes" {
			rate = amount(int64(perSec), ev.Unit) + "/s"
		} else {
			rate = fmt.Sprintf("%.1f %s/s", perSec, strings.TrimSpace(ev.Unit))
		}
		left := time.Duration(float64(ev.Total-done) / perSec * float64(time.Second))
		eta = "ETA " + left.Round(time.Second).String()
	}
	tail := fmt.Sprintf(" %3d%%  %s  %s", pct, rate, eta)
	if rate == "" {
		tail = fmt.Sprintf(" %3d%%  %s", pct, eta)
	}
	// The bar takes what the name and the figures leave, 10 to 30 cells;
	// a name too long for the rest is cut, never the figures.
	name := []rune(ev.Task)
	cells := min(30, max(10, width-1-len(tail)-len(name)-3))
	if room := width - 1 - len(tail) - cells - 3; len(name) > room && room > 1 {
		name = append(name[:room-1], '…')
	}
	filled := int(int64(cells) * done / ev.Total)
	return fmt.Sprintf("%s [%s%s]%s", string(name), strings.Repeat("#", filled), strings.Repeat("-", cells-filled), tail)
}

// fit cuts s to n runes, marking the cut.
func fit(s string, n int) string {
	r := []rune(s)
	if n <= 1 || len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func elapsed(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).Round(100 * time.Millisecond).String()
}

func amount(n int64, unit string) string {
	if unit != "bytes" {
		if unit == "" {
			return fmt.Sprint(n)
		}
		return fmt.Sprintf("%d %s", n, unit)
	}
	const k = 1024
	switch {
	case n >= k*k*k:
		return fmt.Sprintf("%.1f GiB", float64(n)/(k*k*k))
	case n >= k*k:
		return fmt.Sprintf("%.1f MiB", float64(n)/(k*k))
	case n >= k:
		return fmt.Sprintf("%.1f KiB", float64(n)/k)
	}
	return fmt.Sprintf("%d B", n)
}
