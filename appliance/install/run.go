package install

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/internal/progress"
	"github.com/sovereign-stack/ssbuild/internal/signature"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// Power is what the installer does when it is done; tests record it.
type Power interface {
	Reboot() error
	PowerOff() error
}

// Machine is the real machine: sync, then reboot or power off.
type Machine struct{}

func (Machine) Reboot() error   { unix.Sync(); return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART) }
func (Machine) PowerOff() error { unix.Sync(); return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF) }

// Env is where Run finds the machine and reports.
type Env struct {
	SysRoot, DevRoot, ProcRoot string // /sys, /dev, /proc
	LoopDevRoot                string // where loop device nodes are; default DevRoot (tests: the real /dev beside fabricated disks)
	PayloadDir                 string // the mounted payload partition (MountPayload)
	WorkDir                    string // for the OS filesystem's mount point; default os.TempDir()
	Progress                   *progress.Reporter
	Power                      Power
	AfterStep                  func(step string) error // see Options
	// NICWait is how long to wait for a NIC whose MAC names a host when
	// none does yet (drivers probe after their modules load); 0: look once.
	NICWait time.Duration
	// EFIVars is the mounted efivarfs (efiboot.VarsDir) where the
	// installed disk's boot entry is written; empty: none is written.
	EFIVars string
	// SignerKey is the public key file of the builder whose signature the
	// payload's manifest must carry (SignerKeyPath in the installer
	// initramfs); empty or absent: the build was not signed, the payload
	// is taken on its manifest alone.
	SignerKey string
	// BeforeInstall runs after the target is chosen and the payload
	// verified, just before Install (tests swap the disk here).
	BeforeInstall func(target Disk) error
}

