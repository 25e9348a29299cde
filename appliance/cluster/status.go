package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Status is what a host's service last recorded in its state directory:
// the step it is at and its last error, for `ssbuild appliance status`.
type Status struct {
	Host      string    `json:"host"`
	Role      string    `json:"role"` // "initiator" or "joiner"
	Step      Step      `json:"step"` // the last step reached; empty before the first
	Detail    string    `json:"detail,omitempty"`
	LastError string    `json:"lastError,omitempty"` // of the last run, if it failed
	Updated   time.Time `json:"updated"`
}

// StatusFile is the status file's name in the state directory.
const StatusFile = "cluster-status.json"

// ReadStatus reads the status a service recorded in stateDir.
func ReadStatus(stateDir string) (*Status, error) {
	data, err := os.ReadFile(filepath.Join(stateDir, StatusFile))
	if err != nil {
		return nil, fmt.Errorf("cluster status: %w", err)
	}
	var st Status
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("cluster status %s: %w", filepath.Join(stateDir, StatusFile), err)
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

// SaveStatus writes st as dir/name atomically (a crash leaves the old file),
// creating dir with mode dirMode.
func SaveStatus(dir, name string, dirMode os.FileMode, st *Status) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err == nil {
		err = os.MkdirAll(dir, dirMode)
	}
	if err == nil {
		tmp := filepath.Join(dir, name+".tmp")
		if err = os.WriteFile(tmp, data, 0o644); err == nil {
			err = os.Rename(tmp, filepath.Join(dir, name))
		}
	}
	return err
}

// record updates the status file; status must work without the registry.
func (s *Service) record(step Step, detail string, runErr error) {
	dir := s.cfg.StateDir
	if dir == "" {
		return
	}
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	s.status.Update(s.cfg.Host.Name, s.cfg.IsInitiator(), step, detail, runErr, s.o.now())
	if err := SaveStatus(dir, StatusFile, 0o755, &s.status); err != nil {
		s.log.Info("%s: cannot record status in %s: %v", s.cfg.Host.Name, dir, err)
	}
}
