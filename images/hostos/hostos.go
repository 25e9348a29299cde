// Package hostos builds the host OS that the USB installer writes to a
// cluster host: the recipe's installer.source rootfs
// with installer.packages (kernel, systemd-boot, LXD, ...), the ssbuild
// binary and its first-boot unit, packed as the payload's os.img (ext4)
// and esp/ (the target's EFI system partition), in the layout
// appliance/install expects (see its doc.go).
//
// The steps, in order, each named in errors and progress:
//
//	rootfs    debootstrap installer.source (or its tarball), then a cached
//	          layer with installer.packages and Needs installed in a
//	          chroot (rootfs.Builder.Derive); with zfs-dkms, the ZFS module
//	          built for the tree's kernel and kept as a package, the
//	          compiler removed (zfs.go)
//	files     /usr/local/bin/ssbuild, ssbuild-appliance.service (enabled),
//	          /etc/fstab by PARTLABEL, root's authorized_keys
//	esp       systemd-boot as EFI/BOOT/BOOTX64.EFI (the removable-media path:
//	          no firmware boot entry is needed), loader.conf, one entry
//	          booting the tree's kernel and Debian's initramfs-tools initrd
//	          with root=PARTLABEL=ssbuild-os
//	os-image  os.img, ext4 (images/ext4image, reproducible for an epoch)
package hostos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/images/ext4image"
	"github.com/sovereign-stack/ssbuild/images/gptimage"
	"github.com/sovereign-stack/ssbuild/images/osbase"
	"github.com/sovereign-stack/ssbuild/images/rootfs"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/steps"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// Paths in the host OS and on its ESP that the installer, the first boot
// and the tests rely on.
const (
	BinaryPath  = "/usr/local/bin/ssbuild"
	UnitName    = "ssbuild-appliance.service"
	UnitPath    = "/etc/systemd/system/" + UnitName
	LoaderConf  = "loader/loader.conf"
	EntryFile   = "loader/entries/ssbuild.conf"
	KernelFile  = "ssbuild/vmlinuz"
	InitrdFile  = "ssbuild/initrd.img"
	SystemdBoot = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
)

// Unit is the first-boot unit: it runs only on a host the installer gave an
// appliance.yaml, so the same OS image boots inertly anywhere else.
const Unit = `[Unit]
Description=ssbuild appliance: LXD init, join the cluster, deploy the recipe
ConditionPathExists=/etc/ssbuild/appliance.yaml
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart=` + BinaryPath + ` appliance run
StandardOutput=journal+console
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
`

// SSHKeysUnit makes the host's own SSH host keys on its first boot, before
// sshd starts: the OS image carries none (the same keys on every host would
// let one host impersonate another), and Debian's sshd does not start
// without them.
const SSHKeysUnit = `[Unit]
Description=ssbuild: generate this host's SSH host keys
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
`

// SSHKeysUnitName is SSHKeysUnit's file name.
const SSHKeysUnitName = "ssbuild-ssh-host-keys.service"

// Fstab mounts the installer's partitions by their GPT names, which stay
// the same on every host (file system UUIDs come from the image). The ESP
// is nofail: the running system does not need it, and a failed mount must
// not hold the first boot in emergency mode.
const Fstab = `PARTLABEL=` + hostdisk.LabelOS + ` / ext4 errors=remount-ro 0 1
PARTLABEL=` + hostdisk.LabelESP + ` /boot/efi vfat umask=0077,nofail 0 2
`

// Cmdline is the installed kernel's command line. The serial port is the
// last console, so /dev/console (systemd's status, the first-boot unit's
// output) goes there as on cloud images: cluster hosts run headless; the
// screen still gets the kernel's messages.
const Cmdline = "root=PARTLABEL=" + hostdisk.LabelOS + " rw console=tty0 console=ttyS0,115200"

// Spec says what Build makes.
type Spec struct {
	Recipe   *recipes.Recipe
	CacheDir string // rootfs.Builder's cache (debootstrap and the packages layer)
	Binary   string // the static ssbuild binary installed in the OS
	Epoch    int64  // SOURCE_DATE_EPOCH
	// WorkDir receives rootfs/ (the tree), os.img and esp/; it must exist.
	WorkDir string
	// TreeOnly stops after the rootfs step: the caller has os.img and
	// esp/ already (its output cache) and needs only the tree's kernel
	// modules.
	TreeOnly bool
	Progress *progress.Reporter
}

