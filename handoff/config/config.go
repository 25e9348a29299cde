// Package config reads /etc/ssbuild/appliance.yaml, the file the installer
// writes on every host: who this host is, the cluster it belongs to (name,
// initiator, members, storage, networks), where its secret file lives and
// where the first-boot service keeps its state and, on the initiator, what
// it deploys once the cluster has formed. The secret itself is never
// in this file: ReadSecret reads it from a 0600 file and refuses anything
// group or world readable.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// DefaultPath is where the installer writes the file on a host.
const DefaultPath = "/etc/ssbuild/appliance.yaml"

// DefaultRegistrationPort is the initiator's registration endpoint port when
// the file names none (the recipe's default too).
const DefaultRegistrationPort = 9443

// DefaultRegistryPort is where every host's registry (dqlite) node listens
// when the file names no port: next to the registration endpoint's.
const DefaultRegistryPort = 9444

// Where the installer puts what the hosts deploy (the deploy section).
const (
	DefaultRecipePath = "/etc/ssbuild/recipe.yaml"    // on every host
	DefaultImageDir   = "/var/lib/ssbuild/base-image" // the initiator's, when the stick carries one
)

// Appliance is the content of appliance.yaml.
type Appliance struct {
	Host       Host    `yaml:"host"`
	Cluster    Cluster `yaml:"cluster"`
	SecretFile string  `yaml:"secretFile"` // absolute path of the 0600 file holding the cluster secret
	StateDir   string  `yaml:"stateDir"`   // where the service keeps its state (0700)
	// Deploy is what this host deploys once the cluster has formed; nil:
	// it never deploys. The installer gives every host one: the member
	// holding the registry's deploy lease deploys.
	Deploy *Deploy `yaml:"deploy,omitempty"`

	// File is where it was read from, for messages.
	File string `yaml:"-"`
}

// Host is the host this file is on.
type Host struct {
	Name    string `yaml:"name"`    // also its LXD cluster member name
	Address string `yaml:"address"` // IPv4 or IPv6 address other hosts reach it on (no prefix)
}

// Cluster is what every host knows about the cluster.
type Cluster struct {
	Name             string    `yaml:"name"`
	Initiator        string    `yaml:"initiator"`        // name of the host that bootstraps the cluster
	InitiatorAddress string    `yaml:"initiatorAddress"` // where joiners reach its registration endpoint
	RegistrationPort int       `yaml:"registrationPort"` // default DefaultRegistrationPort
	RegistryPort     int       `yaml:"registryPort"`     // every host's registry node; default DefaultRegistryPort
	Members          []Member  `yaml:"members"`          // every host of the cluster, the initiator included
	Storage          Storage   `yaml:"storage"`
	Networks         []Network `yaml:"networks"`
}

// Member is one host allowed in the cluster.
type Member struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
}

// Storage is the cluster's storage pool and this host's source for it.
type Storage struct {
	Pool   string `yaml:"pool"`
	Driver string `yaml:"driver"` // zfs, btrfs or dir
	Source string `yaml:"source"` // this host's block device or directory; empty lets LXD choose
}

// Network is one LXD network.
type Network struct {
	Name   string `yaml:"name"`
	Type   string `yaml:"type"`   // bridge or macvlan
	IPv4   string `yaml:"ipv4"`   // bridge address with prefix, auto or none
	Parent string `yaml:"parent"` // host interface of a macvlan network
}

// Deploy says what the first-boot service deploys: the recipe's deployments
// (ssbuild deploy), re-run on every start as a reconcile.
type Deploy struct {
	Recipe string `yaml:"recipe"` // absolute path of the recipe file
	// Image is the absolute path of an `ssbuild image` output folder,
	// imported into LXD when its base image is not there yet; empty: the
	// base image must be in LXD already.
	Image string `yaml:"image,omitempty"`
}

// RegistrationAddress is host:port of the initiator's registration endpoint.
func (c Cluster) RegistrationAddress() string {
	a, _ := netip.ParseAddr(c.InitiatorAddress)
	return netip.AddrPortFrom(a, uint16(c.RegistrationPort)).String()
}

// RegistryAddress is host:port of the registry node on the host at addr.
func (c Cluster) RegistryAddress(addr string) string {
	a, _ := netip.ParseAddr(addr)
	return netip.AddrPortFrom(a, uint16(c.RegistryPort)).String()
}

