package recipes

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a number of bytes, written with a unit: 512MiB, 50GiB, 4GB, 1TiB.
// Binary (KiB, MiB, GiB, TiB) and decimal (KB, MB, GB, TB) units are
// accepted. A bare number is refused: memory: 4096 could mean MiB as well
// as bytes, and reading it as bytes would silently give 4KiB.
type Size uint64

// Byte multiples.
const (
	KiB Size = 1 << (10 * (iota + 1))
	MiB
	GiB
	TiB
)

var sizeUnits = []struct {
	suffix string
	mult   uint64
}{
	// Longest suffixes first so "GiB" is not read as "B".
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"B", 1},
}

const sizeHelp = "a size like 512MiB, 50GiB or 2TB"

// ParseSize reads a size with a unit.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	mult := uint64(0)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			mult, t = u.mult, strings.TrimSpace(strings.TrimSuffix(t, u.suffix))
			break
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || t == "" || strings.ContainsAny(t, "eExXpP_") || n < 0 || math.IsNaN(n) {
		return 0, fmt.Errorf("%q is not %s", s, sizeHelp)
	}
	if mult == 0 {
		return 0, fmt.Errorf("%q has no unit; write one, like %sMiB or %sGiB (%sB for bytes)", s, t, t, t)
	}
	bytes := n * float64(mult)
	if bytes >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	if bytes != math.Trunc(bytes) {
		return 0, fmt.Errorf("%q is not a whole number of bytes", s)
	}
	return Size(bytes), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (z *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*z = v
	return nil
}

// MarshalText writes the largest binary unit that divides the size evenly.
func (z Size) MarshalText() ([]byte, error) { return []byte(z.String()), nil }

func (z Size) String() string {
	for _, u := range []struct {
		suffix string
		mult   Size
	}{{"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB}} {
		if z >= u.mult && z%u.mult == 0 {
			return fmt.Sprintf("%d%s", z/u.mult, u.suffix)
		}
	}
	return fmt.Sprintf("%dB", uint64(z))
}
