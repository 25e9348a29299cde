package recipes

import (
	"fmt"
	"net"
	"strings"
)

// MAC is a unicast Ethernet address, kept in lower-case colon form.
type MAC string

// UnmarshalText accepts 00:16:3e:aa:bb:cc and 00-16-3E-AA-BB-CC.
func (m *MAC) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "" {
		*m = ""
		return nil
	}
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("%q is not a MAC address (six hex pairs, like 00:16:3e:12:34:56)", s)
	}
	if hw[0]&1 == 1 {
		return fmt.Errorf("%q is a multicast address; a NIC needs a unicast MAC (first byte even)", s)
	}
	*m = MAC(hw.String())
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m), nil }
