package cluster

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/config"
)

// These run without daemons: the status record itself.

// A host upgraded from an ssbuild that kept formation's status in
// cluster-status.json and the service's in service-status.json resumes
// from the newer of them: a failure before its first step keeps that step,
// and from then on one file holds the host's status.
func TestRecordUpgradesOldStatusFiles(t *testing.T) {
	write := func(t *testing.T, dir, name string, st Status) {
		t.Helper()
		data, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	exists := func(dir, name string) bool {
		_, err := os.Stat(filepath.Join(dir, name))
		return err == nil
	}
	then := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name  string
		files map[string]Status
		want  Step
	}{
		{"formation's file only", map[string]Status{
			"cluster-status.json": {Host: "host2", Role: "joiner", Step: StepJoined, Updated: then},
		}, StepJoined},
		{"the service's file only", map[string]Status{
			"service-status.json": {Host: "host2", Role: "joiner", Step: "serving", Updated: then},
		}, "serving"},
		{"both: the newer one", map[string]Status{
			"cluster-status.json": {Host: "host2", Role: "joiner", Step: StepMemberOnline, Updated: then},
			"service-status.json": {Host: "host2", Role: "joiner", Step: "host-recorded", Updated: then.Add(time.Second)},
		}, "host-recorded"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, st := range c.files {
				write(t, dir, name, st)
			}
			cfg := &config.Appliance{Host: config.Host{Name: "host2"}, StateDir: dir,
				Cluster: config.Cluster{Initiator: "host1"}}
			if st, err := ReadStatus(dir); err != nil || st.Step != c.want {
				t.Fatalf("status before the upgraded run: %+v %v, want step %s", st, err, c.want)
			}
			r := NewRecord(Host{Config: cfg})
			if step, _ := r.Current(); step != c.want {
				t.Fatalf("record starts at %q, want %q", step, c.want)
			}
			r.Failed(errors.New("LXD not answering"))
			st, err := ReadStatus(dir)
			if err != nil || st.Step != c.want || st.LastError != "LXD not answering" {
				t.Fatalf("status after a failure before the first step: %+v %v", st, err)
			}
			if !exists(dir, StatusFile) {
				t.Fatalf("%s not written", StatusFile)
			}
			for _, old := range legacyStatusFiles {
				if exists(dir, old) {
					t.Errorf("old %s still there next to %s", old, StatusFile)
				}
			}
			// An old file that reappears (a downgrade) is not read again.
			write(t, dir, "cluster-status.json", Status{Host: "host2", Step: StepRegistered, Updated: time.Now()})
			if st, err := ReadStatus(dir); err != nil || st.Step != c.want {
				t.Errorf("status with %s present: %+v %v", StatusFile, st, err)
			}
		})
	}
}

// Formation's steps go to the one record until the host serves; then
// only its own steps move it, and a token is never the host's step.
func TestRecordSettled(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.Appliance{Host: config.Host{Name: "host1"}, StateDir: dir,
		Cluster: config.Cluster{Initiator: "host1"}}
	var steps []Step
	r := NewRecord(Host{Config: cfg, FailAfter: "deployed", OnStep: func(s Step) { steps = append(steps, s) }})
	step := func() Step { s, _ := r.Current(); return s }
	if err := r.Reached(StepBootstrapped, "bootstrapped"); err != nil || step() != StepBootstrapped {
		t.Fatalf("reached %s: %v, step %s", StepBootstrapped, err, step())
	}
	if _ = r.Reached(StepTokenIssued, "for host2"); step() != StepBootstrapped {
		t.Errorf("a token moved the host's step to %s", step())
	}
	_ = r.Reached("serving", "")
	r.Settle()
	if _ = r.Reached(StepClusterFormed, ""); step() != "serving" {
		t.Errorf("formation moved a serving host's step to %s", step())
	}
	err := r.Reached("deployed", "")
	if !errors.Is(err, ErrInjected) || !strings.Contains(err.Error(), "host1: after deployed") || step() != "deployed" {
		t.Errorf("fault injection after deployed: %v, step %s", err, step())
	}
	if got := len(steps); got != 5 {
		t.Errorf("OnStep called %d times, want 5: %v", got, steps)
	}
	if st, err := ReadStatus(dir); err != nil || st.Step != "deployed" || st.Role != "initiator" {
		t.Errorf("status file: %+v %v", st, err)
	}
}
