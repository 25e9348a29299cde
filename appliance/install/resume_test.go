package install

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

var errPowerCut = errors.New("power cut (test)")

// TestRunResumesAfterPowerCut cuts the power after every step, leaves
// garbage where the next step was writing (a half-done write), boots the
// stick again and checks the result is a clean install; a third boot finds
// the install done and only powers off.
func TestRunResumesAfterPowerCut(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "sgdisk", "blkid", "e2fsck", "dumpe2fs", "debugfs", "fsck.fat", "mtype", "losetup", "dd")
	l := testLayout256()
	osStart := MiB + int64(l.ESP)
	// Where the step after the cut writes first.
	halfWritten := map[string][2]int64{
		StepVerified:    {0, 34 * 512},       // the GPT
		StepPartitioned: {osStart, 16 * MiB}, // the OS image
		StepOSWritten:   {MiB, MiB},          // the ESP
	}
	for _, cut := range Steps[:len(Steps)-1] {
		t.Run(cut, func(t *testing.T) {
			env, power := fakeMachine(t, fakeDisk{name: "sda", size: 80 * GiB}, fakeDisk{name: "sdc", size: 64 * MiB, removable: true, payload: true})
			disk := filepath.Join(env.DevRoot, "sda")
			first := env
			first.AfterStep = func(step string) error {
				if step == cut {
					return errPowerCut
				}
				return nil
			}
			if err := Run(context.Background(), first); !errors.Is(err, errPowerCut) {
				t.Fatalf("first run: %v, want the power cut", err)
			}
			if j, _, _ := ReadJournal(disk); j.Step != cut {
				t.Fatalf("journal after the cut: %+v, want step %s", j, cut)
			}
			if r, ok := halfWritten[cut]; ok {
				scribble(t, disk, r[0], r[1])
			}
			if err := Run(context.Background(), env); err != nil {
				t.Fatalf("run after the power cut: %v", err)
			}
			checkInstalled(t, disk, l, expectedFiles(t, env))
			if err := Run(context.Background(), env); err != nil {
				t.Fatalf("run on the installed disk: %v", err)
			}
			if fmt.Sprint(power.calls) != "[poweroff poweroff]" {
				t.Errorf("power: %v", power.calls)
			}
		})
	}
}

func scribble(t *testing.T, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	rand.Read(b)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