// Run is the whole unattended install: check the manifest's signature
// when the installer carries its builder's key (Env.SignerKey), identify this host and pick and
// check the target (reading only the recipe and the secret, each checked
// against the manifest, so a machine the stick does not know or a disk it
// must refuse is reported in seconds), verify the whole payload, install,
// then reboot or power off as the recipe says. Nothing is written before
// the payload is verified and the target accepted. On a disk this payload
// already installed for this host it only powers off (the stick is still
// in; rebooting would loop).
func Run(ctx context.Context, env Env) error {
	rep := env.Progress
	if rep == nil {
		rep = progress.Discard()
	}
	// The signature first: nothing of the payload is believed before it.
	key, err := signerKey(env.SignerKey)
	if err != nil {
		return fmt.Errorf("verify: %w (nothing was written)", err)
	}
	p, err := ReadSignedManifest(env.PayloadDir, key)
	if err != nil {
		return fmt.Errorf("verify: %w (nothing was written)", err)
	}
	if key != nil {
		rep.Info("payload signed by %s", key)
	} else {
		rep.Info("payload signature not checked: this installer carries no signer key (built without --sign-key)")
	}
	for _, need := range []string{stick.RecipeName, stick.SecretName} {
		if err := p.VerifyFile(need, nil); err != nil {
			return fmt.Errorf("verify: %w (nothing was written)", err)
		}
	}
	r, err := recipes.Load(p.Path(stick.RecipeName))
	if err != nil {
		return err
	}
	secret, err := os.ReadFile(p.Path(stick.SecretName))
	if err != nil {
		return fmt.Errorf("payload: %w", err)
	}
	cmdline, err := Cmdline(env.ProcRoot)
	if err != nil {
		return err
	}
	host, err := identify(ctx, env, rep, cmdline, r.Installer.Hosts)
	if err != nil {
		return err
	}
	recipeData, err := os.ReadFile(p.Path(stick.RecipeName))
	if err != nil {
		return fmt.Errorf("payload: %w", err)
	}
	withImage := len(p.FilesUnder(stick.BaseImageDir)) > 0
	files, err := HostFiles(r, recipeData, host, secret, withImage)
	if err != nil {
		return err
	}
	var copies []Copy
	if withImage && host.Name == r.Cluster.Initiator {
		// The deploy imports it into LXD once for the whole cluster.
		copies = append(copies, Copy{From: stick.BaseImageDir, To: config.DefaultImageDir})
	}

	disks, err := ReadDisks(env.SysRoot, env.DevRoot)
	if err != nil {
		return err
	}
	boot, err := BootDisks(env.SysRoot, disks, env.PayloadDir)
	if err != nil {
		return err
	}
	for i, d := range disks {
		if boot[d.Name] {
			continue
		}
		if disks[i].Found, err = Probe(d.Path); err != nil {
			return err
		}
		if ForeignJournal(d.Path, p.Digest, host.Name) {
			disks[i].Found = append(disks[i].Found, "journal")
		}
	}
	choice := Choice{Target: r.Installer.Target, Layout: r.Installer.Layout, Wipe: r.Installer.Wipe}
	if host.Target != nil {
		choice.Target = *host.Target
	}
	resumable := func(d Disk) bool { return Resumable(d.Path, p.Digest, host.Name) }
	target, err := SelectTarget(disks, boot, choice, resumable)
	if err != nil {
		return err
	}
	rep.Info("target disk: %s", target)
	// What the disk is now, checked again right before the first write:
	// verifying the payload takes minutes, time enough to swap a disk.
	expect, err := Identify(env.SysRoot, target.Path)
	if err != nil {
		return err
	}
	if expect.Size != target.Size || (target.Dev != "" && expect.Dev != "" && expect.Dev != target.Dev) {
		return fmt.Errorf("target %s changed while it was chosen (%s): nothing was written; boot the installer again", target, expect)
	}
	if held := holds(target); len(held) > 0 && choice.Wipe && !resumable(target) {
		// Said before anything is erased, so the console (often a logged
		// serial port) keeps what was lost.
		rep.Info("installer.wipe is true: ERASING %s, which holds %s", target, strings.Join(held, ", "))
	}

	task := rep.Start("verify payload", PayloadSize(env.PayloadDir), "bytes")
	err = p.Verify(task)
	task.Done(err)
	if err != nil {
		return fmt.Errorf("verify: %w (nothing was written)", err)
	}
	afterStep := env.AfterStep
	var bench *benchRun
	if cmdline[CmdlineBench] == "dd" {
		bench = &benchRun{procRoot: env.ProcRoot}
		afterStep = bench.afterStep(afterStep)
		if err := dropCaches(env.ProcRoot); err != nil {
			return err
		}
	}
	if env.BeforeInstall != nil {
		if err := env.BeforeInstall(target); err != nil {
			return err
		}
	}
	err = Install(ctx, p, Plan{Target: target.Path, Layout: r.Installer.Layout, Host: host.Name, Files: files, Copies: copies, Expect: &expect},
		Options{Progress: rep, DevRoot: cmp.Or(env.LoopDevRoot, env.DevRoot), WorkDir: env.WorkDir, SysRoot: env.SysRoot, AfterStep: afterStep})
	if errors.Is(err, ErrAlreadyInstalled) {
		registerBoot(env, target.Path, host.Name) // a run cut after the install but before its entry
		rep.Info("%s already holds this install of %s: remove the installer stick; powering off", target.Path, host.Name)
		return env.Power.PowerOff()
	}
	if err != nil {
		return err
	}
	rep.Info("installed %s onto %s", host.Name, target.Path)
	registerBoot(env, target.Path, host.Name)
	if bench != nil {
		res, err := bench.finish(ctx, p.Path(stick.OSImage), target.Path)
		if err != nil {
			return err
		}
		rep.Info("%s", res)
	}
	if r.Installer.AfterInstall == "poweroff" {
		return env.Power.PowerOff()
	}
	return env.Power.Reboot()
}

// signerKey reads the installer's signer key file; nil when there is none.
func signerKey(file string) (*signature.PublicKey, error) {
	if file == "" {
		return nil, nil
	}
	if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("installer signer key: %w", err)
	}
	key, err := signature.ReadPublicKey(file)
	if err != nil {
		return nil, fmt.Errorf("installer signer key: %w", err)
	}
	return key, nil
}

