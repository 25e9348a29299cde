package cluster

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/handoff/config"
)

// RotatePath is where a member takes a new cluster secret: after the usual
// hello and challenge (the member proves the current secret), a member of
// the cluster POSTs a RotateRequest carrying the new secret sealed under a
// key derived from the current one; the member writes it to its secret
// file, uses it from then on, and proves that with a MAC under the new
// key. From then on a proof made with the old secret no longer verifies
// there: old sticks stop working.
const RotatePath = "/ssbuild/v2/rotate"

// RotateRequest hands a member the new secret.
type RotateRequest struct {
	Version        int    `json:"version"`
	Cluster        string `json:"cluster"`
	Name           string `json:"name"`        // the requesting member
	Fingerprint    string `json:"fingerprint"` // its LXD server certificate's
	JoinerNonce    string `json:"joinerNonce"`
	InitiatorNonce string `json:"initiatorNonce"`
	Sealed         string `json:"sealed"` // hex: AES-256-GCM nonce and sealed new secret
	MAC            string `json:"mac"`    // under the current secret's key
}

// RotateResponse proves the member now holds the new secret.
type RotateResponse struct {
	Fingerprint string `json:"fingerprint"`
	MAC         string `json:"mac"` // under the new secret's key
}

func (r *RotateRequest) macFields(memberFP string) []string {
	return []string{"ssbuild rotate request v2", fmt.Sprint(r.Version), r.Cluster, r.Name, r.Fingerprint,
		r.JoinerNonce, r.InitiatorNonce, r.Sealed, memberFP}
}

func rotateResponseFields(req *RotateRequest, resp *RotateResponse) []string {
	return []string{"ssbuild rotate response v2", req.Cluster, req.Name, req.JoinerNonce, req.InitiatorNonce, resp.Fingerprint}
}

// sealKey is the AES key for one rotation message: bound to the current
// secret, both nonces and the member's certificate.
func sealKey(k key, req *RotateRequest, memberFP string) []byte {
	return k.mac("ssbuild rotate seal v2", req.Cluster, req.JoinerNonce, req.InitiatorNonce, memberFP)
}

