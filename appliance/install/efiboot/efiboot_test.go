package efiboot

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

var esp = Entry{Description: "Sovereign Stack (demo1)", PartNumber: 1,
	PartGUID: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", PartStart: 2048, PartSize: 1048576,
	Loader: `\EFI\BOOT\BOOTX64.EFI`}

// The GUID's bytes as GPT stores them on disk (the ESP type GUID, whose
// on-disk form every partitioning tool agrees on), the same mixed-endian
// form the device path uses.
func TestGUIDBytesAreTheFirmwareOrder(t *testing.T) {
	g, err := guidBytes("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(g[:]); got != "28732ac11ff8d211ba4b00a0c93ec93b" {
		t.Errorf("GUID bytes %s", got)
	}
	if _, err := guidBytes("not-a-guid"); err == nil {
		t.Error("a malformed GUID was accepted")
	}
}

func TestLoadOptionLayout(t *testing.T) {
	opt, err := esp.LoadOption()
	if err != nil {
		t.Fatal(err)
	}
	if attr := binary.LittleEndian.Uint32(opt); attr != loadOptionActive {
		t.Errorf("attributes %#x, want active", attr)
	}
	desc := ucs2(esp.Description)
	if !bytes.Equal(opt[6:6+len(desc)], desc) {
		t.Errorf("description not at offset 6 as NUL-ended UTF-16")
	}
	dp := opt[6+len(desc):]
	if n := int(binary.LittleEndian.Uint16(opt[4:])); n != len(dp) {
		t.Fatalf("FilePathListLength %d, device path is %d bytes", n, len(dp))
	}
	// Walk the nodes by their own lengths: HD, file path, end.
	var nodes [][]byte
	for len(dp) >= 4 {
		n := int(binary.LittleEndian.Uint16(dp[2:]))
		if n < 4 || n > len(dp) {
			t.Fatalf("node length %d with %d bytes left", n, len(dp))
		}
		nodes = append(nodes, dp[:n])
		dp = dp[n:]
	}
	if len(nodes) != 3 || len(dp) != 0 {
		t.Fatalf("%d nodes and %d stray bytes, want HD, file, end", len(nodes), len(dp))
	}
	hd, file, end := nodes[0], nodes[1], nodes[2]
	if hd[0] != 4 || hd[1] != 1 || len(hd) != 42 || binary.LittleEndian.Uint32(hd[4:]) != 1 ||
		binary.LittleEndian.Uint64(hd[8:]) != 2048 || binary.LittleEndian.Uint64(hd[16:]) != 1048576 ||
		hex.EncodeToString(hd[24:40]) != "28732ac11ff8d211ba4b00a0c93ec93b" || hd[40] != 2 || hd[41] != 2 {
		t.Errorf("hard drive node % x", hd)
	}
	if file[0] != 4 || file[1] != 4 || !bytes.Equal(file[4:], ucs2(`\EFI\BOOT\BOOTX64.EFI`)) {
		t.Errorf("file path node % x", file)
	}
	if !bytes.Equal(end, []byte{0x7f, 0xff, 4, 0}) {
		t.Errorf("end node % x", end)
	}
}

// Register against a folder laid out as efivarfs (NAME-GUID files with
// the attributes first): the firmware's own entries keep their order after
// ours, and a second run finds its entry and changes nothing.
func TestRegisterPutsTheDiskFirstOnce(t *testing.T) {
	dir := t.TempDir()
	put := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name+"-"+globalVariable), append([]byte{7, 0, 0, 0}, data...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	put("Boot0000", []byte("the firmware's UEFI shell"))
	put("Boot0002", []byte("the USB stick"))
	put("BootOrder", []byte{2, 0, 0, 0})

	n, err := Register(dir, esp)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("entry Boot%04X, want the first free number Boot0001", n)
	}
	if order, _ := BootOrder(dir); !slices.Equal(order, []uint16{1, 2, 0}) {
		t.Errorf("BootOrder %v, want [1 2 0]", order)
	}
	got, err := os.ReadFile(filepath.Join(dir, "Boot0001-"+globalVariable))
	if err != nil {
		t.Fatal(err)
	}
	opt, _ := esp.LoadOption()
	if !bytes.Equal(got, append([]byte{7, 0, 0, 0}, opt...)) {
		t.Error("Boot0001 is not the attributes followed by the load option")
	}

	before := snapshot(t, dir)
	if n2, err := Register(dir, esp); err != nil || n2 != 1 {
		t.Fatalf("second run: Boot%04X, %v", n2, err)
	}
	if after := snapshot(t, dir); !maps.Equal(before, after) {
		t.Error("a second run changed the variables")
	}
}

func TestRegisterRefusesABadEntry(t *testing.T) {
	dir := t.TempDir()
	bad := esp
	bad.Loader = "EFI/BOOT/BOOTX64.EFI"
	if _, err := Register(dir, bad); err == nil {
		t.Error("a loader path without a leading backslash was accepted")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("a refused entry wrote %d variables", len(ents))
	}
}

func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		m[e.Name()] = string(b)
	}
	return m
}
