package secrets

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// TestEnsure: the file is 0600 in a 0700 directory, values are 64 hex
// digits, distinct per name and per deployment, stable across runs, and a
// new name is added without touching the others.
func TestEnsure(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "secrets")
	a, err := Ensure(dir, "prod-mainnet", []string{"postgres", "ghost-mysql-example-com-en"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Ensure(dir, "demo-regtest", []string{"postgres"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(File(dir, "prod-mainnet"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("secrets file mode %v; want 0600", st.Mode().Perm())
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("secrets dir: %v %v; want mode 0700", st.Mode().Perm(), err)
	}
	pa, _ := a.Get("postgres")
	pb, _ := b.Get("postgres")
	g, _ := a.Get("ghost-mysql-example-com-en")
	if len(pa) != 2*ValueBytes || strings.Trim(pa, "0123456789abcdef") != "" {
		t.Errorf("value %d chars, want %d hex digits", len(pa), 2*ValueBytes)
	}
	if pa == pb || pa == g {
		t.Error("two secrets have the same value")
	}

	again, err := Ensure(dir, "prod-mainnet", []string{"postgres", "bitcoind-rpc"})
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := again.Get("postgres"); v != pa {
		t.Error("postgres changed on a second Ensure")
	}
	if v, _ := again.Get("ghost-mysql-example-com-en"); v != g {
		t.Error("a name not asked for again was dropped or changed")
	}
	if v, ok := again.Get("bitcoind-rpc"); !ok || v == pa {
		t.Error("new name bitcoind-rpc not generated")
	}
	if got := again.Names(); strings.Join(got, ",") != "bitcoind-rpc,ghost-mysql-example-com-en,postgres" {
		t.Errorf("names %v", got)
	}
	// Nothing else is left in the directory (no temp files).
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".secrets") && !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("stray file %s", e.Name())
		}
	}
}

// TestEnsureConcurrent: two runs at once agree on every value.
func TestEnsureConcurrent(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	got := make([]Set, 8)
	for i := range got {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := Ensure(dir, "d", []string{"a", "b"})
			if err != nil {
				t.Error(err)
			}
			got[i] = s
		}(i)
	}
	wg.Wait()
	for _, s := range got[1:] {
		for _, n := range []string{"a", "b"} {
			x, _ := s.Get(n)
			y, _ := got[0].Get(n)
			if x != y {
				t.Fatalf("concurrent Ensure gave two values for %s", n)
			}
		}
	}
}

// TestNeverPrinted: no way of printing a Set shows a value.
func TestNeverPrinted(t *testing.T) {
	s, err := Ensure(t.TempDir(), "prod-mainnet", []string{"postgres"})
	if err != nil {
		t.Fatal(err)
	}
	v, _ := s.Get("postgres")
	js, _ := json.Marshal(map[string]any{"set": s})
	for _, out := range []string{
		fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %q %x", s, s, s, s, s, s), fmt.Sprintf("%v", &s), s.String(), s.GoString(), string(js),
		fmt.Errorf("wrapped: %v", s).Error(),
	} {
		if strings.Contains(out, v) || strings.Contains(out, fmt.Sprintf("%x", v)) {
			t.Fatalf("value printed in %q", out)
		}
		if !strings.Contains(out, "redacted") {
			t.Errorf("%q does not say it is redacted", out)
		}
	}
	if got := s.Redact("password=" + v + ";"); got != "password=<secret postgres>;" {
		t.Errorf("Redact: %q", got)
	}
}

