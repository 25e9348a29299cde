package install

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/recipes"
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
			if n == stick.PayloadLabel {
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
		return nil, fmt.Errorf("cannot tell which disk is the installer medium: no partition labelled %s and %s is not on a disk; refusing to install", stick.PayloadLabel, payloadDir)
	}
	return boot, nil
}

// NIC is a network interface of this machine, as the installer saw it.
type NIC struct {
	Name, MAC string
}

func (n NIC) String() string { return n.Name + " " + n.MAC }

// IdentifyHost decides which recipe host this machine is: the one named on
// the kernel command line (ssbuild.host=NAME, the stick's boot menu entry
// per host), else the one whose MAC is a NIC of this machine, else the only
// host of the recipe. When none fits it returns an *UnknownHostError.
func IdentifyHost(hosts []recipes.Host, cmdline map[string]string, nics []NIC) (recipes.Host, error) {
	if want, ok := cmdline[stick.CmdlineHost]; ok {
		for _, h := range hosts {
			if h.Name == want {
				return h, nil
			}
		}
		return recipes.Host{}, &UnknownHostError{Hosts: hosts, NICs: nics, Named: want}
	}
	have := map[string]bool{}
	for _, n := range nics {
		have[strings.ToLower(n.MAC)] = true
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
		return recipes.Host{}, &UnknownHostError{Hosts: hosts, NICs: nics, Matched: matched}
	case len(hosts) == 1:
		return hosts[0], nil
	}
	return recipes.Host{}, &UnknownHostError{Hosts: hosts, NICs: nics}
}

// UnknownHostError says the installer cannot tell which host this machine
// is: what it saw, which hosts the stick holds, and how the owner chooses.
type UnknownHostError struct {
	Hosts   []recipes.Host
	NICs    []NIC
	Named   string         // ssbuild.host= named a host the recipe does not have
	Matched []recipes.Host // more than one host matched
}

func (e *UnknownHostError) Error() string {
	var b strings.Builder
	switch {
	case e.Named != "":
		fmt.Fprintf(&b, "host identity: %s=%s is not a host of this stick's recipe", stick.CmdlineHost, e.Named)
	case len(e.Matched) > 1:
		var names []string
		for _, h := range e.Matched {
			names = append(names, h.Name)
		}
		fmt.Fprintf(&b, "host identity: this machine's NICs match several hosts (%s)", strings.Join(names, ", "))
	default:
		b.WriteString("host identity: no host of this stick's recipe has the MAC of a NIC of this machine")
	}
	b.WriteString("; no disk was touched\n  NICs of this machine:")
	if len(e.NICs) == 0 {
		b.WriteString(" none found (no driver for its network card in the installer?)")
	}
	for _, n := range e.NICs {
		fmt.Fprintf(&b, " %s", n)
		if n != e.NICs[len(e.NICs)-1] {
			b.WriteString(",")
		}
	}
	b.WriteString("\n  hosts on this stick:")
	for i, h := range e.Hosts {
		mac := string(h.MAC)
		if mac == "" {
			mac = "no mac"
		}
		fmt.Fprintf(&b, " %s (%s)", h.Name, mac)
		if i < len(e.Hosts)-1 {
			b.WriteString(",")
		}
	}
	fmt.Fprintf(&b, "\n  to choose: restart and pick this host's entry in the stick's boot menu (%q, passes %s=NAME),\n"+
		"  or set installer.hosts[].mac in the recipe to one of this machine's MACs above and build the stick again", stick.MenuTitle("NAME"), stick.CmdlineHost)
	return b.String()
}

// NICs lists this machine's network interfaces that have a hardware
// address (loopback and virtual interfaces without one are left out).
func NICs(sysRoot string) []NIC {
	dir := filepath.Join(sysRoot, "class", "net")
	entries, _ := os.ReadDir(dir)
	var nics []NIC
	for _, e := range entries {
		mac := readAttr(filepath.Join(dir, e.Name()), "address")
		if mac != "" && mac != "00:00:00:00:00:00" {
			nics = append(nics, NIC{Name: e.Name(), MAC: mac})
		}
	}
	sort.Slice(nics, func(i, j int) bool { return nics[i].Name < nics[j].Name })
	return nics
}
