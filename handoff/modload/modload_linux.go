package modload

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Load is what an init in the initramfs calls to load its modules
// without modprobe: the files listed in modulesDir/modules.load (see
// LoadOrderFile), in order, with finit_module(2). modulesDir is
// /lib/modules/<uname -r>; empty means that. A module already loaded or
// built in is skipped. It returns the names loaded; a failing module does
// not stop the others (a host without NVMe still needs USB), its error is
// joined into the result.
func Load(modulesDir string) ([]string, error) {
	if modulesDir == "" {
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return nil, fmt.Errorf("load modules: uname: %w", err)
		}
		modulesDir = filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
	}
	list, err := os.ReadFile(filepath.Join(modulesDir, LoadOrderFile))
	if err != nil {
		return nil, fmt.Errorf("load modules: %w", err)
	}
	var loaded []string
	var errs []error
	for _, rel := range strings.Fields(string(list)) {
		if err := loadModule(filepath.Join(modulesDir, rel)); err != nil {
			errs = append(errs, err)
			continue
		}
		loaded = append(loaded, Name(rel))
	}
	return loaded, errors.Join(errs...)
}

// moduleInitCompressedFile is MODULE_INIT_COMPRESSED_FILE (Linux 5.17+):
// the kernel decompresses the module itself.
const moduleInitCompressedFile = 4

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(path, ".ko") {
		flags = moduleInitCompressedFile
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: finit_module: %w", path, err)
	}
	return nil
}