// Result is where Build put things.
type Result struct {
	Root          string // the OS tree (its kernel modules feed the installer initramfs)
	OSImage       string // ext4 image of Root
	ESPDir        string // the target's ESP files
	KernelVersion string
	CacheHit      bool      // the packages layer came from the cache
	LayerBuilt    time.Time // when the packages layer was built
}

// Kernel is the tree's kernel image.
func (r Result) Kernel() string { return filepath.Join(r.Root, "boot", "vmlinuz-"+r.KernelVersion) }

// SystemdBoot is the tree's systemd-boot EFI binary.
func (r Result) SystemdBoot() string { return filepath.Join(r.Root, SystemdBoot) }

// Build runs the steps. On error the caller removes WorkDir.
func Build(ctx context.Context, s Spec) (Result, error) {
	if s.Progress == nil {
		s.Progress = progress.Discard()
	}
	b := &build{Spec: s, res: Result{Root: filepath.Join(s.WorkDir, "rootfs"),
		OSImage: filepath.Join(s.WorkDir, stick.OSImage), ESPDir: filepath.Join(s.WorkDir, stick.ESPDir)}}
	list := []steps.Step{{Name: "rootfs", Run: b.rootfs}}
	if !s.TreeOnly {
		list = append(list, steps.Step{Name: "files", Run: b.files},
			steps.Step{Name: "esp", Run: b.esp},
			steps.Step{Name: "os-image", Run: b.osImage})
	}
	err := steps.Runner{Stage: "host os"}.Run(ctx, list...)
	return b.res, err
}

type build struct {
	Spec
	res Result
}

func (b *build) rootfs(ctx context.Context) error {
	rb := &rootfs.Builder{CacheDir: b.CacheDir, Progress: b.Progress}
	res, err := osbase.Build(ctx, rb, b.Recipe, Layer(b.Recipe, b.Epoch), b.res.Root)
	b.res.CacheHit, b.res.LayerBuilt = res.CacheHit, res.BuiltAt
	if err != nil {
		return err
	}
	b.res.KernelVersion, err = kernelVersion(b.res.Root)
	return err
}

// LayerName is the host OS's packages layer.
const LayerName = "host-os-packages"

// Layer is the host OS's cached tree: installer.source with
// installer.packages and what the appliance needs of the host beside them
// (Needs). With zfs-dkms listed, the ZFS module is built for the tree's
// kernel after the other packages are in (buildZFS), inside the same layer.
func Layer(r *recipes.Recipe, epoch int64) osbase.Layer {
	pkgs := slices.Clone(r.Installer.Packages)
	for _, p := range Needs(pkgs) {
		if !slices.Contains(pkgs, p) {
			pkgs = append(pkgs, p)
		}
	}
	l := osbase.Layer{Name: LayerName, Source: r.Installer.Source, Epoch: epoch}
	if i := slices.Index(pkgs, ZFSDKMS); i >= 0 {
		l.Packages = slices.Delete(pkgs, i, i+1)
		l.Finish, l.FinishKey = buildZFS, zfsFinishKey
		return l
	}
	l.Packages = pkgs
	return l
}

// kernelVersion is the version of the tree's only kernel; the host OS
// needs exactly one (installer.packages must name a kernel package).
// Needs are the packages the host OS gets beside installer.packages: a
// minbase tree has no /sbin/init (systemd-sysv; the first-boot unit needs
// systemd as the init), and Debian's lxd neither depends on nor
// recommends what it runs for a host's networking: it exits at start
// without ip (iproute2), and a bridge network needs dnsmasq and a
// firewall (nftables).
func Needs(packages []string) []string {
	needs := []string{"systemd-sysv", "iproute2"}
	if slices.Contains(packages, "lxd") {
		needs = append(needs, "dnsmasq-base", "nftables")
	}
	return needs
}

func kernelVersion(root string) (string, error) {
	ents, err := os.ReadDir(filepath.Join(root, "lib/modules"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var versions []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(root, "boot", "vmlinuz-"+e.Name())); err == nil {
			versions = append(versions, e.Name())
		}
	}
	if len(versions) != 1 {
		return "", fmt.Errorf("want one kernel (boot/vmlinuz-* with lib/modules/*) in the host OS, found %d %v: installer.packages needs one kernel package (linux-image-amd64, linux-generic)", len(versions), versions)
	}
	return versions[0], nil
}

