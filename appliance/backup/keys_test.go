package backup

import (
	"strconv"
	"strings"
	"testing"

	"filippo.io/age"
)

// The restore-test identity is the deployment's own (the same secret gives
// the same key, another secret another), a valid age identity whose
// recipient decrypts what a backup encrypted to it alongside the owner's.
func TestRestoreTestIdentity(t *testing.T) {
	a, err := testKeys(t, "deployment secret").TestIdentity()
	if err != nil {
		t.Fatal(err)
	}
	again, _ := testKeys(t, "deployment secret").TestIdentity()
	other, _ := testKeys(t, "another deployment").TestIdentity()
	if a.String() != again.String() || a.String() == other.String() || !strings.HasPrefix(a.String(), "AGE-SECRET-KEY-1") {
		t.Fatalf("derived identities: same secret equal %v, other secret differs %v", a.String() == again.String(), a.String() != other.String())
	}
	// bech32 checked against age's own parser: a changed character fails.
	s := a.String()
	swap := byte('Q')
	if s[20] == 'Q' {
		swap = 'P'
	}
	bad := s[:20] + string(swap) + s[21:]
	if _, err := age.ParseX25519Identity(bad); err == nil {
		t.Error("a changed character still parses: the checksum is not checked")
	}
	owner, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	keys := testKeys(t, "deployment secret")
	dir := t.TempDir()
	m := Manifest{Deployment: "d", Project: "d", Created: t0, Recipients: []string{owner.Recipient().String(), a.Recipient().String()}}
	w, err := NewWriter(dir, m, keys, []age.Recipient{owner.Recipient(), a.Recipient()})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddReader(Item{File: "btcpay/db/db.sql.age", Kind: "dump", Instance: "btcpay"}, strings.NewReader("row")); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []*age.X25519Identity{owner, a} {
		if got := string(plain(t, dir, "btcpay/db/db.sql.age", id)); got != "row" {
			t.Errorf("decrypted %q", got)
		}
	}
	if _, err := VerifyWith(dir, VerifyOptions{Identities: []age.Identity{other}}); err == nil {
		t.Error("another deployment's derived identity decrypts the backup")
	}
}

// A volume's group cuts stay where the files caches written before one
// hasher served a whole listing put them (else the first backup after an
// update reads every volume whole): the path's keyed name's first 16 bits.
func TestPathCutsAsBefore(t *testing.T) {
	k := testKeys(t, "deployment secret")
	cuts := k.pathCuts()
	for _, rel := range []string{"", "a", "nextcloud/data/admin/files/photo.jpg", "ünïcode/名前", strings.Repeat("x/", 300)} {
		want, err := strconv.ParseUint(k.chunkName([]byte("group cut v1\x00" + rel))[:4], 16, 16)
		if err != nil {
			t.Fatal(err)
		}
		if got := cuts.of(rel); got != want {
			t.Errorf("cut hash of %q: %d, want %d", rel, got, want)
		}
	}
}