// TestBadInput: bad names and a damaged file are errors that name the line
// but never a value.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	if _, err := Ensure(dir, "../etc", nil); err == nil {
		t.Error("deployment ../etc accepted")
	}
	if _, err := Ensure(dir, "d", []string{"Bad Name"}); err == nil {
		t.Error("secret name with a space accepted")
	}
	if err := os.WriteFile(File(dir, "d"), []byte("# c\nok=1\ntopsecretvalue\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Ensure(dir, "d", []string{"ok"})
	if err == nil || !strings.Contains(err.Error(), "d.secrets:3:") || strings.Contains(err.Error(), "topsecretvalue") {
		t.Fatalf("damaged file: %v; want file:3 without the line's text", err)
	}
}

// TestLooseModeFixed: a file someone made world-readable is made 0600 again.
func TestLooseModeFixed(t *testing.T) {
	dir := t.TempDir()
	if _, err := Ensure(dir, "d", []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(File(dir, "d"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Ensure(dir, "d", []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(File(dir, "d")); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v after Ensure; want 0600", st.Mode().Perm())
	}
}

// A sealed set opens only with the key of the same cluster secret and for
// the same deployment, and holds none of its values in clear.
func TestSealOpensOnlyWithItsClusterSecret(t *testing.T) {
	key, err := DeriveKey([]byte("0123456789abcdef0123456789abcdef"), "demo")
	if err != nil {
		t.Fatal(err)
	}
	set, _, err := New("demo-regtest", nil).WithNames([]string{"db-password", "admin-password"})
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := Seal(key, set)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range set.Names() {
		v, _ := set.Get(n)
		if strings.Contains(string(sealed), v) || strings.Contains(string(sealed), n) {
			t.Errorf("the sealed set holds %s (its name or value) in clear", n)
		}
	}
	got, err := Open(key, "demo-regtest", sealed)
	if err != nil || got.Digest() != set.Digest() {
		t.Fatalf("open with the same key: %v (digests equal: %v)", err, got.Digest() == set.Digest())
	}
	other, _ := DeriveKey([]byte("another secret of 32 characters!"), "demo")
	otherCluster, _ := DeriveKey([]byte("0123456789abcdef0123456789abcdef"), "prod")
	for what, try := range map[string]func() error{
		"another cluster secret": func() error { _, err := Open(other, "demo-regtest", sealed); return err },
		"another cluster name":   func() error { _, err := Open(otherCluster, "demo-regtest", sealed); return err },
		"another deployment":     func() error { _, err := Open(key, "prod-mainnet", sealed); return err },
		"one byte altered": func() error {
			bad := bytes.Clone(sealed)
			bad[len(bad)-1] ^= 1
			_, err := Open(key, "demo-regtest", bad)
			return err
		},
	} {
		err := try()
		if !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), "cluster secret") {
			t.Errorf("%s: %v; want ErrWrongKey saying the cluster secret", what, err)
		}
	}
	if s := fmt.Sprintf("%v %+v %#v %s", key, key, key, key); strings.Contains(s, string(key.k)) || !strings.Contains(s, "redacted") {
		t.Errorf("a printed key shows more than redacted: %q", s)
	}
}

// Merge keeps the values a set has: they are what the databases hold.
func TestMergeKeepsExistingValues(t *testing.T) {
	have := New("d", map[string]string{"a": "1", "b": "2"})
	got, added, differing := have.Merge(New("d", map[string]string{"b": "x", "c": "3"}))
	if v, _ := got.Get("b"); v != "2" || !slices.Equal(added, []string{"c"}) || !slices.Equal(differing, []string{"b"}) {
		t.Errorf("merge: b=%q added %v differing %v", v, added, differing)
	}
}

// The data key opens only with the KEK it was wrapped under, for the same
// cluster; the KEK's fingerprint is neither the KEK nor the secret, and the
// KEK is derived apart from the sealing key of DeriveKey. Sets sealed under
// the data key carry its version and do not open with a derived key.
func TestDataKeyWrapsUnderItsKEK(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	kek, err := DeriveKEK(secret, "demo")
	if err != nil {
		t.Fatal(err)
	}
	derived, _ := DeriveKey(secret, "demo")
	if bytes.Equal(kek.k, derived.k) {
		t.Fatal("the KEK equals the derived sealing key")
	}
	fp := kek.Fingerprint()
	if len(fp) != 64 || strings.Contains(fp, hex.EncodeToString(kek.k)) || strings.Contains(fp, string(secret)) {
		t.Errorf("fingerprint %q shows the KEK or the secret", fp)
	}
	dk, err := NewDataKey()
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := Wrap(kek, "demo", dk)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(wrapped, dk.k) {
		t.Error("the wrapping holds the data key in clear")
	}
	got, err := Unwrap(kek, "demo", wrapped)
	if err != nil || !bytes.Equal(got.k, dk.k) {
		t.Fatalf("unwrap with the same KEK: %v", err)
	}
	other, _ := DeriveKEK([]byte("another secret of 32 characters!"), "demo")
	otherCluster, _ := DeriveKEK(secret, "prod")
	bad := bytes.Clone(wrapped)
	bad[len(bad)-1] ^= 1
	for what, try := range map[string]func() error{
		"another cluster secret": func() error { _, err := Unwrap(other, "demo", wrapped); return err },
		"another cluster":        func() error { _, err := Unwrap(otherCluster, "demo", wrapped); return err },
		"the same KEK, another cluster name": func() error {
			_, err := Unwrap(kek, "prod", wrapped)
			return err
		},
		"one byte altered": func() error { _, err := Unwrap(kek, "demo", bad); return err },
	} {
		if err := try(); !errors.Is(err, ErrWrongKEK) {
			t.Errorf("%s: %v; want ErrWrongKEK", what, err)
		}
	}
	parsed, err := ParseKEK(kek.Hex())
	if err != nil || parsed.Fingerprint() != fp {
		t.Errorf("ParseKEK(Hex()): %v", err)
	}
	set, _, _ := New("demo-regtest", nil).WithNames([]string{"db-password"})
	sealed, err := Seal(dk, set)
	if err != nil || SealVersion(sealed) != SealDataKey {
		t.Fatalf("seal under the data key: version %d, %v", SealVersion(sealed), err)
	}
	if _, err := Open(derived, "demo-regtest", sealed); err == nil {
		t.Error("a set sealed under the data key opens with the derived key")
	}
	if o, err := Open(dk, "demo-regtest", sealed); err != nil || o.Digest() != set.Digest() {
		t.Errorf("open under the data key: %v", err)
	}
	for _, v := range []any{kek, dk} {
		if s := fmt.Sprintf("%v %+v %#v %s", v, v, v, v); !strings.Contains(s, "redacted") ||
			strings.Contains(s, hex.EncodeToString(kek.k)) || strings.Contains(s, hex.EncodeToString(dk.k)) {
			t.Errorf("a printed key shows more than redacted: %q", s)
		}
	}
}
