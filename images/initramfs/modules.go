package initramfs

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/sovereign-stack/ssbuild/handoff/modload"
)

// DefaultModules are what the installer needs to find and write disks on
// NUC-class hosts and in qemu: NVMe, SATA/AHCI, virtio, USB storage
// (xHCI/EHCI, usb-storage, UAS), SCSI disks under them, and the
// filesystems of the stick's payload and the target (ext4, vfat with its
// code pages, squashfs). Dependencies and soft dependencies are added from
// the kernel's modules.dep and modules.softdep.
var DefaultModules = []string{
	"nvme",
	"ahci", "sd_mod",
	"virtio_pci", "virtio_blk", "virtio_scsi",
	"xhci_pci", "ehci_pci", "usb_storage", "uas",
	"ext4", "vfat", "nls_cp437", "nls_ascii", "nls_utf8", "squashfs",
	"crc32c_generic", // ext4's metadata checksums
}

// NICModules are the drivers of the network cards NUC-class hosts and
// virtual machines have (Intel e1000/e1000e/igb/igc/ixgbe, Realtek r8169,
// Broadcom tg3, Aquantia atlantic, virtio-net, common USB Ethernet
// adapters): the installer reads the NICs' MACs to tell which recipe host a
// machine is. They are optional: a kernel without one of them still gets
// an initramfs (Result.Skipped names what was left out).
var NICModules = []string{
	"virtio_net", "e1000", "e1000e", "igb", "igc", "ixgbe", "r8169", "tg3", "atlantic",
	"r8152", "ax88179_178a", "cdc_ether",
}

// moduleIndex is what depmod wrote for one kernel.
type moduleIndex struct {
	dir     string              // lib/modules/<version> in the tree
	paths   map[string]string   // module name -> path relative to dir
	deps    map[string][]string // module name -> its dependencies' names
	pre     map[string][]string // soft dependencies loaded before
	post    map[string][]string // soft dependencies loaded after
	aliases map[string]string   // alias (exact names only) -> module name
	builtin map[string]bool
}

func readIndex(dir string) (*moduleIndex, error) {
	ix := &moduleIndex{dir: dir, paths: map[string]string{}, deps: map[string][]string{},
		pre: map[string][]string{}, post: map[string][]string{}, aliases: map[string]string{},
		builtin: map[string]bool{}}
	err := eachLine(filepath.Join(dir, "modules.dep"), true, func(line string) error {
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("no colon in %q", line)
		}
		name := modload.Name(mod)
		ix.paths[name] = mod
		for _, d := range strings.Fields(deps) {
			ix.deps[name] = append(ix.deps[name], modload.Name(d))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = eachLine(filepath.Join(dir, "modules.builtin"), false, func(line string) error {
		ix.builtin[modload.Name(line)] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = eachLine(filepath.Join(dir, "modules.softdep"), false, func(line string) error {
		f := strings.Fields(line) // softdep MOD pre: A B post: C
		if len(f) < 2 || f[0] != "softdep" {
			return nil
		}
		name, list := modload.Name(f[1]), ix.pre
		for _, w := range f[2:] {
			switch w {
			case "pre:":
				list = ix.pre
			case "post:":
				list = ix.post
			default:
				list[name] = append(list[name], w)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = eachLine(filepath.Join(dir, "modules.alias"), false, func(line string) error {
		f := strings.Fields(line) // alias ALIAS MOD
		if len(f) == 3 && f[0] == "alias" && !strings.ContainsAny(f[1], "*?[") {
			ix.aliases[strings.ReplaceAll(f[1], "-", "_")] = modload.Name(f[2])
		}
		return nil
	})
	return ix, err
}

// eachLine calls fn for each non-empty, non-comment line of file.
func eachLine(file string, required bool, fn func(string) error) error {
	f, err := os.Open(file)
	if os.IsNotExist(err) && !required {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := fn(line); err != nil {
			return fmt.Errorf("%s:%d: %w", file, n, err)
		}
	}
	return sc.Err()
}

// lookup finds a module by name or by alias.
func (ix *moduleIndex) lookup(name string) (string, bool) {
	n := strings.ReplaceAll(name, "-", "_")
	if _, ok := ix.paths[n]; ok || ix.builtin[n] {
		return n, true
	}
	if m, ok := ix.aliases[n]; ok {
		return m, true
	}
	return "", false
}

// resolve returns the modules to load for wanted and optional, in load order
// (dependencies and pre soft dependencies first), as paths relative to the
// index's directory, the wanted modules built into the kernel and the
// optional ones the kernel lacks. A wanted module the kernel has neither as
// a file nor built in is an error; an optional one is skipped; a soft
// dependency that is missing is not (modprobe skips those too).
func (ix *moduleIndex) resolve(wanted, optional []string) (order, builtin, skipped []string, err error) {
	done := map[string]bool{}
	var visit func(name string, soft bool) error
	visit = func(name string, soft bool) error {
		n, ok := ix.lookup(name)
		if !ok {
			if soft {
				return nil
			}
			return fmt.Errorf("module %s: not in %s/modules.dep nor built in", name, ix.dir)
		}
		if done[n] {
			return nil
		}
		done[n] = true // before the dependencies: softdeps may form cycles
		if ix.builtin[n] {
			builtin = append(builtin, n)
			return nil
		}
		for _, d := range ix.pre[n] {
			if err := visit(d, true); err != nil {
				return err
			}
		}
		for _, d := range ix.deps[n] {
			if err := visit(d, false); err != nil {
				return fmt.Errorf("%s needs %w", n, err)
			}
		}
		order = append(order, ix.paths[n])
		for _, d := range ix.post[n] {
			if err := visit(d, true); err != nil {
				return err
			}
		}
		return nil
	}
	sorted := append([]string(nil), wanted...)
	sort.Strings(sorted) // the same order whatever order the caller listed them in
	for _, w := range sorted {
		if err := visit(w, false); err != nil {
			return nil, nil, nil, err
		}
	}
	opt := append([]string(nil), optional...)
	sort.Strings(opt)
	for _, w := range opt {
		if _, ok := ix.lookup(w); !ok {
			skipped = append(skipped, w)
			continue
		}
		if err := visit(w, false); err != nil {
			return nil, nil, nil, err
		}
	}
	return order, builtin, skipped, nil
}

// filteredIndexes returns modules.dep, modules.softdep and modules.alias
// restricted to the modules in order, so tools reading them (modprobe,
// modload.Load) see only what is in the initramfs.
func (ix *moduleIndex) filteredIndexes(order []string) (map[string][]byte, error) {
	in := map[string]bool{}
	for _, p := range order {
		in[modload.Name(p)] = true
	}
	out := map[string][]byte{}
	var dep strings.Builder
	for _, p := range order {
		name := modload.Name(p)
		fmt.Fprintf(&dep, "%s:", p)
		for _, d := range ix.deps[name] {
			fmt.Fprintf(&dep, " %s", ix.paths[d])
		}
		dep.WriteString("\n")
	}
	out["modules.dep"] = []byte(dep.String())
	for _, file := range []string{"modules.softdep", "modules.alias"} {
		var b strings.Builder
		err := eachLine(filepath.Join(ix.dir, file), false, func(line string) error {
			f := strings.Fields(line)
			if len(f) >= 3 && (f[0] == "softdep" && in[modload.Name(f[1])] || f[0] == "alias" && in[modload.Name(f[2])]) {
				b.WriteString(line + "\n")
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		out[file] = []byte(b.String())
	}
	return out, nil
}
