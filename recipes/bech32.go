package recipes

import (
	"errors"
	"strings"
)

const bech32Charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"

// bech32Decode checks a BIP-173 bech32 string with the expected
// human-readable part and returns its data as bytes (5-bit groups regrouped
// into 8). Nostr's npub keys use it (NIP-19).
func bech32Decode(s, hrp string) ([]byte, error) {
	if strings.ToLower(s) != s && strings.ToUpper(s) != s {
		return nil, errors.New("mixed upper and lower case")
	}
	s = strings.ToLower(s)
	sep := strings.LastIndexByte(s, '1')
	if sep < 1 || sep+7 > len(s) || len(s) > 90 {
		return nil, errors.New("malformed bech32")
	}
	if s[:sep] != hrp {
		return nil, errors.New("prefix is " + s[:sep] + ", want " + hrp)
	}
	values := make([]byte, 0, len(s)-sep-1)
	for _, c := range s[sep+1:] {
		v := strings.IndexRune(bech32Charset, c)
		if v < 0 {
			return nil, errors.New("invalid character " + string(c))
		}
		values = append(values, byte(v))
	}
	if bech32Polymod(append(hrpExpand(hrp), values...)) != 1 {
		return nil, errors.New("checksum does not match (a typo?)")
	}
	return regroup(values[:len(values)-6])
}

func hrpExpand(hrp string) []byte {
	out := make([]byte, 0, 2*len(hrp)+1)
	for i := 0; i < len(hrp); i++ {
		out = append(out, hrp[i]>>5)
	}
	out = append(out, 0)
	for i := 0; i < len(hrp); i++ {
		out = append(out, hrp[i]&31)
	}
	return out
}

func bech32Polymod(values []byte) uint32 {
	gen := [5]uint32{0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3}
	chk := uint32(1)
	for _, v := range values {
		top := chk >> 25
		chk = (chk&0x1ffffff)<<5 ^ uint32(v)
		for i := 0; i < 5; i++ {
			if (top>>i)&1 == 1 {
				chk ^= gen[i]
			}
		}
	}
	return chk
}

// regroup turns 5-bit groups into bytes; leftover bits must be zero padding.
func regroup(data []byte) ([]byte, error) {
	var acc, bits uint32
	var out []byte
	for _, v := range data {
		acc = acc<<5 | uint32(v)
		bits += 5
		for bits >= 8 {
			bits -= 8
			out = append(out, byte(acc>>bits))
		}
	}
	if bits >= 5 || acc&(1<<bits-1) != 0 {
		return nil, errors.New("bad padding")
	}
	return out, nil
}