func (b *build) files(context.Context) error {
	root, err := os.OpenRoot(b.res.Root)
	if err != nil {
		return err
	}
	defer root.Close()
	write := func(name string, data []byte, perm os.FileMode) error {
		return osbase.WriteFile(root, name, data, perm)
	}
	bin, err := os.ReadFile(b.Binary)
	if err != nil {
		return fmt.Errorf("ssbuild binary for the host OS: %w", err)
	}
	if err := write(BinaryPath, bin, 0o755); err != nil {
		return err
	}
	if err := write(UnitPath, []byte(Unit), 0o644); err != nil {
		return err
	}
	if err := write("/etc/fstab", []byte(Fstab), 0o644); err != nil {
		return err
	}
	if err := root.MkdirAll("boot/efi", 0o755); err != nil {
		return err
	}
	enable := func(unit, target string) error { return osbase.EnableUnit(root, unit, target) }
	if err := enable(UnitPath, "multi-user.target"); err != nil {
		return err
	}
	// The installer writes a systemd-networkd file for a static address;
	// networkd must run for it to apply.
	if _, err := root.Stat("lib/systemd/system/systemd-networkd.service"); err == nil {
		if err := enable("/lib/systemd/system/systemd-networkd.service", "multi-user.target"); err != nil {
			return err
		}
	}
	if _, err := root.Stat("lib/systemd/system/ssh.service"); err == nil {
		for _, k := range []string{"rsa", "ecdsa", "ed25519"} {
			for _, suffix := range []string{"", ".pub"} {
				if err := root.Remove("etc/ssh/ssh_host_" + k + "_key" + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
		}
		unit := "/etc/systemd/system/" + SSHKeysUnitName
		if err := write(unit, []byte(SSHKeysUnit), 0o644); err != nil {
			return err
		}
		if err := enable(unit, "ssh.service"); err != nil {
			return err
		}
	}
	if keys := b.Recipe.Installer.SSHKeys; len(keys) > 0 {
		if err := root.MkdirAll("root/.ssh", 0o700); err != nil {
			return err
		}
		if err := root.Chmod("root/.ssh", 0o700); err != nil {
			return err
		}
		if err := write("/root/.ssh/authorized_keys", []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (b *build) esp(context.Context) error {
	version := b.res.KernelVersion
	initrd := filepath.Join(b.res.Root, "boot", "initrd.img-"+version)
	copies := []struct{ from, to string }{
		{b.res.SystemdBoot(), stick.BootloaderESP},
		{b.res.Kernel(), KernelFile},
		{initrd, InitrdFile},
	}
	for _, c := range copies {
		if err := copyFile(c.from, filepath.Join(b.res.ESPDir, c.to)); err != nil {
			return err
		}
	}
	entry := fmt.Sprintf("title %s host OS (%s)\nlinux /%s\ninitrd /%s\noptions %s\n",
		b.Recipe.Name, version, KernelFile, InitrdFile, Cmdline)
	files := map[string]string{
		LoaderConf: "default ssbuild.conf\ntimeout 0\neditor no\n",
		EntryFile:  entry,
	}
	for name, data := range files {
		p := filepath.Join(b.res.ESPDir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (b *build) osImage(ctx context.Context) error {
	size, err := ext4image.SizeFor(b.res.Root)
	if err != nil {
		return fmt.Errorf("size of %s: %w", b.res.Root, err)
	}
	// Whole block groups (32768 blocks of 4 KiB); the installer grows the
	// file system to the partition.
	const group = 128 << 20
	size = (size + group - 1) / group * group
	seed := fmt.Sprintf("%s %d host os", b.Recipe.Name, b.Epoch)
	return ext4image.Make(ctx, ext4image.Spec{Root: b.res.Root, Output: b.res.OSImage, Size: size,
		Label: hostdisk.LabelOS, UUID: strings.ToLower(gptimage.GUID(seed + " uuid")),
		HashSeed: strings.ToLower(gptimage.GUID(seed + " hash seed")),
		Epoch:    b.Epoch, WorkDir: b.WorkDir, Progress: b.Progress})
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	return out.Close()
}
