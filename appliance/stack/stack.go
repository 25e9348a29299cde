// Package stack deploys the Docker side of one LXD instance of a
// deployment: it renders the shipped service stack (recipes/stacks) for the
// deployment into a Stack, then reconciles an instance's Docker with it.
// Apply is idempotent: every object it makes carries the labels below, a
// container also the hash of its rendered configuration and image, so a
// second Apply with nothing changed makes no mutating Docker call, and a
// changed service is the only one recreated.
package stack

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/client"
)

// Labels on every container, network and volume Apply makes.
const (
	LabelProject  = "ssbuild.project"  // the LXD project (<deployment>-<chain>)
	LabelInstance = "ssbuild.instance" // the instance role: www, btcpay, clams
	LabelService  = "ssbuild.service"  // containers: the service name
	LabelNetwork  = "ssbuild.network"  // networks: the name in the stack file
	LabelVolume   = "ssbuild.volume"   // volumes: the name in the stack file
	LabelSpec     = "ssbuild.spec"     // containers: hash of the service's config and image ID
)

// Stack is the rendered service stack of one instance.
type Stack struct {
	Project  string    `yaml:"project" json:"project"`   // LXD project; label value and name prefix
	Instance string    `yaml:"instance" json:"instance"` // role: www, btcpay, clams
	Networks []Network `yaml:"networks" json:"networks"`
	Volumes  []Volume  `yaml:"volumes" json:"volumes"`
	Services []Service `yaml:"services" json:"services"`
	// Fence is the check Apply runs before it starts a Lightning service;
	// without one, Apply never starts it.
	Fence FenceFunc `yaml:"-" json:"-"`

	// redact removes secret values from messages.
	redact func(string) string
}

// Network is a user-defined bridge network.
type Network struct {
	Name     string `yaml:"name" json:"name"`
	Internal bool   `yaml:"internal,omitempty" json:"internal,omitempty"` // no route outside the host
}

// Volume is a named volume; Apply creates it, only Down with purge removes it.
type Volume struct {
	Name string `yaml:"name" json:"name"`
}

