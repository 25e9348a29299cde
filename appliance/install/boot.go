package install

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sovereign-stack/ssbuild/recipes"
)

// PayloadLabel is the GPT partition name of the stick's payload partition.
// Every disk holding one is an installer medium and never a target.
const PayloadLabel = "SSBUILD-PAYLOAD" // as images/installer names it

// Kernel command line parameters the installer reads.
const (
	CmdlineHost = "ssbuild.host" // ssbuild.host=NAME: install this recipe host
)

// Cmdline parses /proc/cmdline into key=value pairs (flags map to "").
func Cmdline(procRoot string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, "cmdline"))
	if err != nil {
		return nil, fmt.Errorf("kernel command line: %w", err)
	}
	m := map[string]string{}
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		m[k] = v
	}
	return m, nil
}

// BootDisks names the installer's own media: every disk holding a
// partition labelled PayloadLabel, and the disk the payload directory is
// mounted from when sysfs can tell (payloadDir on a block device). It is an
// error when neither finds one: without knowing the stick, no disk is safe.
func BootDisks(sysRoot string, disks []Disk, payloadDir string) (map[string]bool, error) {
	boot := map[string]bool{}
	for _, d := range disks {
		for _, n := range d.PartNames {
			if n == PayloadLabel {
				boot[d.Name] = true
			}
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(payloadDir, &st); err == nil {
		if name, err := DiskOfDevice(sysRoot, unix.Major(st.Dev), unix.Minor(st.Dev)); err == nil {
			boot[name] = true
		}
	}
	if len(boot) == 0 {
		return nil, fmt.Errorf("cannot tell which disk is the installer medium: no partition labelled %s and %s is not on a disk; refusing to install", PayloadLabel, payloadDir)
	}
	return boot, nil
}

// IdentifyHost decides which recipe host this machine is: the one named on
// the kernel command line (ssbuild.host=NAME), else the one whose MAC is a
// NIC of this machine, else the only host of the recipe.
func IdentifyHost(hosts []recipes.Host, cmdline map[string]string, macs []string) (recipes.Host, error) {
	var names []string
	for _, h := range hosts {
		names = append(names, h.Name)
	}
	if want, ok := cmdline[CmdlineHost]; ok {
		for _, h := range hosts {
			if h.Name == want {
				return h, nil
			}
		}
		return recipes.Host{}, fmt.Errorf("host identity: %s=%s is not among the recipe's hosts (%s)", CmdlineHost, want, strings.Join(names, ", "))
	}
	have := map[string]bool{}
	for _, m := range macs {
		have[strings.ToLower(m)] = true
	}
	var matched []recipes.Host
	for _, h := range hosts {
		if h.MAC != "" && have[strings.ToLower(string(h.MAC))] {
			matched = append(matched, h)
		}
	}
	switch {
	case len(matched) == 1:
		return matched[0], nil
	case len(matched) > 1:
		return recipes.Host{}, fmt.Errorf("host identity: this machine's NICs match several hosts of the recipe")
	case len(hosts) == 1:
		return hosts[0], nil
	}
	sort.Strings(macs)
	return recipes.Host{}, fmt.Errorf("host identity: no host of the recipe (%s) has a MAC of this machine (%s): set installer.hosts[].mac or boot with %s=NAME",
		strings.Join(names, ", "), strings.Join(macs, " "), CmdlineHost)
}

// MACs lists the hardware addresses of this machine's NICs.
func MACs(sysRoot string) []string {
	entries, _ := os.ReadDir(filepath.Join(sysRoot, "class", "net"))
	var macs []string
	for _, e := range entries {
		mac := readAttr(filepath.Join(sysRoot, "class", "net", e.Name()), "address")
		if mac != "" && mac != "00:00:00:00:00:00" {
			macs = append(macs, mac)
		}
	}
	return macs
}