// Member returns the member called name.
func (c Cluster) Member(name string) (Member, bool) {
	for _, m := range c.Members {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// IsInitiator reports whether this host bootstraps the cluster.
func (a *Appliance) IsInitiator() bool { return a.Host.Name == a.Cluster.Initiator }

// Problem is one thing wrong with the file, at a place in it.
type Problem struct {
	File         string
	Line, Column int
	Message      string
}

func (p Problem) String() string {
	if p.Line == 0 {
		return fmt.Sprintf("%s: %s", p.File, p.Message)
	}
	return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Column, p.Message)
}

// InvalidError lists every problem found in the file.
type InvalidError struct{ Problems []Problem }

func (e *InvalidError) Error() string {
	s := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		s[i] = p.String()
	}
	return strings.Join(s, "\n")
}

// Load reads and checks an appliance.yaml.
func Load(path string) (*Appliance, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("appliance config: %w", err)
	}
	return Parse(path, data)
}

// maxFileSize bounds what Parse reads: the file is a few hundred bytes.
const maxFileSize = 1 << 20

var yamlLine = regexp.MustCompile(`line (\d+): (.*)$`)

// Parse checks an appliance.yaml read from file (used in messages). Unknown
// keys are problems, not silently ignored; every problem is reported at once.
func Parse(file string, data []byte) (*Appliance, error) {
	if len(data) > maxFileSize {
		return nil, &InvalidError{[]Problem{{File: file, Message: fmt.Sprintf("%d bytes: too large for an appliance config", len(data))}}}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &InvalidError{[]Problem{syntaxProblem(file, err)}}
	}
	if len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return nil, &InvalidError{[]Problem{{File: file, Line: 1, Column: 1, Message: "not a mapping of keys (host, cluster, secretFile, stateDir, deploy)"}}}
	}
	a := &Appliance{File: file}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(a); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			inv := &InvalidError{}
			for _, msg := range te.Errors {
				p := Problem{File: file, Message: msg}
				if m := yamlLine.FindStringSubmatch(msg); m != nil {
					p.Line, _ = strconv.Atoi(m[1])
					p.Column, p.Message = 1, m[2]
				}
				inv.Problems = append(inv.Problems, p)
			}
			return nil, inv
		}
		return nil, &InvalidError{[]Problem{syntaxProblem(file, err)}}
	}
	if a.Cluster.RegistrationPort == 0 {
		a.Cluster.RegistrationPort = DefaultRegistrationPort
	}
	if a.Cluster.RegistryPort == 0 {
		a.Cluster.RegistryPort = DefaultRegistryPort
	}
	c := checker{file: file, doc: root.Content[0]}
	c.validate(a)
	if len(c.problems) > 0 {
		return nil, &InvalidError{c.problems}
	}
	return a, nil
}

func syntaxProblem(file string, err error) Problem {
	p := Problem{File: file, Line: 1, Column: 1, Message: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		p.Line, _ = strconv.Atoi(m[1])
		p.Message = "not valid YAML: " + m[2]
	}
	return p
}

// checker reports problems at the position of the value they are about.
type checker struct {
	file     string
	doc      *yaml.Node
	problems []Problem
}

// at finds the node for a path like "cluster", "members", "1", "name"; it
// falls back to the deepest node found, so a missing key points at its parent.
func (c *checker) at(path ...string) (line, col int) {
	n := c.doc
	for _, key := range path {
		next := child(n, key)
		if next == nil {
			break
		}
		n = next
	}
	return n.Line, n.Column
}

func child(n *yaml.Node, key string) *yaml.Node {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				return n.Content[i+1]
			}
		}
	case yaml.SequenceNode:
		if i, err := strconv.Atoi(key); err == nil && i >= 0 && i < len(n.Content) {
			return n.Content[i]
		}
	}
	return nil
}

func (c *checker) addf(path []string, format string, args ...any) {
	line, col := c.at(path...)
	c.problems = append(c.problems, Problem{File: c.file, Line: line, Column: col,
		Message: strings.Join(path, ".") + ": " + fmt.Sprintf(format, args...)})
}

// nameRe is a DNS label: LXD member names and host names alike.
var nameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func (c *checker) name(v string, path ...string) {
	if !nameRe.MatchString(v) {
		c.addf(path, "%q is not a host name (lower-case DNS label)", v)
	}
}

func (c *checker) address(v string, path ...string) {
	if _, err := netip.ParseAddr(v); err != nil {
		c.addf(path, "%q is not an IP address (no prefix, no port)", v)
	}
}

func (c *checker) absolute(v string, path ...string) {
	if !filepath.IsAbs(v) {
		c.addf(path, "%q: want an absolute path", v)
	}
}

