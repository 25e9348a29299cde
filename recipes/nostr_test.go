package recipes

import "testing"

// TestNostrPubkeyHex: the npub of the default recipe and the hex of the
// demo recipe are one key; both forms give the same hex.
func TestNostrPubkeyHex(t *testing.T) {
	const hexKey = "0ae90d42f0c168b0e5aa78dd870388e05e89d6d7403bd5ae6ddc4b144798540b"
	for _, k := range []string{"npub1pt5s6shsc95tped20rwcwqugup0gn4khgqaattndm393g3uc2s9svzv06y", hexKey} {
		got, err := NostrPubkeyHex(k)
		if err != nil || got != hexKey {
			t.Errorf("NostrPubkeyHex(%s) = %q, %v; want %s", k, got, err, hexKey)
		}
	}
	if _, err := NostrPubkeyHex("npub1xyz"); err == nil {
		t.Error("bad npub accepted")
	}
}
