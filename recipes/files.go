package recipes

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// pathField is a field of the recipe that names a local file or folder.
type pathField struct {
	path  string // field path, for messages
	value string
	what  string // what the build does with it
	dirOK bool   // a folder is accepted too
}

// pathFields lists the recipe's local paths that are written in the file
// (a default, like the distribution's keyring, is the build machine's).
func pathFields(r *Recipe, rep *report) []pathField {
	var out []pathField
	add := func(path, value, what string, dirOK bool) {
		if value != "" && rep.written(path) {
			out = append(out, pathField{path, value, what, dirOK})
		}
	}
	addSource := func(prefix string, src Source) {
		if src.Kind == "tarball" && !strings.Contains(src.Tarball, "://") {
			add(prefix+".tarball", src.Tarball, "the rootfs tarball", false)
		}
		if src.Kind == "debootstrap" || src.Kind == "" {
			add(prefix+".keyring", src.Keyring, "the archive keyring", false)
			// A file:// mirror is a folder of the build machine.
			if u, err := url.Parse(src.Mirror); err == nil && u.Scheme == "file" && u.Path != "" {
				add(prefix+".mirror", u.Path, "the archive mirror", true)
			}
		}
	}
	addSource("image.source", r.Image.Source)
	addSource("installer.source", r.Installer.Source)
	if cs := r.Image.Chainstate; cs != nil {
		// A pruned datadir may be a folder or a tarball; an AssumeUTXO
		// snapshot is one file (handoff/chainstate refuses anything else).
		add("image.chainstate.source", cs.Source, "the chainstate", cs.Kind != "assumeutxo")
	}
	add("cluster.secret.file", r.Cluster.Secret.File, "the cluster secret", false)
	return out
}

// checkPathsStayInside refuses a relative path that leaves the recipe's
// folder: the recipe and what it names move together (a copy, a stick
// built elsewhere), and ../ would reach whatever lies next to them.
func checkPathsStayInside(r *Recipe, rep *report) {
	for _, f := range pathFields(r, rep) {
		if filepath.IsAbs(f.value) {
			continue
		}
		if c := filepath.Clean(f.value); c == ".." || strings.HasPrefix(c, "../") {
			rep.at(f.path, "%q leaves the recipe's folder; keep %s next to the recipe (or below it), or write an absolute path", f.value, f.what)
		}
	}
}

// checkFiles reports every path field whose file or folder is missing or
// cannot be read, relative paths taken from the recipe's folder.
func checkFiles(r *Recipe, rep *report) {
	for _, f := range pathFields(r, rep) {
		p := r.Path(f.value)
		if err := readable(p, f.dirOK); err != nil {
			switch {
			case errors.Is(err, fs.ErrNotExist):
				rep.at(f.path, "%s does not exist (%s); relative paths start at the recipe's folder", p, f.what)
			case errors.Is(err, fs.ErrPermission):
				rep.at(f.path, "%s cannot be read by this user (%s): fix its permissions or owner", p, f.what)
			default:
				rep.at(f.path, "%v (%s)", err, f.what)
			}
		}
	}
}

// readable opens the file or folder for reading, which is what the build
// will do, and reports why it cannot.
func readable(p string, dirOK bool) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if info.IsDir() && !dirOK {
		return fmt.Errorf("%s is a folder, not a file", p)
	}
	if info.IsDir() {
		if _, err := f.Readdirnames(1); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		return nil
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file or folder", p)
	}
	return nil
}
