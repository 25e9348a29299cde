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

// record updates the status file (atomically: a crash leaves the old one).
// A step reached clears the last error; a failure keeps the step.
func (s *Service) record(step Step, detail string, runErr error) {
	dir := s.cfg.StateDir
	if dir == "" {
		return
	}
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	st := &s.status
	st.Host, st.Role, st.Updated = s.cfg.Host.Name, "joiner", s.o.now().UTC()
	if s.cfg.IsInitiator() {
		st.Role = "initiator"
	}
	if runErr != nil {
		st.LastError = runErr.Error()
	} else {
		st.Step, st.Detail, st.LastError = step, detail, ""
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err == nil {
		tmp := filepath.Join(dir, StatusFile+".tmp")
		if err = os.WriteFile(tmp, data, 0o644); err == nil {
			err = os.Rename(tmp, filepath.Join(dir, StatusFile))
		}
	}
	if err != nil {
		s.log.Info("%s: cannot record status in %s: %v", s.cfg.Host.Name, dir, err)
	}
}
