// Package steps runs a stage's named steps in order. Every stage (the image
// and installer builds, the host OS build, a chroot session, the install)
// uses it, so a step is checked against the context the same way and its
// error reads the same everywhere: "STAGE: step NAME: what failed".
package steps

import (
	"context"
	"fmt"
	"time"
)

// Step is one named step of a stage.
type Step struct {
	Name string
	Run  func(context.Context) error
}

// Runner runs steps for one stage.
type Runner struct {
	// Stage names the stage in errors, e.g. "image" or "install onto /dev/sda".
	Stage string
	// Skip, when set, tells a step a resumed run already did.
	Skip func(name string) bool
	// After, when set, runs after each step that ran, with how long it took
	// (the install records its journal there).
	After func(name string, took time.Duration) error
}

// Run runs steps in order and stops at the first that fails or when ctx
// ends before a step.
func (r Runner) Run(ctx context.Context, steps ...Step) error {
	for _, s := range steps {
		if r.Skip != nil && r.Skip(s.Name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: step %s: %w", r.Stage, s.Name, err)
		}
		began := time.Now()
		if err := s.Run(ctx); err != nil {
			return fmt.Errorf("%s: step %s: %w", r.Stage, s.Name, err)
		}
		if r.After != nil {
			if err := r.After(s.Name, time.Since(began)); err != nil {
				return fmt.Errorf("%s: after step %s: %w", r.Stage, s.Name, err)
			}
		}
	}
	return nil
}