// identify is IdentifyHost over this machine's NICs and kernel command
// line. NIC drivers probe asynchronously after their modules load, so
// while no host matches it looks again for up to env.NICWait.
func identify(ctx context.Context, env Env, rep *progress.Reporter, cmdline map[string]string, hosts []recipes.Host) (recipes.Host, error) {
	deadline := time.Now().Add(env.NICWait)
	for {
		nics := NICs(env.SysRoot)
		h, err := IdentifyHost(hosts, cmdline, nics)
		var unknown *UnknownHostError
		if err == nil || !errors.As(err, &unknown) || unknown.Named != "" || len(unknown.Matched) > 0 || time.Now().After(deadline) {
			if err == nil {
				rep.Info("this machine is host %s (%s; NICs: %s)", h.Name, how(h, cmdline, nics), nicList(nics))
			}
			return h, err
		}
		select {
		case <-ctx.Done():
			return recipes.Host{}, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// how says why IdentifyHost chose h.
func how(h recipes.Host, cmdline map[string]string, nics []NIC) string {
	if _, ok := cmdline[stick.CmdlineHost]; ok {
		return "chosen in the boot menu: " + stick.CmdlineHost + "=" + h.Name
	}
	for _, n := range nics {
		if h.MAC != "" && strings.EqualFold(n.MAC, string(h.MAC)) {
			return "MAC " + n.MAC + " of " + n.Name
		}
	}
	return "the recipe's only host"
}

func nicList(nics []NIC) string {
	if len(nics) == 0 {
		return "none"
	}
	var s []string
	for _, n := range nics {
		s = append(s, n.String())
	}
	return strings.Join(s, ", ")
}

// HostFiles are the files the installer writes into host h's OS: its name,
// /etc/ssbuild/appliance.yaml, the cluster secret (0600), the recipe as the
// stick carries it (recipeData) and, with a static address, a
// systemd-networkd file. Every host's appliance.yaml has a deploy section
// when the recipe has deployments (whichever holds the registry's deploy
// lease deploys); the initiator's names the copied base image when the
// payload carries one (withImage).
func HostFiles(r *recipes.Recipe, recipeData []byte, h recipes.Host, secret []byte, withImage bool) ([]File, error) {
	hf := config.HostFiles{StorageSource: hostdisk.ZFSSource, SecretFile: hostdisk.SecretPath, StateDir: hostdisk.StateDir}
	if len(r.Deployments) > 0 {
		hf.Deploy = &config.Deploy{Recipe: config.DefaultRecipePath}
		if withImage && h.Name == r.Cluster.Initiator {
			hf.Deploy.Image = config.DefaultImageDir
		}
	}
	a, err := config.FromRecipe(r, h.Name, hf)
	if err != nil {
		return nil, err
	}
	yaml, err := config.Marshal(a)
	if err != nil {
		return nil, err
	}
	files := []File{
		{Path: "/etc/hostname", Data: []byte(h.Name + "\n"), Mode: 0o644},
		{Path: config.DefaultPath, Data: yaml, Mode: 0o644},
		{Path: hostdisk.SecretPath, Data: secret, Mode: 0o600},
		{Path: config.DefaultRecipePath, Data: recipeData, Mode: 0o644},
	}
	if h.Address != "" {
		var b strings.Builder
		b.WriteString("# Written by the ssbuild installer from the recipe.\n[Match]\n")
		if h.MAC != "" {
			fmt.Fprintf(&b, "MACAddress=%s\n", h.MAC)
		} else {
			b.WriteString("Name=en* eth*\n")
		}
		fmt.Fprintf(&b, "\n[Network]\nAddress=%s\n", h.Address)
		if h.Gateway != "" {
			fmt.Fprintf(&b, "Gateway=%s\n", h.Gateway)
		}
		files = append(files, File{Path: hostdisk.NetworkFile, Data: []byte(b.String()), Mode: 0o644})
	}
	return files, nil
}

// MountPayload mounts the stick's payload partition (GPT name PayloadLabel,
// squashfs or ext4) read-only at dir. More than one such partition is an
// error: the installer would not know which payload to trust.
func MountPayload(sysRoot, devRoot, dir string) error {
	disks, err := ReadDisks(sysRoot, devRoot)
	if err != nil {
		return err
	}
	var parts []string
	for _, d := range disks {
		for _, part := range d.Partitions {
			if ueventValue(filepath.Join(sysRoot, "block", d.Name, part, "uevent"), "PARTNAME") == stick.PayloadLabel {
				parts = append(parts, filepath.Join(devRoot, part))
			}
		}
	}
	if len(parts) != 1 {
		return fmt.Errorf("payload: want one partition labelled %s, found %d (%s)", stick.PayloadLabel, len(parts), strings.Join(parts, " "))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var errs []error
	for _, fstype := range []string{"squashfs", "ext4"} {
		err := unix.Mount(parts[0], dir, fstype, unix.MS_RDONLY, "")
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", fstype, err))
	}
	return fmt.Errorf("mount payload %s: %w", parts[0], errors.Join(errs...))
}
