package testbed_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/testkit/testbed"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// endingEnv makes TestBedInDyingTest start a bed and then fail or panic;
// it is set only when TestCleanupWhenTestDies runs this binary again.
const endingEnv = "SSBUILD_TESTBED_END"

// dirEnv gives the helper's bed a directory of its own.
const dirEnv = "SSBUILD_TESTBED_DIR"

func TestBedInDyingTest(t *testing.T) {
	how := os.Getenv(endingEnv)
	if how == "" {
		t.Skip("helper of TestCleanupWhenTestDies")
	}
	bed := testbed.New(t, testbed.Options{Hosts: 2, Dir: os.Getenv(dirEnv)})
	// A network, so there is a dnsmasq to clean up too.
	if _, err := bed.Hosts[0].Run(context.Background(), "lxc", "network", "create", "br9", "ipv6.address=none"); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("BED %s %s\n", bed.ID, bed.Dir)
	switch how {
	case "panic":
		panic("test panics with a bed running")
	case "exit":
		os.Exit(3) // as go test's timeout does: no cleanup runs
	}
	t.Fatal("test fails with a bed running")
}

// TestCleanupWhenTestDies checks that a test that fails or panics leaves
// nothing of its bed behind.
func TestCleanupWhenTestDies(t *testing.T) {
	testenv.Short(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, testbed.Tools...)
	for _, how := range []string{"fail", "panic"} {
		t.Run(how, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestBedInDyingTest$", "-test.v")
			cmd.Env = append(os.Environ(), endingEnv+"="+how)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("helper test passed, want it to %s:\n%s", how, out)
			}
			m := regexp.MustCompile(`BED (\w+) (\S+)`).FindSubmatch(out)
			if m == nil {
				t.Fatalf("helper did not start a bed:\n%s", out)
			}
			id, dir := string(m[1]), string(m[2])
			if strings.Contains(string(out), "close:") {
				t.Errorf("the bed's Close failed:\n%s", out)
			}
			assertGoneByID(t, id, dir)
		})
	}
}

// TestRemoveStaleAfterKilledTest kills a test with a bed running, so that
// no cleanup runs, and removes what it left with RemoveStale.
func TestRemoveStaleAfterKilledTest(t *testing.T) {
	testenv.Short(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, testbed.Tools...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestBedInDyingTest$", "-test.v")
	// A directory of its own: New in other test binaries running now also
	// removes stale beds, from the default directory.
	dir := t.TempDir()
	cmd.Env = append(os.Environ(), endingEnv+"=exit", dirEnv+"="+dir)
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 3 {
		t.Fatalf("helper did not exit with 3 (%v):\n%s", cmd.ProcessState, out)
	}
	m := regexp.MustCompile(`BED (\w+) (\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("helper did not start a bed:\n%s", out)
	}
	id, bedDir := string(m[1]), string(m[2])
	// The killed test left its bed: this is what RemoveStale is for.
	if netns, _ := exec.Command("ip", "netns", "list").CombinedOutput(); !strings.Contains(string(netns), id) {
		t.Fatalf("the killed test left no network namespace of bed %s: nothing to test", id)
	}
	removed, err := testbed.RemoveStale(ctx, dir)
	if err != nil {
		t.Errorf("RemoveStale: %v", err)
	}
	if !slices.Contains(removed, id) {
		t.Errorf("RemoveStale removed %v, not the stale bed %s", removed, id)
	}
	assertGoneByID(t, id, bedDir)
}

// assertGoneByID checks that nothing named after bed id remains.
func assertGoneByID(t *testing.T, id, dir string) {
	t.Helper()
	if left := pidsOf(t, "", dir); len(left) > 0 {
		t.Errorf("processes of bed %s still run: %v", id, left)
	}
	netns, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	links, _ := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	rules, _ := exec.Command("iptables", "-S", "FORWARD").CombinedOutput()
	for what, s := range map[string]string{"network namespace": string(netns), "link": string(links), "mount": string(mounts), "iptables rule": string(rules)} {
		if strings.Contains(s, id) {
			t.Errorf("a %s of bed %s remains:\n%s", what, id, grepLines(s, id))
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("bed directory %s remains (%v)", dir, err)
	}
}

// TestTwoBedsSideBySide runs two beds at once: each has its own names, and
// closing one leaves the other working.
func TestTwoBedsSideBySide(t *testing.T) {
	a := testbed.New(t, testbed.Options{Hosts: 1})
	b := testbed.New(t, testbed.Options{Hosts: 1})
	if a.ID == b.ID || a.Bridge == b.Bridge || a.Hosts[0].Netns == b.Hosts[0].Netns || a.Dir == b.Dir {
		t.Fatalf("beds share names: %+v / %+v", a, b)
	}
	// Both beds' test (this one) runs: they are not stale.
	removed, _ := testbed.RemoveStale(context.Background(), "")
	if slices.Contains(removed, a.ID) || slices.Contains(removed, b.ID) {
		t.Fatalf("RemoveStale removed live beds: %v", removed)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Hosts[0].LXD().GetServer(); err != nil {
		t.Errorf("bed %s stopped answering when bed %s closed: %v", b.ID, a.ID, err)
	}
	if out, err := b.Hosts[0].Run(context.Background(), "ip", "-o", "link", "show", "eth0"); err != nil || !strings.Contains(out, "UP") {
		t.Errorf("bed %s's host lost its link when bed %s closed: %q %v", b.ID, a.ID, out, err)
	}
}

// TestStartTimeoutIsClear gives the daemons no time to start: the error
// names the host and the socket and shows the daemon's log, and the
// half-started bed is gone.
func TestStartTimeoutIsClear(t *testing.T) {
	testenv.Short(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, testbed.Tools...)
	bed, err := testbed.Start(context.Background(), testbed.Options{Hosts: 1, StartTimeout: time.Nanosecond})
	if err == nil {
		bed.Close()
		t.Fatal("Start succeeded with a start timeout of 1ns")
	}
	for _, want := range []string{"host1: lxd (pid", "did not answer on", "unix.socket", "--- tail of", "lxd.log", "=== testbed: starting lxd"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if bed == nil {
		t.Fatal("Start returned no bed to check")
	}
	assertBedGone(t, bed)
}
