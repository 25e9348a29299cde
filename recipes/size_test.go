package recipes

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]Size{
		"512MiB": 512 * MiB, "50GiB": 50 * GiB, "2TB": 2_000_000_000_000, "1.5GiB": 1536 * MiB,
		"4096B": 4096, "10 GB": 10_000_000_000, "1TiB": TiB, "64KiB": 64 * KiB, "3MB": 3_000_000,
	} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "GiB", "-1GiB", "1e3GB", "0x10MiB", "ten", "1.5B", "1_000", "4096", "0", "NaN", "99999999999TiB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

func TestSizeString(t *testing.T) {
	for z, want := range map[Size]string{512 * MiB: "512MiB", 50 * GiB: "50GiB", 1536 * MiB: "1536MiB", 1000: "1000B", 2 * TiB: "2TiB", 0: "0B"} {
		if got := z.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", uint64(z), got, want)
		}
	}
}

func TestMACIsNormalised(t *testing.T) {
	var m MAC
	if err := m.UnmarshalText([]byte("02-5E-00-AB-CD-EF")); err != nil || m != "02:5e:00:ab:cd:ef" {
		t.Fatalf("MAC = %q, %v", m, err)
	}
	if err := m.UnmarshalText([]byte("02:5e:00:ab:cd:ef:01:02")); err == nil {
		t.Error("an 8-byte address was accepted")
	}
}