// Service is one container.
type Service struct {
	Name        string            `yaml:"name" json:"name"`
	Image       string            `yaml:"image" json:"image"`                                 // the recipe's ref, e.g. caddy:2.8.4-alpine
	ImageDigest string            `yaml:"imageDigest,omitempty" json:"imageDigest,omitempty"` // the recipe's pin, checked by Apply
	Entrypoint  []string          `yaml:"entrypoint,omitempty" json:"entrypoint,omitempty"`   //
	Command     []string          `yaml:"command,omitempty" json:"command,omitempty"`         //
	Environment map[string]string `yaml:"environment,omitempty" json:"environment,omitempty"` //
	Mounts      []Mount           `yaml:"mounts,omitempty" json:"mounts,omitempty"`           //
	Networks    []ServiceNetwork  `yaml:"networks,omitempty" json:"networks,omitempty"`       //
	Ports       []Port            `yaml:"ports,omitempty" json:"ports,omitempty"`             //
	Restart     string            `yaml:"restart,omitempty" json:"restart,omitempty"`         // no, always, unless-stopped, on-failure
	Init        bool              `yaml:"init,omitempty" json:"init,omitempty"`               // run docker-init as PID 1
	Labels      map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`           // the stack file's own labels
	Files       []File            `yaml:"files,omitempty" json:"files,omitempty"`             // copied in before the container starts
	Healthcheck *Healthcheck      `yaml:"healthcheck,omitempty" json:"healthcheck,omitempty"` // Docker's health check
	ExtraHosts  []string          `yaml:"extraHosts,omitempty" json:"extraHosts,omitempty"`   // name:address lines added to /etc/hosts
	// Backup says what `ssbuild backup` takes from the service; it does not
	// change the container (json:"-" keeps it out of the spec hash).
	Backup *Backup `yaml:"backup,omitempty" json:"-"`
	// Lightning marks the service that runs the deployment's Lightning
	// node (x-lightning): Apply starts it only after the stack's Fence
	// check, and never with a restart policy (dockerd would start an old
	// copy by itself).
	Lightning *Lightning `yaml:"lightning,omitempty" json:"-"`
}

// Lightning is a Lightning node's declaration: the volume holding its
// state (the fence file, FenceFile, lives at its root), its live channel
// database and its static backup files (the seed, the static channel
// backup), paths in that volume. Seed is the static file that makes the
// node who it is: a channel database belongs to one seed.
type Lightning struct {
	Volume    string   `yaml:"volume" json:"volume"`
	ChannelDB string   `yaml:"channelDB" json:"channelDB"`
	Seed      string   `yaml:"seed" json:"seed"`
	Static    []string `yaml:"static" json:"static"`
}

// FenceFile is the fence file's name at the root of a Lightning volume: the
// generation this copy of the node holds.
const FenceFile = ".ssbuild-fence"

// FenceFunc decides whether the Lightning service's container id may
// start (or, running, go on running); an error says why not, and wraps
// ErrFenced when this copy of the node is not the current one (Apply then
// stops a running one; any other error, such as the state being
// unreachable, leaves it as it is). Apply calls it.
type FenceFunc func(ctx context.Context, c client.APIClient, s *Stack, svc *Service, id string) error

// ErrFenced is wrapped by a FenceFunc's error when the copy of the node is
// not its current one.
var ErrFenced = errors.New("not the Lightning node's current copy")

// LightningService returns the stack's Lightning service, or nil.
func (s *Stack) LightningService() *Service {
	for i := range s.Services {
		if s.Services[i].Lightning != nil {
			return &s.Services[i]
		}
	}
	return nil
}

// MountTarget is where svc mounts volume, "" when it does not.
func (svc *Service) MountTarget(volume string) string {
	for _, m := range svc.Mounts {
		if m.Type == "volume" && m.Source == volume {
			return m.Target
		}
	}
	return ""
}

// Backup is a service's backup declaration (the stack file's x-backup):
// first the dump, taken while the service runs, then the volume paths.
type Backup struct {
	Dump *Dump `yaml:"dump,omitempty" json:"dump,omitempty"`
	// Volumes are copied as files: whole volumes or paths in them.
	Volumes []BackupPath `yaml:"volumes,omitempty" json:"volumes,omitempty"`
	// NeverRestore are paths that must never come back from a periodic
	// copy (a Lightning node's live channel database: an old one loses
	// funds); a backup never holds them.
	NeverRestore []BackupPath `yaml:"neverRestore,omitempty" json:"neverRestore,omitempty"`
}

// Dump is a consistent dump of a database: Command runs in the service's
// running container and writes the dump to stdout, saved as File; Restore
// runs there too and reads it back on stdin.
type Dump struct {
	Command []string `yaml:"command" json:"command"`
	Restore []string `yaml:"restore" json:"restore"`
	File    string   `yaml:"file" json:"file"`
}

// BackupPath is a path in one of the stack's volumes ("/": all of it).
type BackupPath struct {
	Volume string `yaml:"volume" json:"volume"`
	Path   string `yaml:"path" json:"path"`
}

func (p BackupPath) String() string { return p.Volume + ":" + p.Path }

// Healthcheck is a command Docker runs in the container to report it
// healthy (exit 0) or unhealthy.
type Healthcheck struct {
	Test        []string      `yaml:"test" json:"test"` // the program and its arguments
	Interval    time.Duration `yaml:"interval,omitempty" json:"interval,omitempty"`
	Timeout     time.Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	Retries     int           `yaml:"retries,omitempty" json:"retries,omitempty"`
	StartPeriod time.Duration `yaml:"startPeriod,omitempty" json:"startPeriod,omitempty"`
}

// Mount is a named volume or a bind mount of a path of the instance.
type Mount struct {
	Type     string `yaml:"type" json:"type"` // volume or bind
	Source   string `yaml:"source" json:"source"`
	Target   string `yaml:"target" json:"target"`
	ReadOnly bool   `yaml:"readOnly,omitempty" json:"readOnly,omitempty"`
}

// ServiceNetwork attaches a service to a network of the stack; the service
// name is always an alias, Aliases adds more.
type ServiceNetwork struct {
	Name    string   `yaml:"name" json:"name"`
	Aliases []string `yaml:"aliases,omitempty" json:"aliases,omitempty"`
}

// Port publishes a container port on the instance.
type Port struct {
	HostIP        string `yaml:"hostIP,omitempty" json:"hostIP,omitempty"`
	HostPort      int    `yaml:"hostPort" json:"hostPort"`
	ContainerPort int    `yaml:"containerPort" json:"containerPort"`
	Protocol      string `yaml:"protocol" json:"protocol"` // tcp or udp
}

func (p Port) String() string {
	s := fmt.Sprintf("%d:%d/%s", p.HostPort, p.ContainerPort, p.Protocol)
	if p.HostIP != "" {
		s = p.HostIP + ":" + s
	}
	return s
}

// File is a file written into the container before it starts (the compose
// spec's configs with content).
type File struct {
	Path    string `yaml:"path" json:"path"`
	Mode    int64  `yaml:"mode" json:"mode"`
	Content string `yaml:"content" json:"content"`
}

// ContainerName is the Docker name of a service's container.
func (s *Stack) ContainerName(service string) string { return s.Project + "-" + service }

// NetworkName is the Docker name of a network of the stack.
func (s *Stack) NetworkName(network string) string { return s.Project + "-" + network }

// VolumeName is the Docker name of a volume of the stack.
func (s *Stack) VolumeName(volume string) string { return s.Project + "-" + volume }

// Images lists the image refs the instance's Docker must have, sorted,
// each once.
func (s *Stack) Images() []string {
	var out []string
	seen := map[string]bool{}
	for _, svc := range s.Services {
		if !seen[svc.Image] {
			seen[svc.Image] = true
			out = append(out, svc.Image)
		}
	}
	sort.Strings(out)
	return out
}

// Service returns the service with the name, or nil.
func (s *Stack) Service(name string) *Service {
	for i := range s.Services {
		if s.Services[i].Name == name {
			return &s.Services[i]
		}
	}
	return nil
}

// String describes the stack without any configuration value (environment
// values may be secrets).
func (s *Stack) String() string {
	names := make([]string, len(s.Services))
	for i, svc := range s.Services {
		names[i] = svc.Name
	}
	return fmt.Sprintf("stack %s/%s: services %s", s.Project, s.Instance, strings.Join(names, ", "))
}

// GoString is String: %#v must not print environment values either.
func (s *Stack) GoString() string { return s.String() }

// String names the service and its image only.
func (s Service) String() string { return fmt.Sprintf("service %s (%s)", s.Name, s.Image) }

// GoString is String.
func (s Service) GoString() string { return s.String() }

func (s *Stack) clean(msg string) string {
	if s.redact == nil {
		return msg
	}
	return s.redact(msg)
}

// errorf makes an error whose text has every secret value removed.
func (s *Stack) errorf(format string, args ...any) error {
	return redactedError{msg: s.clean(fmt.Errorf(format, args...).Error()), err: fmt.Errorf(format, args...)}
}

// redactedError shows a redacted message but still unwraps to the cause,
// so errors.Is works (for example errdefs.IsNotFound).
type redactedError struct {
	msg string
	err error
}

func (e redactedError) Error() string { return e.msg }
func (e redactedError) Unwrap() error { return errors.Unwrap(e.err) }
