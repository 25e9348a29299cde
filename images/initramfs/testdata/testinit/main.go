// testinit is the /init of the boot tests: it proves the kernel ran it,
// loads the initramfs's modules the way the installer will, waits for the
// block devices the test names on the kernel command line
// (ssbuild.expect=vda,sda), mounts the file systems it names there
// (ssbuild.mount=sda1:vfat,sda2:squashfs) and lists their root, and powers
// the machine off.
package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/modload"
	"golang.org/x/sys/unix"
)

func main() {
	// The kernel gave init /dev/console as its standard streams; open it
	// again in case it did not (no console node in the archive).
	console, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		console = os.Stdout
	}
	say := func(format string, args ...any) { fmt.Fprintf(console, "testinit: "+format+"\n", args...) }
	var u unix.Utsname
	_ = unix.Uname(&u)
	// The marker is only in this program, never on the command line the
	// kernel echoes, so seeing it means init ran.
	say("SSBUILD-INIT-REACHED kernel=%s pid=%d", unix.ByteSliceToString(u.Release[:]), os.Getpid())
	for _, m := range []struct{ fs, dir string }{{"proc", "/proc"}, {"sysfs", "/sys"}, {"devtmpfs", "/dev"}} {
		if err := unix.Mount(m.fs, m.dir, m.fs, 0, ""); err != nil {
			say("mount %s: %v", m.dir, err)
		}
	}
	loaded, err := modload.Load("")
	say("modules loaded: %d (%s)", len(loaded), strings.Join(loaded, " "))
	if err != nil {
		say("module errors: %v", err)
	}
	var expect, mounts []string
	cmdline, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(f, "ssbuild.expect="); ok {
			expect = strings.Split(v, ",")
		}
		if v, ok := strings.CutPrefix(f, "ssbuild.mount="); ok {
			mounts = strings.Split(v, ",")
		}
	}
	// USB devices appear a while after their host controller's module
	// loads, their partitions after the disk, and devtmpfs makes the nodes
	// asynchronously: wait for every node needed.
	var nodes []string
	for _, d := range expect {
		nodes = append(nodes, "/sys/block/"+d, "/dev/"+d)
	}
	for _, m := range mounts {
		dev, _, _ := strings.Cut(m, ":")
		nodes = append(nodes, "/dev/"+dev)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		missing := 0
		for _, n := range nodes {
			if _, err := os.Stat(n); err != nil {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	ents, _ := os.ReadDir("/sys/block")
	var disks []string
	for _, e := range ents {
		disks = append(disks, e.Name())
	}
	sort.Strings(disks)
	say("block devices: %s", strings.Join(disks, " "))
	for i, m := range mounts {
		dev, fstype, _ := strings.Cut(m, ":")
		dir := fmt.Sprintf("/mnt/%d", i)
		_ = os.MkdirAll(dir, 0o755)
		if err := unix.Mount("/dev/"+dev, dir, fstype, unix.MS_RDONLY, ""); err != nil {
			say("mount %s (%s): %v", dev, fstype, err)
			continue
		}
		ents, _ := os.ReadDir(dir)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		// The GPT name, as an init without udev finds a partition by it.
		partname := ""
		if uevent, err := os.ReadFile("/sys/class/block/" + dev + "/uevent"); err == nil {
			for _, l := range strings.Split(string(uevent), "\n") {
				if v, ok := strings.CutPrefix(l, "PARTNAME="); ok {
					partname = v
				}
			}
		}
		say("mounted %s (%s, PARTNAME=%s): %s", dev, fstype, partname, strings.Join(names, " "))
		_ = unix.Unmount(dir, 0)
	}
	say("powering off")
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		say("power off: %v", err)
	}
	select {} // init must not exit: the kernel would panic
}
