package install

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/internal/signature"
)

// The payload is a directory (the mounted payload partition of the stick):
//
//	SHA256SUMS          sha256sum format, "<hex>  <relative path>", every file below
//	SHA256SUMS.sig      with a signed build: SSHSIG of SHA256SUMS (internal/signature),
//	                    checked with the key the installer initramfs carries
//	os.img              ext4 image of the host OS root filesystem
//	esp/...             copied verbatim onto the target's ESP; must hold
//	                    esp/EFI/BOOT/BOOTX64.EFI (plus kernel, initrd, loader entries)
//	base-image/...      optional: an `ssbuild image` output folder, copied into
//	                    the initiator's OS for its first-boot deploy
//
// Only files listed in SHA256SUMS are ever read for the install.
//

// Payload is a verified payload: its directory, its files and the digest of
// its manifest (which names this payload in the install journal).
type Payload struct {
	Dir    string
	Files  map[string]string // relative path -> sha256 hex
	Digest string            // sha256 of SHA256SUMS
}

// ESPFiles lists the payload's ESP files, relative to esp/, sorted.
func (p *Payload) ESPFiles() []string { return p.FilesUnder(stick.ESPDir) }

// FilesUnder lists the manifest's files below dir, relative to it, sorted.
func (p *Payload) FilesUnder(dir string) []string {
	var files []string
	for name := range p.Files {
		if rel, ok := strings.CutPrefix(name, dir+"/"); ok {
			files = append(files, rel)
		}
	}
	sort.Strings(files)
	return files
}

// Path is the absolute path of a payload file.
func (p *Payload) Path(rel string) string { return filepath.Join(p.Dir, filepath.FromSlash(rel)) }

// VerifyPayload checks every file of the manifest against its sha256 and
// that the files the install needs are listed. Nothing is written anywhere;
// the installer calls it before it touches the target.
func VerifyPayload(dir string, task io.Writer) (*Payload, error) {
	p, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	return p, p.Verify(task)
}

// ReadManifest reads the payload's manifest without checking the files: the
// names, their sums and the manifest's digest. Verify checks them.
func ReadManifest(dir string) (*Payload, error) { return ReadSignedManifest(dir, nil) }

// ReadSignedManifest is ReadManifest that first checks the manifest's
// signature (ManifestSig) with key; nil key: no check. The bytes checked
// are the bytes parsed. A refusal names its cause: signature missing,
// made by another key, or manifest changed after signing.
func ReadSignedManifest(dir string, key *signature.PublicKey) (*Payload, error) {
	name := filepath.Join(dir, stick.Manifest)
	manifest, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	if key != nil {
		if err := signature.VerifyData(key, manifest, name); err != nil {
			var f *signature.Failure
			if !errors.As(err, &f) {
				return nil, fmt.Errorf("payload signature: %w", err)
			}
			msg := strings.Join(f.Problems, "; ")
			if !strings.Contains(msg, key.Fingerprint()) {
				msg += "; this installer takes only payloads signed by " + key.String()
			}
			return nil, fmt.Errorf("payload signature: %s", msg)
		}
	}
	sum := sha256.Sum256(manifest)
	p := &Payload{Dir: dir, Files: map[string]string{}, Digest: hex.EncodeToString(sum[:])}
	sc := bufio.NewScanner(bytes.NewReader(manifest))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		// sha256sum's text ("  ") and binary (" *") forms.
		hexsum, name, ok := strings.Cut(line, " ")
		name = strings.TrimPrefix(strings.TrimPrefix(strings.TrimPrefix(name, " "), "*"), "./")
		if !ok || len(hexsum) != 64 || !validRel(name) {
			return nil, fmt.Errorf("payload %s line %d: want \"<sha256>  <relative path>\", got %q", stick.Manifest, n, line)
		}
		if _, dup := p.Files[name]; dup {
			return nil, fmt.Errorf("payload %s line %d: %s listed twice", stick.Manifest, n, name)
		}
		p.Files[name] = strings.ToLower(hexsum)
	}
	for _, need := range []string{stick.OSImage, stick.ESPDir + "/" + stick.BootloaderESP} {
		if _, ok := p.Files[need]; !ok {
			return nil, fmt.Errorf("payload %s: %s is not listed (the install needs it)", stick.Manifest, need)
		}
	}
	return p, nil
}

// Verify checks every file of the manifest against its sha256.
func (p *Payload) Verify(task io.Writer) error {
	names := make([]string, 0, len(p.Files))
	for name := range p.Files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := p.VerifyFile(name, task); err != nil {
			return err
		}
	}
	return nil
}

// VerifyFile checks one file of the manifest against its sha256.
func (p *Payload) VerifyFile(name string, task io.Writer) error {
	want, ok := p.Files[name]
	if !ok {
		return fmt.Errorf("payload %s: %s is not listed", stick.Manifest, name)
	}
	got, err := hashFile(p.Path(name), task)
	if err != nil {
		return fmt.Errorf("payload %s: %w", name, err)
	}
	if got != want {
		return fmt.Errorf("payload %s: sha256 %s, manifest says %s: the stick is corrupt or was modified; rebuild or re-flash it", name, got, want)
	}
	return nil
}

// validRel accepts clean relative slash paths that stay inside the payload.
func validRel(name string) bool {
	return name != "" && !path.IsAbs(name) && path.Clean(name) == name && name != ".." && !strings.HasPrefix(name, "../")
}

func hashFile(name string, task io.Writer) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	var w io.Writer = h
	if task != nil {
		w = io.MultiWriter(h, task)
	}
	if _, err := io.CopyBuffer(w, f, make([]byte, 1<<20)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// PayloadSize is the total size of the files of a manifest (for progress).
func PayloadSize(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}
