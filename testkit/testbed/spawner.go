package testbed

import (
	"errors"
	"os/exec"
	"runtime"
	"sync"
)

// spawner starts processes from one locked OS thread. A child's Pdeathsig
// fires when the thread that forked it ends, not the process; Go ends a
// thread when a goroutine exits while locked to it, which could take a
// daemon down mid-test if it had been forked there.
type spawner struct {
	mu       sync.Mutex
	stopped  bool
	requests chan spawnRequest
}

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

func newSpawner() *spawner {
	s := &spawner{requests: make(chan spawnRequest)}
	go func() {
		runtime.LockOSThread()
		// Unlocked once no daemon of the bed runs, so the thread is reused
		// rather than ended.
		defer runtime.UnlockOSThread()
		for r := range s.requests {
			r.done <- r.cmd.Start()
		}
	}()
	return s
}

// start runs cmd.Start on the spawner's thread. A nil spawner (a bed rebuilt
// by RemoveStale, which starts nothing) starts it on the caller's.
func (s *spawner) start(cmd *exec.Cmd) error {
	if s == nil {
		return cmd.Start()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("the bed is closed")
	}
	r := spawnRequest{cmd: cmd, done: make(chan error, 1)}
	s.requests <- r
	return <-r.done
}

func (s *spawner) stop() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopped {
		s.stopped = true
		close(s.requests)
	}
}
