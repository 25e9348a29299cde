package outcache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// statKey is what must stay the same for a remembered digest to hold: a
// write changes mtime and ctime, a replacement changes the inode.
type statKey struct {
	Dev, Ino         uint64
	Size             int64
	MtimeNs, CtimeNs int64
}

type memoEntry struct {
	Stat   statKey `json:"stat"`
	SHA256 string  `json:"sha256"`
}

var memoMu sync.Mutex

// InputDigest is the content digest of an input file or directory (for a
// directory: every entry's path, type, mode and content or link target).
// File digests are remembered in the cache by path and stat, so a large
// unchanged input (a chainstate snapshot) is not read again by every build.
func (c Cache) InputDigest(path string) (string, error) {
	memoMu.Lock()
	defer memoMu.Unlock()
	memoPath := filepath.Join(c.root(), "stat-digests.json")
	memo := map[string]memoEntry{}
	if c.Dir == "" {
		memoPath = ""
	} else if data, err := os.ReadFile(memoPath); err == nil {
		_ = json.Unmarshal(data, &memo) // unreadable: start afresh
	}
	changed := false
	fileDigest := func(p string, info fs.FileInfo) (string, error) {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		var k statKey
		if ok {
			k = statKey{Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size,
				MtimeNs: st.Mtim.Nano(), CtimeNs: st.Ctim.Nano()}
			if m, hit := memo[abs]; hit && m.Stat == k {
				return m.SHA256, nil
			}
		}
		sum, err := hashFile(p)
		if err != nil {
			return "", err
		}
		if ok {
			memo[abs] = memoEntry{Stat: k, SHA256: sum}
			changed = true
		}
		return sum, nil
	}
	info, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("input %s: %w", path, err)
	}
	var sum string
	if !info.IsDir() {
		sum, err = fileDigest(path, info)
	} else {
		h := sha256.New()
		err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(path, p)
			info, err := d.Info()
			if err != nil {
				return err
			}
			line := ""
			switch {
			case d.Type()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				line = "link " + target
			case d.IsDir():
				line = "dir"
			case d.Type().IsRegular():
				s, err := fileDigest(p, info)
				if err != nil {
					return err
				}
				line = "file " + s
			default:
				line = "other " + d.Type().String()
			}
			fmt.Fprintf(h, "%q %o %s\n", rel, info.Mode().Perm(), line)
			return nil
		})
		sum = hex.EncodeToString(h.Sum(nil))
	}
	if err != nil {
		return "", fmt.Errorf("input %s: %w", path, err)
	}
	if changed && memoPath != "" {
		if data, err := json.Marshal(memo); err == nil && os.MkdirAll(c.root(), 0o755) == nil {
			tmp := memoPath + fmt.Sprintf(".%d", os.Getpid())
			if os.WriteFile(tmp, data, 0o644) == nil {
				_ = os.Rename(tmp, memoPath) // only a memo: losing it costs a re-read
			}
		}
	}
	return sum, nil
}
