package install

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sovereign-stack/ssbuild/appliance/install/efiboot"
	"github.com/sovereign-stack/ssbuild/handoff/modload"
	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// IsInit reports whether this process is the installer initramfs's init:
// the kernel runs /init as PID 1. ssbuild's main hands over to Init then.
// Both are required: ssbuild as PID 1 of a container (docker run) must
// stay the CLI.
func IsInit() bool { return os.Getpid() == 1 && os.Args[0] == "/init" }

// payloadWait is how long Init waits for the stick's payload partition:
// USB storage and partition scans come seconds after the modules load, and
// devtmpfs makes nodes asynchronously.
const payloadWait = 60 * time.Second

// disksQuiet is how long the list of block devices must stay unchanged
// before the installer takes it as complete, and disksWait the most it
// waits for that.
const (
	disksQuiet = 2 * time.Second
	disksWait  = 30 * time.Second
)

// nicWait is how long Init gives NIC drivers to show the MAC that names
// this host before saying no host matches.
const nicWait = 10 * time.Second

// Init is the installer as the initramfs's init (PID 1): it mounts /proc,
// /sys and devtmpfs, loads the initramfs's kernel modules, waits for the
// payload partition, mounts it and runs the install (Run), which reboots
// or powers off. It never returns: PID 1 exiting panics the kernel, and an
// error must stay on the console for the person at the machine to read.
func Init() {
	// The consoles are known once sysfs is mounted; until then only
	// /dev/console (the kernel's devtmpfs automount or the archive's node).
	mountErr := mountKernelFS()
	console := openConsoles()
	say := func(format string, args ...any) { fmt.Fprintf(console, "ssbuild installer: "+format+"\n", args...) }
	err := mountErr
	if err == nil {
		err = initAndRun(console, say)
	}
	if err != nil {
		say("FAILED: %v", err)
		say("the machine is left as it is; power it off when you have read this")
	}
	for {
		time.Sleep(time.Hour)
	}
}

// mountKernelFS mounts /proc, /sys and devtmpfs on /dev.
func mountKernelFS() error {
	for _, m := range []struct{ fs, dir string }{{"proc", "/proc"}, {"sysfs", "/sys"}, {"devtmpfs", "/dev"}} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return fmt.Errorf("init: %s: %w", m.dir, err)
		}
		// EBUSY: already mounted (the kernel's devtmpfs automount).
		if err := unix.Mount(m.fs, m.dir, m.fs, 0, ""); err != nil && err != unix.EBUSY {
			return fmt.Errorf("init: mount %s: %w", m.dir, err)
		}
	}
	return nil
}

// mountEFIVars mounts efivarfs (after the modules: Debian builds it as
// one) so the install can write the disk's boot entry; "" on a machine
// without UEFI or where it cannot be mounted.
func mountEFIVars(say func(string, ...any)) string {
	if _, err := os.Stat("/sys/firmware/efi"); err != nil {
		say("no /sys/firmware/efi: not booted by UEFI, no boot entry will be written")
		return ""
	}
	if err := unix.Mount("efivarfs", efiboot.VarsDir, "efivarfs", 0, ""); err != nil && err != unix.EBUSY {
		say("mount efivarfs: %v: no boot entry will be written", err)
		return ""
	}
	return efiboot.VarsDir
}

func initAndRun(console io.Writer, say func(string, ...any)) error {
	loaded, err := modload.Load("")
	say("kernel modules loaded: %d", len(loaded))
	if err != nil {
		// A module the kernel has built in, or one for absent hardware,
		// must not stop the install; a missing driver shows up below.
		say("some modules did not load: %v", err)
	}
	efiVars := mountEFIVars(say)
	say("waiting for the installer's %s partition", stick.PayloadLabel)
	deadline := time.Now().Add(payloadWait)
	for {
		err = MountPayload("/sys", "/dev", "/run/payload")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("init: %w", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	// Disks other than the stick (the targets) may still be appearing:
	// wait until the list has not changed for a while (bounded).
	disks, settled := DisksSettled(context.Background(), "/sys", disksQuiet, 250*time.Millisecond, disksWait)
	if !settled {
		say("block devices still changing after %s; going on", disksWait)
	}
	say("payload mounted; block devices: %s", strings.Join(disks, " "))
	// Plain lines, not a redrawn line: the console is often a serial port
	// that is logged.
	return Run(context.Background(), Env{
		SysRoot: "/sys", DevRoot: "/dev", ProcRoot: "/proc",
		PayloadDir: "/run/payload", WorkDir: "/run",
		Progress: progress.New(console, progress.Plain),
		Power:    Machine{},
		NICWait:  nicWait,
		EFIVars:  efiVars,
		// Only in the initramfs of a signed build.
		SignerKey: stick.SignerKeyPath,
	})
}

// openConsoles writes to every console the kernel was given (console= on
// its command line), not only to /dev/console, which is the last of them:
// a headless machine's serial port then shows the install as the screen
// does.
func openConsoles() io.Writer {
	var ws []io.Writer
	if active, err := os.ReadFile("/sys/class/tty/console/active"); err == nil {
		for _, name := range strings.Fields(string(active)) {
			if f, err := os.OpenFile("/dev/"+name, os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
				ws = append(ws, f)
			}
		}
	}
	if len(ws) == 0 {
		if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
			return f
		}
		return os.Stdout
	}
	return io.MultiWriter(ws...)
}
