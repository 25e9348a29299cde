package steps_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/internal/steps"
)

func TestRunOrderErrorsAndResume(t *testing.T) {
	var ran []string
	step := func(name string, err error) steps.Step {
		return steps.Step{Name: name, Run: func(context.Context) error { ran = append(ran, name); return err }}
	}
	boom := errors.New("disk full")

	err := steps.Runner{Stage: "image"}.Run(context.Background(), step("rootfs", nil), step("squashfs", boom), step("sign", nil))
	if err == nil || err.Error() != "image: step squashfs: disk full" || !errors.Is(err, boom) {
		t.Errorf("error = %v, want \"image: step squashfs: disk full\" wrapping the cause", err)
	}
	if !slices.Equal(ran, []string{"rootfs", "squashfs"}) {
		t.Errorf("ran %v, want rootfs then squashfs and nothing after the failure", ran)
	}

	// A resumed run skips what is done and records each step it runs.
	ran = nil
	var recorded []string
	r := steps.Runner{Stage: "install onto disk.img",
		Skip:  func(name string) bool { return name == "partition" },
		After: func(name string, _ time.Duration) error { recorded = append(recorded, name); return nil }}
	if err := r.Run(context.Background(), step("partition", nil), step("write-os", nil)); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ran, []string{"write-os"}) || !slices.Equal(recorded, []string{"write-os"}) {
		t.Errorf("ran %v recorded %v, want only write-os", ran, recorded)
	}

	// A cancelled context stops before the next step.
	ran = nil
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = steps.Runner{Stage: "installer"}.Run(ctx, step("host-os", nil))
	if !errors.Is(err, context.Canceled) || len(ran) != 0 {
		t.Errorf("cancelled: error %v, ran %v; want context.Canceled and nothing run", err, ran)
	}
}
