package install

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/sovereign-stack/ssbuild/handoff/hostdisk"
)

// The install journal is one 4 KiB block in the gap the 1 MiB alignment
// leaves between the GPT and the ESP (bytes 1 MiB-4 KiB .. 1 MiB of the
// target). It lives outside every partition, so partitioning and
// formatting do not erase it, and it is written before anything else, so a
// re-run after a power cut finds it and continues instead of refusing a disk
// that holds its own half-done install.
const (
	journalOffset = alignment - journalSize
	journalSize   = 4096
	journalMagic  = "ssbuild-install-journal v1\n"
)

// Steps, in order. A step is recorded when it is complete.
const (
	StepVerified      = "verified"       // payload checked, target accepted
	StepPartitioned   = "partitioned"    // GPT written, old signatures cleared
	StepOSWritten     = "os-written"     // ext4 image copied to the OS partition
	StepESPWritten    = "esp-written"    // ESP formatted, bootloader and boot files copied
	StepConfigWritten = "config-written" // OS filesystem grown, identity and appliance.yaml written
	StepDone          = "done"
)

// Steps lists the steps in the order they run.
var Steps = []string{StepVerified, StepPartitioned, StepOSWritten, StepESPWritten, StepConfigWritten, StepDone}

// Journal is what the block records.
type Journal struct {
	Payload string // digest of the payload's manifest
	Host    string
	Step    string // the last completed step; "" when the block was torn
}

// Completed reports whether step is recorded as done.
func (j Journal) Completed(step string) bool {
	return j.Step != "" && slices.Index(Steps, j.Step) >= slices.Index(Steps, step)
}

func (j Journal) encode() []byte {
	body := fmt.Sprintf("%spayload %s\nhost %s\nstep %s\n", journalMagic, j.Payload, j.Host, j.Step)
	sum := sha256.Sum256([]byte(body))
	b := make([]byte, journalSize)
	copy(b, body+"sum "+hex.EncodeToString(sum[:])+"\n")
	return b
}

// ReadJournal reads the journal of a target. ok is false when the target
// holds none. A torn block (magic present, checksum wrong) reads as a
// journal naming no payload and no completed step: nothing in it is
// trusted, and Resumable refuses it like any data. (The record is shorter
// than one sector, so a disk that writes sectors whole never tears it.)
func ReadJournal(target string) (j Journal, ok bool, err error) {
	f, err := os.Open(target)
	if err != nil {
		return j, false, fmt.Errorf("install journal on %s: %w", target, err)
	}
	defer f.Close()
	b := make([]byte, journalSize)
	if _, err := f.ReadAt(b, journalOffset); err != nil {
		return j, false, nil // too small to hold one
	}
	if !bytes.HasPrefix(b, []byte(journalMagic)) {
		return j, false, nil
	}
	text := string(bytes.TrimRight(b, "\x00"))
	body, sumLine, found := strings.Cut(text, "sum ")
	sum := sha256.Sum256([]byte(body))
	if !found || strings.TrimSpace(sumLine) != hex.EncodeToString(sum[:]) {
		return Journal{}, true, nil
	}
	for _, line := range strings.Split(body, "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "payload":
			j.Payload = v
		case "host":
			j.Host = v
		case "step":
			j.Step = v
		}
	}
	if !slices.Contains(Steps, j.Step) {
		j.Step = ""
	}
	return j, true, nil
}

// writeJournal records j durably.
func writeJournal(f *os.File, j Journal) error {
	if _, err := f.WriteAt(j.encode(), journalOffset); err != nil {
		return fmt.Errorf("install journal on %s: record %s: %w", f.Name(), j.Step, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("install journal on %s: record %s: sync: %w", f.Name(), j.Step, err)
	}
	return nil
}

// Resumable reports whether the installer may continue on a disk that
// holds partitions or signatures: its journal is this payload's (manifest
// digest) for this host and shows an unfinished install whose partition
// table, once written, is still ours (not replaced since by someone's own
// partitions), or this very install finished (Install then leaves it
// alone). A journal of another payload or host, or a torn one, proves
// nothing about the disk: it is data like any other.
func Resumable(path, payload, host string) bool {
	j, ok, err := ReadJournal(path)
	switch {
	case err != nil || !ok:
		return false
	case j.Payload != payload || j.Host != host:
		return false
	case j.Step == StepDone:
		return true
	case !j.Completed(StepPartitioned):
		return true // nothing of ours to compare with yet
	}
	names, err := partitionNames(path)
	return err == nil && slices.Equal(names, []string{hostdisk.LabelESP, hostdisk.LabelOS, hostdisk.LabelZFS})
}

// ForeignJournal reports whether path holds an install journal that is not
// this payload's for this host (or is torn).
func ForeignJournal(path, payload, host string) bool {
	j, ok, err := ReadJournal(path)
	return err == nil && ok && (j.Payload != payload || j.Host != host)
}

// partitionNames reads the GPT partition names of a disk.
func partitionNames(path string) ([]string, error) {
	d, err := diskfs.Open(path, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	t, err := d.GetPartitionTable()
	if err != nil {
		return nil, err
	}
	gt, ok := t.(*gpt.Table)
	if !ok {
		return nil, fmt.Errorf("%s: not a GPT", path)
	}
	var names []string
	for _, p := range gt.Partitions {
		if p.Type != gpt.Unused {
			names = append(names, p.Name)
		}
	}
	return names, nil
}
