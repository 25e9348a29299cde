package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// Status is what a host's first boot last recorded in its state directory:
// the step it is at and its last error, for `ssbuild appliance status`.
type Status struct {
	Host      string    `json:"host"`
	Role      string    `json:"role"` // "initiator" or "joiner"
	Step      Step      `json:"step"` // the last step reached; empty before the first
	Detail    string    `json:"detail,omitempty"`
	LastError string    `json:"lastError,omitempty"` // of the last run, if it failed
	Updated   time.Time `json:"updated"`
}

// StatusFile is the first-boot status file's name in the state directory:
// cluster formation and the service (appliance/service) record into this
// one file.
const StatusFile = "firstboot-status.json"

// legacyStatusFiles are where an earlier ssbuild kept the status, the
// service's and formation's apart. They are read only while StatusFile is
// absent, and removed once it is written.
var legacyStatusFiles = []string{"service-status.json", "cluster-status.json"}

// ReadStatus reads the status recorded in stateDir. A host upgraded from
// an earlier ssbuild that has not recorded since has only the old files:
// the most recently updated of them is its status.
func ReadStatus(stateDir string) (*Status, error) {
	st, err := readStatusFile(filepath.Join(stateDir, StatusFile))
	if !errors.Is(err, os.ErrNotExist) {
		return st, err
	}
	var newest *Status
	for _, name := range legacyStatusFiles {
		old, oerr := readStatusFile(filepath.Join(stateDir, name))
		if oerr == nil && (newest == nil || old.Updated.After(newest.Updated)) {
			newest = old
		}
	}
	if newest == nil {
		return nil, err
	}
	return newest, nil
}

func readStatusFile(path string) (*Status, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("first-boot status: %w", err)
	}
	var st Status
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("first-boot status %s: %w", path, err)
	}
	return &st, nil
}

// Update applies one step's outcome for host: a step reached clears the
// last error; a failure keeps the step and records the error.
func (st *Status) Update(host string, initiator bool, step Step, detail string, runErr error, now time.Time) {
	st.Host, st.Role, st.Updated = host, "joiner", now.UTC()
	if initiator {
		st.Role = "initiator"
	}
	if runErr != nil {
		st.LastError = runErr.Error()
	} else {
		st.Step, st.Detail, st.LastError = step, detail, ""
	}
}

// saveStatus writes st as dir/StatusFile atomically (a crash leaves the old
// file), creating dir (it also holds the registry's identity: root only).
func saveStatus(dir string, st *Status) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err == nil {
		err = os.MkdirAll(dir, 0o700)
	}
	if err == nil {
		tmp := filepath.Join(dir, StatusFile+".tmp")
		if err = os.WriteFile(tmp, data, 0o644); err == nil {
			err = os.Rename(tmp, filepath.Join(dir, StatusFile))
		}
	}
	return err
}

// Record is a host's one first-boot status record and step reporter:
// cluster formation and the service that runs it reach their steps through
// the same Record, which logs each step, keeps it in the state directory's
// StatusFile, calls OnStep and stops at FailAfter.
type Record struct {
	dir       string
	host      string
	initiator bool
	log       *progress.Reporter
	onStep    func(Step)
	failAfter Step
	now       func() time.Time

	settled  atomic.Bool // formation steps no longer move the host's step
	mu       sync.Mutex
	st       Status
	migrated bool // the legacy files are gone (or were never there)
}

// NewRecord starts the record of h's host from what its state directory
// holds (an earlier ssbuild's files included), so a failure before the
// first step keeps the step reached before. Steps are logged to
// h.Progress, passed to h.OnStep, and stop at h.FailAfter.
func NewRecord(h Host) *Record {
	cfg := h.Config
	r := &Record{dir: cfg.StateDir, host: cfg.Host.Name, initiator: cfg.IsInitiator(),
		log: h.Progress, onStep: h.OnStep, failAfter: h.FailAfter, now: time.Now}
	if r.log == nil {
		r.log = progress.Discard()
	}
	if r.dir != "" {
		if prev, err := ReadStatus(r.dir); err == nil {
			r.st = *prev
		}
	}
	return r
}

// Reached reports a step (the log, the status file, OnStep) and says
// whether fault injection stops here. A join token is per joiner, not
// where this host is, and once Settle was called formation's steps no
// longer move the host's step: neither is recorded.
func (r *Record) Reached(step Step, detail string) error {
	if detail != "" {
		r.log.Info("%s: %s: %s", r.host, step, detail)
	} else {
		r.log.Info("%s: %s", r.host, step)
	}
	if step != StepTokenIssued && !(r.settled.Load() && formationStep(step)) {
		r.record(step, detail, nil)
	}
	if r.onStep != nil {
		r.onStep(step)
	}
	if r.failAfter == step {
		return fmt.Errorf("%s: after %s: %w", r.host, step, ErrInjected)
	}
	return nil
}

// Failed records err as the last error; the step stays.
func (r *Record) Failed(err error) { r.record("", "", err) }

// Settle says the host is past formation (it serves): formation running
// alongside still logs and reports its steps, but the host's step stays.
func (r *Record) Settle() { r.settled.Store(true) }

// Current is the step and last error recorded.
func (r *Record) Current() (Step, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.Step, r.st.LastError
}

func formationStep(step Step) bool {
	return slices.Contains(Steps(true), step) || slices.Contains(Steps(false), step)
}

// record updates the status file; status must work without the registry.
func (r *Record) record(step Step, detail string, runErr error) {
	if r.dir == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.Update(r.host, r.initiator, step, detail, runErr, r.now())
	if err := saveStatus(r.dir, &r.st); err != nil {
		r.log.Info("%s: cannot record status in %s: %v", r.host, r.dir, err)
		return
	}
	if !r.migrated {
		// The new file holds what the old ones said: they would only mislead.
		for _, name := range legacyStatusFiles {
			if err := os.Remove(filepath.Join(r.dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				r.log.Info("%s: remove old status file: %v", r.host, err)
			}
		}
		r.migrated = true
	}
}
