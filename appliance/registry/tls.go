package registry

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
)

// PinnedTLS returns the node-to-node TLS of a registry whose nodes trust
// exactly the given certificates, by SHA-256 fingerprint, in both
// directions: each node presents cert and accepts a peer only if the
// peer's certificate is pinned. Names, CAs and expiry are not checked; the
// pin is the trust, as in the appliance's join protocol.
//
// The natural choice is LXD's cluster certificate (cluster.crt/.key), which
// every member holds once it has joined the LXD cluster: pin it alone and
// any member can run a registry node, and no one else.
func PinnedTLS(cert tls.Certificate, trusted ...*x509.Certificate) *TLS {
	pins := map[string]bool{}
	for _, c := range trusted {
		pins[Fingerprint(c.Raw)] = true
	}
	verify := func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		if len(rawCerts) == 0 {
			return errors.New("registry: peer presented no certificate")
		}
		if fp := Fingerprint(rawCerts[0]); !pins[fp] {
			return fmt.Errorf("registry: peer certificate %s is not pinned", fp)
		}
		return nil
	}
	listen := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert, // verified by the pin below
		// go-dqlite's proxy takes a config with ClientCAs for the server
		// side of a connection and one without for the client side.
		ClientCAs:             x509.NewCertPool(),
		VerifyPeerCertificate: verify,
	}
	dial := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// The chain and name checks are replaced by the pin, not dropped.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: verify,
	}
	return &TLS{Listen: listen, Dial: dial}
}

// Fingerprint is the SHA-256 of a DER certificate, in lower-case hex: the
// form Host.Fingerprint holds and `lxc config trust list` shows.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}
