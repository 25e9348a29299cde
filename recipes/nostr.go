package recipes

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// NostrPubkeyHex returns a site's nostr owner key as the 64 lowercase hex
// digits relays use in their configuration, from either form the recipe
// accepts (npub1... or hex).
func NostrPubkeyHex(k string) (string, error) {
	if err := checkNostrPubkey(k); err != nil {
		return "", err
	}
	if !strings.HasPrefix(k, "npub1") {
		return k, nil
	}
	data, err := bech32Decode(k, "npub")
	if err != nil {
		return "", fmt.Errorf("%q is not a valid npub: %v", k, err)
	}
	return hex.EncodeToString(data), nil
}