func (c *checker) validate(a *Appliance) {
	c.name(a.Host.Name, "host", "name")
	c.address(a.Host.Address, "host", "address")
	cl := a.Cluster
	c.name(cl.Name, "cluster", "name")
	c.name(cl.Initiator, "cluster", "initiator")
	c.address(cl.InitiatorAddress, "cluster", "initiatorAddress")
	if cl.RegistrationPort < 1 || cl.RegistrationPort > 65535 {
		c.addf([]string{"cluster", "registrationPort"}, "%d is not a TCP port", cl.RegistrationPort)
	}
	if cl.RegistryPort < 1 || cl.RegistryPort > 65535 {
		c.addf([]string{"cluster", "registryPort"}, "%d is not a TCP port", cl.RegistryPort)
	} else if cl.RegistryPort == cl.RegistrationPort {
		c.addf([]string{"cluster", "registryPort"}, "%d is the registrationPort too: give the registry its own port", cl.RegistryPort)
	}
	if len(cl.Members) == 0 {
		c.addf([]string{"cluster", "members"}, "empty: list every host of the cluster, the initiator included")
	}
	seen := map[string]bool{}
	for i, m := range cl.Members {
		idx := strconv.Itoa(i)
		c.name(m.Name, "cluster", "members", idx, "name")
		c.address(m.Address, "cluster", "members", idx, "address")
		if seen[m.Name] {
			c.addf([]string{"cluster", "members", idx, "name"}, "%q is listed twice", m.Name)
		}
		seen[m.Name] = true
	}
	if len(cl.Members) > 0 {
		if m, ok := cl.Member(a.Host.Name); !ok {
			c.addf([]string{"host", "name"}, "%q is not among cluster.members", a.Host.Name)
		} else if m.Address != a.Host.Address {
			c.addf([]string{"host", "address"}, "%q differs from cluster.members' %q for %s", a.Host.Address, m.Address, m.Name)
		}
		if m, ok := cl.Member(cl.Initiator); !ok {
			c.addf([]string{"cluster", "initiator"}, "%q is not among cluster.members", cl.Initiator)
		} else if m.Address != cl.InitiatorAddress {
			c.addf([]string{"cluster", "initiatorAddress"}, "%q differs from cluster.members' %q for %s", cl.InitiatorAddress, m.Address, m.Name)
		}
	}
	if cl.Storage.Pool == "" {
		c.addf([]string{"cluster", "storage", "pool"}, "empty: name the storage pool")
	}
	switch cl.Storage.Driver {
	case "zfs", "btrfs", "dir":
	default:
		c.addf([]string{"cluster", "storage", "driver"}, "%q: want zfs, btrfs or dir", cl.Storage.Driver)
	}
	for i, n := range cl.Networks {
		idx := strconv.Itoa(i)
		if n.Name == "" || len(n.Name) > 15 {
			c.addf([]string{"cluster", "networks", idx, "name"}, "%q: want an interface name of 1 to 15 characters", n.Name)
		}
		switch n.Type {
		case "bridge":
		case "macvlan":
			if n.Parent == "" {
				c.addf([]string{"cluster", "networks", idx, "parent"}, "empty: a macvlan network needs the host interface it attaches to")
			}
		default:
			c.addf([]string{"cluster", "networks", idx, "type"}, "%q: want bridge or macvlan", n.Type)
		}
	}
	c.absolute(a.SecretFile, "secretFile")
	c.absolute(a.StateDir, "stateDir")
	if d := a.Deploy; d != nil {
		c.absolute(d.Recipe, "deploy", "recipe")
		if d.Image != "" {
			c.absolute(d.Image, "deploy", "image")
		}
	}
}

// MinSecretLength is the shortest secret ReadSecret accepts (bytes, after a
// trailing newline is dropped).
const MinSecretLength = 16

// ReadSecret reads the cluster secret from a regular file that only its
// owner may read (no group or other permission bits). Its errors never
// contain the file's content.
func ReadSecret(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cluster secret: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cluster secret: %w", err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("cluster secret %s: not a regular file", path)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("cluster secret %s: mode %04o lets others read it: want 0600 (chmod 600 %s)", path, perm, path)
	}
	if info.Size() > 4096 {
		return nil, fmt.Errorf("cluster secret %s: %d bytes: too large for a secret", path, info.Size())
	}
	buf, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("cluster secret %s: %w", path, err)
	}
	secret := bytes.TrimRight(buf, "\r\n")
	if len(secret) < MinSecretLength {
		return nil, fmt.Errorf("cluster secret %s: shorter than %d bytes", path, MinSecretLength)
	}
	return secret, nil
}

// WriteSecret stores a secret in a new 0600 file (for the installer and
// tests); it refuses to overwrite an existing file.
func WriteSecret(path string, secret []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("cluster secret %s: already exists", path)
		}
		return fmt.Errorf("cluster secret: %w", err)
	}
	if _, err := f.Write(secret); err != nil {
		f.Close()
		return fmt.Errorf("cluster secret %s: write: %w", path, err)
	}
	return f.Close()
}

// Marshal writes a as YAML (for the installer and the test bed).
func Marshal(a *Appliance) ([]byte, error) {
	return yaml.Marshal(a)
}