func seal(k key, req *RotateRequest, memberFP string, secret []byte) (string, error) {
	block, err := aes.NewCipher(sealKey(k, req, memberFP))
	if err != nil {
		return "", err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return hex.EncodeToString(gcm.Seal(nonce, nonce, secret, []byte(req.Name))), nil
}

func unseal(k key, req *RotateRequest, memberFP string) ([]byte, error) {
	raw, err := hex.DecodeString(req.Sealed)
	if err != nil {
		return nil, errors.New("sealed secret is not hex")
	}
	block, err := aes.NewCipher(sealKey(k, req, memberFP))
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	if len(raw) < gcm.NonceSize() {
		return nil, errors.New("sealed secret too short")
	}
	return gcm.Open(nil, raw[:gcm.NonceSize()], raw[gcm.NonceSize():], []byte(req.Name))
}

// maxSecretBytes is the longest secret config.ReadSecret takes.
const maxSecretBytes = 4096

// rotate takes a new secret from a member that proved the current one.
func (g *registrar) rotate(w http.ResponseWriter, r *http.Request, from netip.Addr, now time.Time) (_ *RotateResponse, proved bool, _ *refusal) {
	s := g.s
	req := &RotateRequest{}
	if ref := readJSON(w, r, req, "rotate request"); ref != nil {
		return nil, false, ref
	}
	switch {
	case req.Version != ProtocolVersion:
		return nil, false, &refusal{400, fmt.Sprintf("protocol version %d, want %d", req.Version, ProtocolVersion)}
	case req.Cluster != s.cfg.Cluster.Name:
		return nil, false, &refusal{400, "request for another cluster"}
	case !nameRe.MatchString(req.Name), !hex64.MatchString(req.Fingerprint), !hex64.MatchString(req.MAC),
		!hex64.MatchString(req.JoinerNonce), !hex64.MatchString(req.InitiatorNonce), len(req.Sealed) > 2*(maxSecretBytes+64):
		return nil, false, &refusal{400, "malformed rotate request"}
	}
	fresh := g.challenges.take(req.InitiatorNonce, req.JoinerNonce, from, now)
	g.mu.Lock() // no token is issued under a key being replaced
	defer g.mu.Unlock()
	old := s.currentKey()
	if !verifyMAC(old, req.macFields(s.fp), req.MAC) {
		return nil, false, &refusal{http.StatusUnauthorized, "proof does not verify: wrong cluster secret or altered request"}
	}
	if !fresh {
		return nil, false, &refusal{http.StatusUnauthorized, "replayed or expired request: start again with a new hello"}
	}
	if addr, ok := s.memberAddress(req.Name); !ok || addr != from {
		return nil, true, &refusal{http.StatusForbidden, fmt.Sprintf("%s is not a member at %s: only a member rotates the secret", req.Name, from)}
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || Fingerprint(r.TLS.PeerCertificates[0]) != req.Fingerprint {
		return nil, true, &refusal{http.StatusUnauthorized, "TLS client certificate does not match the fingerprint in the proof"}
	}
	secret, err := unseal(old, req, s.fp)
	if err != nil || len(secret) < config.MinSecretLength || len(secret) > maxSecretBytes {
		return nil, true, &refusal{http.StatusBadRequest, "the sealed secret does not open or is not a valid secret"}
	}
	if err := s.writeSecret(secret); err != nil {
		s.log.Info("%s: rotate: %v", s.cfg.Host.Name, err)
		return nil, true, &refusal{http.StatusServiceUnavailable, "cannot store the new secret: retry"}
	}
	nk := deriveKey(secret, s.cfg.Cluster.Name)
	s.keyMu.Lock()
	s.key = nk
	s.keyMu.Unlock()
	s.log.Info("%s: cluster secret replaced (asked by %s): proofs made with the old one no longer verify", s.cfg.Host.Name, req.Name)
	resp := &RotateResponse{Fingerprint: s.fp}
	resp.MAC = hex.EncodeToString(nk.mac(rotateResponseFields(req, resp)...))
	return resp, true, nil
}

// memberAddress is the address of a member: listed in this host's recipe,
// or an LXD member (added by a later revision).
func (s *Service) memberAddress(name string) (netip.Addr, bool) {
	members, err := s.o.LXD.GetClusterMembers()
	if err != nil {
		return netip.Addr{}, false
	}
	for _, m := range members {
		if m.ServerName != name {
			continue
		}
		if u, err := url.Parse(m.URL); err == nil {
			if a, err := netip.ParseAddr(u.Hostname()); err == nil {
				return a, true
			}
		}
		if c, ok := s.cfg.Cluster.Member(name); ok {
			a, err := netip.ParseAddr(c.Address)
			return a, err == nil
		}
	}
	return netip.Addr{}, false
}

// writeSecret replaces the secret file atomically (0600, as ReadSecret
// wants it); a crash leaves the old or the new one.
func (s *Service) writeSecret(secret []byte) error {
	path := s.cfg.SecretFile
	if path == "" {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".secret-*")
	if err != nil {
		return fmt.Errorf("new secret: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err == nil {
		if _, err = tmp.Write(secret); err == nil {
			err = tmp.Sync()
		}
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("new secret %s: %w", path, err)
	}
	return nil
}

// RotateOptions say which member rotates the secret, and to what.
type RotateOptions struct {
	Config    *config.Appliance  // the member's appliance.yaml
	Secret    []byte             // the current secret
	NewSecret []byte             // the secret every member takes
	LXD       lxd.InstanceServer // the member's LXD: who the members are
	LXDDir    string             // its server.crt and server.key
	// Dial connects to the other members (default a net.Dialer).
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// RotateResult is what one member did with the new secret.
type RotateResult struct {
	Host string
	Err  error // nil: it holds the new secret now
}

// RotateSecret hands the new secret to every member (LXD's members, and
// the hosts this member's recipe lists) through its registration endpoint,
// this member's own included; each proves the current secret before it
// gets the new one sealed, and proves the new one after. A member that is
// down keeps the old secret: the error names every member that did not
// take it, and the results say why. The secrets are never printed.
func RotateSecret(ctx context.Context, o RotateOptions) ([]RotateResult, error) {
	if len(o.NewSecret) < config.MinSecretLength || len(o.NewSecret) > maxSecretBytes {
		return nil, fmt.Errorf("cluster: new secret: want %d to %d bytes", config.MinSecretLength, maxSecretBytes)
	}
	s, err := New(Options{Host: Host{Config: o.Config, Secret: o.Secret, LXD: o.LXD, LXDDir: o.LXDDir}, Dial: o.Dial})
	if err != nil {
		return nil, err
	}
	targets := map[string]string{}
	var names []string
	add := func(name, addr string) {
		if _, ok := targets[name]; !ok && addr != "" {
			targets[name] = addr
			names = append(names, name)
		}
	}
	members, err := o.LXD.GetClusterMembers()
	if err != nil {
		return nil, fmt.Errorf("cluster: list members (GET /1.0/cluster/members): %w", err)
	}
	for _, m := range members {
		if u, err := url.Parse(m.URL); err == nil {
			add(m.ServerName, u.Hostname())
		}
	}
	for _, m := range o.Config.Cluster.Members {
		add(m.Name, m.Address)
	}
	slices.Sort(names)
	nk := deriveKey(o.NewSecret, o.Config.Cluster.Name)
	var results []RotateResult
	var failed []string
	for _, name := range names {
		err := s.rotateOne(ctx, s.registrationAddress(targets[name]), o.NewSecret, nk)
		if err != nil {
			failed = append(failed, name)
		}
		results = append(results, RotateResult{Host: name, Err: err})
	}
	if len(failed) > 0 {
		return results, fmt.Errorf("cluster: %d of %d hosts did not take the new secret: %s", len(failed), len(names), strings.Join(failed, ", "))
	}
	return results, nil
}

// rotateOne hands one member the new secret.
func (s *Service) rotateOne(ctx context.Context, addr string, secret []byte, newKey key) error {
	client := s.registrationClient()
	old := s.currentKey()
	hello, err := newHello(s.cfg.Cluster.Name)
	if err != nil {
		return err
	}
	var ch Challenge
	peerFP, err := s.post(ctx, client, "https://"+addr+ChallengePath, hello, &ch)
	if err != nil {
		return err
	}
	if ch.Version != ProtocolVersion || !verifyMAC(old, challengeFields(s.cfg.Cluster.Name, hello.Nonce, ch.Nonce, peerFP), ch.MAC) {
		if verifyMAC(newKey, challengeFields(s.cfg.Cluster.Name, hello.Nonce, ch.Nonce, peerFP), ch.MAC) {
			return nil // it holds the new secret already (a re-run)
		}
		return errors.New("it does not prove the current secret: it holds another one (an older one, if it was down at an earlier rotation)")
	}
	req := &RotateRequest{Version: ProtocolVersion, Cluster: s.cfg.Cluster.Name, Name: s.cfg.Host.Name, Fingerprint: s.fp,
		JoinerNonce: hello.Nonce, InitiatorNonce: ch.Nonce}
	if req.Sealed, err = seal(old, req, peerFP, secret); err != nil {
		return fmt.Errorf("seal the new secret: %w", err)
	}
	req.MAC = hex.EncodeToString(old.mac(req.macFields(peerFP)...))
	var resp RotateResponse
	fp, err := s.post(ctx, client, "https://"+addr+RotatePath, req, &resp)
	if err != nil {
		return err
	}
	if fp != peerFP || resp.Fingerprint != peerFP || !verifyMAC(newKey, rotateResponseFields(req, &resp), resp.MAC) {
		return errors.New("its answer does not prove the new secret")
	}
	return nil
}
