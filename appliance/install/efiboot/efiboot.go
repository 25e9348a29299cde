// Package efiboot registers an installed disk with the machine's UEFI
// firmware: a Boot#### load option for the bootloader on the disk's ESP,
// put first in BootOrder, written through the kernel's efivarfs.
//
// Why not rely on the removable-media path (EFI/BOOT/BOOTX64.EFI) alone:
// firmware that keeps its variables from the install run (every real
// machine, and OVMF with its variable store) boots from BootOrder and may
// never look at a disk that has no entry; it then stops in its shell once
// the stick is pulled. Installers such as Subiquity and Talos write an
// entry for the same reason. The removable path stays as a fallback.
//
// Formats are the UEFI specification's (2.10): §3.1.3 EFI_LOAD_OPTION,
// §10.3.5.1 the hard-drive media device path, §10.3.5.4 the file path.
package efiboot

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"

	"golang.org/x/sys/unix"
)

// VarsDir is where the kernel's efivarfs is mounted.
const VarsDir = "/sys/firmware/efi/efivars"

// globalVariable is EFI_GLOBAL_VARIABLE, the vendor GUID of Boot#### and
// BootOrder; efivarfs names a variable NAME-GUID.
const globalVariable = "8be4df61-93ca-11d2-aa0d-00e098032b8c"

// Variable attributes: non-volatile, boot-service and runtime access, the
// set every boot variable carries.
const attributes = 0x1 | 0x2 | 0x4

const loadOptionActive = 0x1

// Entry is one boot entry: a file on a GPT partition of a disk.
type Entry struct {
	Description string // shown in the firmware's boot menu
	// Partition is the ESP: its number in the GPT (1-based), its unique
	// partition GUID as text, and its first sector and size in the disk's
	// logical blocks.
	PartNumber uint32
	PartGUID   string
	PartStart  uint64
	PartSize   uint64
	// Loader is the bootloader's path on the ESP, e.g. \EFI\BOOT\BOOTX64.EFI.
	Loader string
}

