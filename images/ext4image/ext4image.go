// Package ext4image makes reproducible ext4 file system images from a
// directory tree with the standard tools (mkfs.ext4 -d, debugfs): the root
// file system of the LXD VM disk (images/lxdimage) and the host OS image
// the installer writes (images/hostos). go-diskfs's own ext4 writer cannot
// hold a root file system (no hard links, device nodes, xattrs).
package ext4image

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sovereign-stack/ssbuild/internal/command"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

const mib = int64(1) << 20

// RootDirMode is the mode of the image's /, root-owned, whatever the tree's
// own root directory says (a build folder is often 0700).
const RootDirMode = 0o755

// mke2fsConf pins the ext4 features, so the file system does not depend on
// the build machine's /etc/mke2fs.conf. These are Debian 12's and Ubuntu
// 22.04's ext4 defaults, which grub 2.06 and their kernels read.
const mke2fsConf = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
`

// Spec says what Make builds.
type Spec struct {
	Root     string // the tree to copy in
	Output   string // the image file (created or overwritten)
	Size     int64  // bytes; see SizeFor
	Label    string // volume label
	UUID     string // file system UUID, fixed for reproducibility
	HashSeed string // htree hash seed (a UUID), fixed for reproducibility
	Epoch    int64  // every inode's and the superblock's times
	WorkDir  string // for mke2fs.conf; default: beside Output
	Progress *progress.Reporter
}

// SizeFor sizes a file system for root: the tree's blocks and inodes, a
// fifth more for ext4's metadata, and 256 MiB for the journal and the first
// boot's writes.
func SizeFor(root string) (int64, error) {
	var blocks int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		blocks += (info.Size()+4095)/4096 + 1 // data rounded to blocks, and one for the inode's share
		return nil
	})
	return blocks*4096*6/5 + 256*mib, err
}

// Make builds the image with mkfs.ext4 -d. mke2fs 1.47.0 (Debian 12) sorts
// directory entries and takes its own times from E2FSPROGS_FAKE_TIME, but
// copies each file's atime/ctime/mtime from the tree; debugfs then sets
// those to the epoch, as mksquashfs -all-time does.
func Make(ctx context.Context, s Spec) error {
	rep := s.Progress
	if rep == nil {
		rep = progress.Discard()
	}
	task := rep.Start("ext4", 0, "")
	err := func() error {
		work := s.WorkDir
		if work == "" {
			work = filepath.Dir(s.Output)
		}
		conf, err := os.CreateTemp(work, ".mke2fs-*.conf")
		if err != nil {
			return err
		}
		defer os.Remove(conf.Name())
		if _, err := conf.WriteString(mke2fsConf); err != nil {
			conf.Close()
			return err
		}
		if err := conf.Close(); err != nil {
			return err
		}
		epoch := strconv.FormatInt(s.Epoch, 10)
		env := []string{"MKE2FS_CONFIG=" + conf.Name(), "E2FSPROGS_FAKE_TIME=" + epoch, "SOURCE_DATE_EPOCH=" + epoch,
			"LC_ALL=C"} // scandir's alphasort follows the locale
		if _, err := command.Run(ctx, command.Cmd{Name: "mkfs.ext4", Env: env, Args: []string{
			"-q", "-F", "-t", "ext4", "-L", s.Label, "-U", s.UUID,
			"-E", "hash_seed=" + s.HashSeed + ",nodiscard",
			"-d", s.Root, s.Output, strconv.FormatInt(s.Size/1024, 10) + "k",
		}}); err != nil {
			return err
		}
		// mke2fs leaves out a last block group too small for its metadata;
		// the file still gets the size asked for (sparse zeros).
		if err := os.Truncate(s.Output, s.Size); err != nil {
			return err
		}
		script, err := TimesScript(s.Root, s.Epoch)
		if err != nil {
			return err
		}
		var stderr bytes.Buffer
		if _, err := command.Run(ctx, command.Cmd{Name: "debugfs", Env: env, Args: []string{"-w", "-f", "-", s.Output},
			Stdin: bytes.NewReader(script), Log: &stderr}); err != nil {
			return err
		}
		// debugfs reports a failed command on stderr and still exits 0.
		for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
			if line != "" && !strings.HasPrefix(line, "debugfs ") {
				return fmt.Errorf("debugfs: setting times: %s", line)
			}
		}
		return nil
	}()
	task.Done(err)
	return err
}

// TimesScript is a debugfs script that sets every inode's times to epoch
// (and /'s mode and owner to RootDirMode, 0:0).
func TimesScript(root string, epoch int64) ([]byte, error) {
	var b bytes.Buffer
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if strings.ContainsAny(rel, "\n\r") {
			return fmt.Errorf("%q: a newline in a file name cannot be passed to debugfs", p)
		}
		// debugfs's parser reads "" inside quotes as one quote.
		q := `"/` + strings.ReplaceAll(strings.TrimPrefix(rel, "."), `"`, `""`) + `"`
		if rel == "." {
			fmt.Fprintf(&b, "sif / mode 0%o\nsif / uid 0\nsif / gid 0\n", 0o40000|RootDirMode)
		}
		for _, field := range []string{"atime", "ctime", "mtime"} {
			fmt.Fprintf(&b, "sif %s %s @%d\n", q, field, epoch)
		}
		return nil
	})
	return b.Bytes(), err
}