// LoadOption encodes e as an EFI_LOAD_OPTION (active, no optional data).
func (e Entry) LoadOption() ([]byte, error) {
	guid, err := guidBytes(e.PartGUID)
	if err != nil {
		return nil, fmt.Errorf("partition %d: %w", e.PartNumber, err)
	}
	if e.Description == "" || !strings.HasPrefix(e.Loader, `\`) {
		return nil, fmt.Errorf("boot entry needs a description and a loader path starting with \\ (got %q, %q)", e.Description, e.Loader)
	}
	var dp bytes.Buffer
	// Hard drive media device path: type 4, subtype 1, 42 bytes.
	hd := struct {
		Type, SubType uint8
		Length        uint16
		Number        uint32
		Start, Size   uint64
		Signature     [16]byte
		Format        uint8 // 2: GPT
		SignatureType uint8 // 2: GUID
	}{4, 1, 42, e.PartNumber, e.PartStart, e.PartSize, guid, 2, 2}
	binary.Write(&dp, binary.LittleEndian, hd)
	// File path media device path: type 4, subtype 4, a NUL-ended UCS-2 path.
	path := ucs2(e.Loader)
	binary.Write(&dp, binary.LittleEndian, struct {
		Type, SubType uint8
		Length        uint16
	}{4, 4, uint16(4 + len(path))})
	dp.Write(path)
	// End of the device path.
	dp.Write([]byte{0x7f, 0xff, 4, 0})

	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint32(loadOptionActive))
	binary.Write(&b, binary.LittleEndian, uint16(dp.Len()))
	b.Write(ucs2(e.Description))
	b.Write(dp.Bytes())
	return b.Bytes(), nil
}

// Register writes e as a boot entry in the efivarfs at dir and puts it
// first in BootOrder, keeping every other entry in its order. An existing
// entry with the same load option is reused, so a re-run changes nothing
// twice. It returns the entry's number.
func Register(dir string, e Entry) (uint16, error) {
	option, err := e.LoadOption()
	if err != nil {
		return 0, err
	}
	entries, err := bootEntries(dir)
	if err != nil {
		return 0, err
	}
	num, found := uint16(0), false
	for n, data := range entries {
		if bytes.Equal(data, option) && (!found || n < num) {
			num, found = n, true
		}
	}
	if !found {
		for entries[num] != nil {
			if num == 0xffff {
				return 0, errors.New("no free Boot#### number")
			}
			num++
		}
		if err := writeVar(dir, fmt.Sprintf("Boot%04X", num), option); err != nil {
			return 0, err
		}
	}
	order, err := BootOrder(dir)
	if err != nil {
		return 0, err
	}
	want := append([]uint16{num}, slices.DeleteFunc(slices.Clone(order), func(n uint16) bool { return n == num })...)
	if slices.Equal(order, want) {
		return num, nil
	}
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, want)
	if err := writeVar(dir, "BootOrder", b.Bytes()); err != nil {
		return 0, err
	}
	return num, nil
}

// BootOrder reads the firmware's boot order; none set reads as empty.
func BootOrder(dir string) ([]uint16, error) {
	data, err := readVar(dir, "BootOrder")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(data)%2 != 0 {
		return nil, fmt.Errorf("BootOrder: %d bytes, not a list of 16-bit numbers", len(data))
	}
	order := make([]uint16, len(data)/2)
	binary.Read(bytes.NewReader(data), binary.LittleEndian, order)
	return order, nil
}

var bootVar = regexp.MustCompile(`^Boot([0-9A-F]{4})-` + globalVariable + `$`)

// bootEntries are the Boot#### variables' load options by number.
func bootEntries(dir string) (map[uint16][]byte, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("efivars: %w", err)
	}
	out := map[uint16][]byte{}
	for _, ent := range ents {
		m := bootVar.FindStringSubmatch(ent.Name())
		if m == nil {
			continue
		}
		n, _ := strconv.ParseUint(m[1], 16, 16)
		data, err := readVar(dir, "Boot"+m[1])
		if err != nil {
			return nil, err
		}
		out[uint16(n)] = data
	}
	return out, nil
}

// readVar is a variable's data without efivarfs's leading attributes.
func readVar(dir, name string) ([]byte, error) {
	p := filepath.Join(dir, name+"-"+globalVariable)
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("efivars: %w", err)
	}
	if len(data) < 4 {
		return nil, fmt.Errorf("efivars: %s: %d bytes, shorter than its attributes", p, len(data))
	}
	return data[4:], nil
}

// writeVar sets a variable: efivarfs takes the attributes and the data in
// one write. A variable the kernel marked immutable is made writable
// first (BootOrder and Boot#### normally are not).
func writeVar(dir, name string, data []byte) error {
	p := filepath.Join(dir, name+"-"+globalVariable)
	clearImmutable(p)
	buf := make([]byte, 4+len(data))
	binary.LittleEndian.PutUint32(buf, attributes)
	copy(buf[4:], data)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("efivars: %w", err)
	}
	if _, err := f.Write(buf); err != nil {
		f.Close()
		return fmt.Errorf("efivars: write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("efivars: write %s: %w", name, err)
	}
	return nil
}

// fsImmutable is linux/fs.h's FS_IMMUTABLE_FL (x/sys/unix does not name it).
const fsImmutable = 0x10

func clearImmutable(p string) {
	f, err := os.Open(p)
	if err != nil {
		return
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil || flags&fsImmutable == 0 {
		return
	}
	unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags&^fsImmutable))
}

// ucs2 is s as NUL-ended UTF-16LE.
func ucs2(s string) []byte {
	u := append(utf16.Encode([]rune(s)), 0)
	b := make([]byte, 2*len(u))
	for i, c := range u {
		binary.LittleEndian.PutUint16(b[2*i:], c)
	}
	return b
}

// guidBytes is a GUID's text in the firmware's byte order: the first three
// fields little-endian, the last two as written.
func guidBytes(s string) ([16]byte, error) {
	var g [16]byte
	parts := strings.Split(s, "-")
	if len(parts) != 5 || len(parts[0]) != 8 || len(parts[1]) != 4 || len(parts[2]) != 4 || len(parts[3]) != 4 || len(parts[4]) != 12 {
		return g, fmt.Errorf("GUID %q: want 8-4-4-4-12 hex digits", s)
	}
	var raw []byte
	for _, p := range parts {
		b, err := hex.DecodeString(p)
		if err != nil {
			return g, fmt.Errorf("GUID %q: %w", s, err)
		}
		raw = append(raw, b...)
	}
	slices.Reverse(raw[0:4])
	slices.Reverse(raw[4:6])
	slices.Reverse(raw[6:8])
	copy(g[:], raw)
	return g, nil
}
