package stack

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sovereign-stack/ssbuild/recipes"
)

// The compose-spec subset a stack file may use. Unknown keys are errors.
type composeFile struct {
	Services map[string]*composeService `yaml:"services"`
	Networks map[string]*composeNetwork `yaml:"networks"`
	Volumes  map[string]*struct{}       `yaml:"volumes"`
	Configs  map[string]*composeConfig  `yaml:"configs"`
}

type composeNetwork struct {
	Internal bool `yaml:"internal"`
}

type composeConfig struct {
	Content string `yaml:"content"`
}

type composeService struct {
	Image       string                        `yaml:"image"`
	Entrypoint  []string                      `yaml:"entrypoint"`
	Command     []string                      `yaml:"command"`
	Environment map[string]string             `yaml:"environment"`
	Volumes     []string                      `yaml:"volumes"`
	Networks    map[string]*composeServiceNet `yaml:"networks"`
	Ports       []string                      `yaml:"ports"`
	Restart     string                        `yaml:"restart"`
	Init        bool                          `yaml:"init"`
	Labels      map[string]string             `yaml:"labels"`
	Configs     []composeConfigRef            `yaml:"configs"`
	Healthcheck *composeHealthcheck           `yaml:"healthcheck"`
	ExtraHosts  []string                      `yaml:"extra_hosts"`
	Backup      *composeBackup                `yaml:"x-backup"`
	Lightning   *Lightning                    `yaml:"x-lightning"`
}

// composeBackup is a service's backup declaration (an x- extension, so
// other compose tools ignore it).
type composeBackup struct {
	Dump *struct {
		Command []string `yaml:"command"`
		Restore []string `yaml:"restore"`
		File    string   `yaml:"file"`
	} `yaml:"dump"`
	Volumes      []string `yaml:"volumes"`
	NeverRestore []string `yaml:"neverRestore"`
}

type composeHealthcheck struct {
	Test        []string `yaml:"test"`
	Interval    string   `yaml:"interval"`
	Timeout     string   `yaml:"timeout"`
	Retries     int      `yaml:"retries"`
	StartPeriod string   `yaml:"start_period"`
}

type composeServiceNet struct {
	Aliases []string `yaml:"aliases"`
}

type composeConfigRef struct {
	Source string `yaml:"source"`
	Target string `yaml:"target"`
	Mode   *int64 `yaml:"mode"`
}

var (
	nameRE     = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	yamlLineRE = regexp.MustCompile(`line ([0-9]+)`)
	portRE     = regexp.MustCompile(`^(?:([0-9.]+|\[[0-9a-fA-F:]+\]):)?([0-9]+):([0-9]+)(?:/(tcp|udp))?$`)
)

// problems collects every problem of a stack file as file:line: message.
type problems struct {
	file  string
	lines []int // rendered line -> template line
	list  []string
}

func (p *problems) at(renderedLine int, format string, args ...any) {
	line := renderedLine
	if renderedLine > 0 && renderedLine < len(p.lines) && p.lines[renderedLine] > 0 {
		line = p.lines[renderedLine]
	}
	p.list = append(p.list, fmt.Sprintf("%s:%d: %s", p.file, line, fmt.Sprintf(format, args...)))
}

func (p *problems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	return errors.New(strings.Join(p.list, "\n"))
}

// yamlError turns yaml.v3's "line N: ..." messages into file:line ones.
func (p *problems) yamlError(err error) {
	var te *yaml.TypeError
	msgs := []string{strings.TrimPrefix(err.Error(), "yaml: ")}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	for _, m := range msgs {
		sub := yamlLineRE.FindStringSubmatch(m)
		if sub == nil {
			p.list = append(p.list, fmt.Sprintf("%s: %s", p.file, m))
			continue
		}
		n, _ := strconv.Atoi(sub[1])
		rest := strings.TrimPrefix(strings.TrimPrefix(m, sub[0]), ":")
		p.at(n, "%s", strings.TrimSpace(rest))
	}
}

// parse reads a rendered stack file into a Stack, resolving images.
func parse(file, text string, lines []int, images []recipes.DockerImage) (*Stack, error) {
	p := &problems{file: file, lines: lines}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(text), &root); err != nil {
		p.yamlError(err)
		return nil, p.err()
	}
	var cf composeFile
	dec := yaml.NewDecoder(strings.NewReader(text))
	dec.KnownFields(true)
	if err := dec.Decode(&cf); err != nil {
		p.yamlError(err)
		return nil, p.err()
	}
	line := func(keys ...string) int { return keyLine(&root, keys...) }

	st := &Stack{}
	for _, name := range sortedKeys(cf.Networks) {
		if !nameRE.MatchString(name) {
			p.at(line("networks", name), "network name %q: use lowercase letters, digits and '-'", name)
		}
		n := Network{Name: name}
		if cf.Networks[name] != nil {
			n.Internal = cf.Networks[name].Internal
		}
		st.Networks = append(st.Networks, n)
	}
	for _, name := range sortedKeys(cf.Volumes) {
		if !nameRE.MatchString(name) {
			p.at(line("volumes", name), "volume name %q: use lowercase letters, digits and '-'", name)
		}
		st.Volumes = append(st.Volumes, Volume{Name: name})
	}
	for _, name := range sortedKeys(cf.Configs) {
		if cf.Configs[name] == nil {
			p.at(line("configs", name), "config %s: no content", name)
		}
	}
	if len(cf.Services) == 0 {
		p.at(1, "no services")
	}
	lightning := "" // the service declaring x-lightning
	for _, name := range sortedKeys(cf.Services) {
		cs := cf.Services[name]
		at := func(field string) int {
			if l := line("services", name, field); l > 0 {
				return l
			}
			return line("services", name)
		}
		if !nameRE.MatchString(name) {
			p.at(at(""), "service name %q: use lowercase letters, digits and '-'", name)
		}
		if cs == nil {
			p.at(at(""), "service %s: empty", name)
			continue
		}
		svc := Service{Name: name, Entrypoint: cs.Entrypoint, Command: cs.Command, Environment: cs.Environment,
			Restart: cs.Restart, Init: cs.Init, Labels: cs.Labels}
		if cs.Image == "" {
			p.at(at(""), "service %s: no image", name)
		} else if img, err := resolveImage(cs.Image, images); err != nil {
			p.at(at("image"), "service %s: %v", name, err)
		} else {
			svc.Image, svc.ImageDigest = img.Ref, img.Digest
		}
		switch cs.Restart {
		case "", "no", "always", "unless-stopped", "on-failure":
		default:
			p.at(at("restart"), "service %s: restart %q: want no, always, unless-stopped or on-failure", name, cs.Restart)
		}
		for k := range cs.Labels {
			if strings.HasPrefix(k, "ssbuild.") && k != "ssbuild.site" {
				p.at(at("labels"), "service %s: label %s: the ssbuild. labels are set by ssbuild", name, k)
			}
		}
		for _, v := range cs.Volumes {
			m, err := parseMount(v, cf.Volumes)
			if err != nil {
				p.at(at("volumes"), "service %s: volume %q: %v", name, v, err)
				continue
			}
			svc.Mounts = append(svc.Mounts, m)
		}
		if len(cs.Networks) == 0 {
			p.at(at(""), "service %s: no networks; name at least one of the stack's networks", name)
		}
		for _, n := range sortedKeys(cs.Networks) {
			if _, ok := cf.Networks[n]; !ok {
				p.at(at("networks"), "service %s: network %s is not defined under networks", name, n)
			}
			sn := ServiceNetwork{Name: n}
			if cs.Networks[n] != nil {
				sn.Aliases = cs.Networks[n].Aliases
			}
			svc.Networks = append(svc.Networks, sn)
		}
		for _, ps := range cs.Ports {
			port, err := parsePort(ps)
			if err != nil {
				p.at(at("ports"), "service %s: port %q: %v", name, ps, err)
				continue
			}
			svc.Ports = append(svc.Ports, port)
		}
		for _, ref := range cs.Configs {
			c, ok := cf.Configs[ref.Source]
			switch {
			case !ok || c == nil:
				p.at(at("configs"), "service %s: config %q is not defined under configs", name, ref.Source)
				continue
			case !path.IsAbs(ref.Target):
				p.at(at("configs"), "service %s: config %s: target %q is not an absolute path", name, ref.Source, ref.Target)
				continue
			}
			mode := int64(0o444)
			if ref.Mode != nil {
				mode = *ref.Mode
			}
			svc.Files = append(svc.Files, File{Path: ref.Target, Mode: mode, Content: c.Content})
		}
		sort.Slice(svc.Files, func(i, j int) bool { return svc.Files[i].Path < svc.Files[j].Path })
		for _, h := range cs.ExtraHosts {
			if err := checkExtraHost(h); err != nil {
				p.at(at("extra_hosts"), "service %s: extra host %q: %v", name, h, err)
				continue
			}
			svc.ExtraHosts = append(svc.ExtraHosts, h)
		}
		if cs.Backup != nil {
			b, errs := parseBackup(cs.Backup, cs.Volumes, cf.Volumes)
			for _, err := range errs {
				p.at(at("x-backup"), "service %s: x-backup: %v", name, err)
			}
			svc.Backup = b
		}
		if cs.Lightning != nil {
			for _, err := range checkLightning(cs, cf.Volumes) {
				p.at(at("x-lightning"), "service %s: x-lightning: %v", name, err)
			}
			if lightning != "" {
				p.at(at("x-lightning"), "service %s: x-lightning: service %s already runs this stack's Lightning node (one per stack)", name, lightning)
			}
			lightning, svc.Lightning = name, cs.Lightning
		}
		if hc := cs.Healthcheck; hc != nil {
			h, err := parseHealthcheck(hc)
			if err != nil {
				p.at(at("healthcheck"), "service %s: healthcheck: %v", name, err)
			}
			svc.Healthcheck = h
		}
		st.Services = append(st.Services, svc)
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	return st, nil
}

// dumpFileRE is a dump's file name in the backup: plain, no folders.
var dumpFileRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// parseBackup checks a service's x-backup: the dump has a command and a
// plain file name; every volume entry ("volume" or "volume:/path") names a
// volume of the stack that this service mounts; nothing is both kept and
// never restored.
func parseBackup(cb *composeBackup, mounts []string, volumes map[string]*struct{}) (*Backup, []error) {
	var errs []error
	b := &Backup{}
	if d := cb.Dump; d != nil {
		switch {
		case len(d.Command) == 0:
			errs = append(errs, errors.New("dump: no command (the program and its arguments, run in the container, writing the dump to stdout)"))
		case len(d.Restore) == 0:
			errs = append(errs, errors.New("dump: no restore command (the program and its arguments, run in the container, reading the dump on stdin)"))
		case !dumpFileRE.MatchString(d.File) || d.File == "." || d.File == "..":
			errs = append(errs, fmt.Errorf("dump: file %q: want a plain file name such as db.sql", d.File))
		default:
			b.Dump = &Dump{Command: d.Command, Restore: d.Restore, File: d.File}
		}
	}
	mounted := map[string]bool{}
	for _, m := range mounts {
		mounted[strings.Split(m, ":")[0]] = true
	}
	parse := func(field, s string) (BackupPath, error) {
		vol, p, hasPath := strings.Cut(s, ":")
		bp := BackupPath{Volume: vol, Path: "/"}
		if hasPath {
			if !path.IsAbs(p) || path.Clean(p) != p {
				return bp, fmt.Errorf("%s %q: the path in the volume must be absolute and clean (volume:/dir/file)", field, s)
			}
			bp.Path = p
		}
		if _, ok := volumes[vol]; !ok {
			return bp, fmt.Errorf("%s %q: volume %s is not defined under volumes", field, s, vol)
		}
		if !mounted[vol] {
			return bp, fmt.Errorf("%s %q: the service does not mount volume %s", field, s, vol)
		}
		return bp, nil
	}
	for _, v := range cb.Volumes {
		bp, err := parse("volumes", v)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		b.Volumes = append(b.Volumes, bp)
	}
	for _, v := range cb.NeverRestore {
		bp, err := parse("neverRestore", v)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, k := range b.Volumes {
			if k.Volume == bp.Volume && (k.Path == bp.Path || strings.HasPrefix(bp.Path, strings.TrimSuffix(k.Path, "/")+"/") || strings.HasPrefix(k.Path, strings.TrimSuffix(bp.Path, "/")+"/")) {
				errs = append(errs, fmt.Errorf("neverRestore %q overlaps volumes entry %s:%s: a never-restore path must not be copied (name the files to keep instead)", v, k.Volume, k.Path))
			}
		}
		b.NeverRestore = append(b.NeverRestore, bp)
	}
	if b.Dump == nil && len(b.Volumes) == 0 && len(b.NeverRestore) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("empty: declare a dump, volumes or neverRestore"))
	}
	return b, errs
}

// checkLightning checks a service's x-lightning: its volume is one the
// service mounts; the channel database is declared never-restore and the
// static files kept, in the service's x-backup (so a backup holds the one
// and never the other); no restart policy, since dockerd would start an
// old copy of the node by itself, without the fence check.
func checkLightning(cs *composeService, volumes map[string]*struct{}) []error {
	l := cs.Lightning
	var errs []error
	if _, ok := volumes[l.Volume]; !ok || l.Volume == "" {
		errs = append(errs, fmt.Errorf("volume %q is not defined under volumes", l.Volume))
	}
	mounted := false
	for _, m := range cs.Volumes {
		mounted = mounted || strings.Split(m, ":")[0] == l.Volume
	}
	if !mounted {
		errs = append(errs, fmt.Errorf("the service does not mount volume %q", l.Volume))
	}
	declared := func(list []string, p string) bool {
		return cs.Backup != nil && slices.Contains(list, l.Volume+":"+p)
	}
	for _, p := range append([]string{l.ChannelDB}, l.Static...) {
		if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
			errs = append(errs, fmt.Errorf("path %q: want an absolute, clean file path in volume %s", p, l.Volume))
		}
	}
	if cs.Backup == nil || !declared(cs.Backup.NeverRestore, l.ChannelDB) {
		errs = append(errs, fmt.Errorf("channelDB %s: declare it in x-backup neverRestore as %s:%s (a periodic copy of it must never come back)", l.ChannelDB, l.Volume, l.ChannelDB))
	}
	if len(l.Static) == 0 {
		errs = append(errs, errors.New("static: name the node's static backup files (hsm_secret, emergency.recover)"))
	}
	if !slices.Contains(l.Static, l.Seed) {
		errs = append(errs, fmt.Errorf("seed %q: name the node's seed (hsm_secret), one of its static files", l.Seed))
	}
	for _, p := range l.Static {
		if cs.Backup == nil || !declared(cs.Backup.Volumes, p) {
			errs = append(errs, fmt.Errorf("static %s: declare it in x-backup volumes as %s:%s", p, l.Volume, p))
		}
	}
	if cs.Restart != "" && cs.Restart != "no" {
		errs = append(errs, fmt.Errorf("restart %s: a Lightning node takes no restart policy (dockerd would start an old copy by itself, without the fence check); ssbuild starts it", cs.Restart))
	}
	return errs
}

// checkExtraHost accepts compose's "name:address" form, the address an IP
// or host-gateway (the instance itself, as its containers reach it).
func checkExtraHost(h string) error {
	name, addr, ok := strings.Cut(h, ":")
	switch {
	case !ok || name == "":
		return errors.New("want name:address")
	case addr == "host-gateway":
		return nil
	}
	if _, err := netip.ParseAddr(addr); err != nil {
		return errors.New("the address is not an IP address or host-gateway")
	}
	return nil
}

// parseHealthcheck takes the CMD form (test: [CMD, prog, args...]) and
// durations such as 10s.
func parseHealthcheck(hc *composeHealthcheck) (*Healthcheck, error) {
	if len(hc.Test) < 2 || hc.Test[0] != "CMD" {
		return nil, errors.New("test: want [CMD, program, args...]")
	}
	h := &Healthcheck{Test: hc.Test[1:], Retries: hc.Retries}
	for _, d := range []struct {
		name string
		in   string
		out  *time.Duration
	}{{"interval", hc.Interval, &h.Interval}, {"timeout", hc.Timeout, &h.Timeout}, {"start_period", hc.StartPeriod, &h.StartPeriod}} {
		if d.in == "" {
			continue
		}
		v, err := time.ParseDuration(d.in)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%s %q: want a duration such as 10s", d.name, d.in)
		}
		*d.out = v
	}
	return h, nil
}

// parseMount reads "volume:/target[:ro]" or "/host/path:/target[:ro]".
func parseMount(s string, volumes map[string]*struct{}) (Mount, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return Mount{}, errors.New("want SOURCE:TARGET or SOURCE:TARGET:ro")
	}
	m := Mount{Type: "volume", Source: parts[0], Target: parts[1]}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			m.ReadOnly = true
		case "rw":
		default:
			return Mount{}, fmt.Errorf("mode %q: want ro or rw", parts[2])
		}
	}
	if !path.IsAbs(m.Target) {
		return Mount{}, fmt.Errorf("target %q is not an absolute path", m.Target)
	}
	if strings.HasPrefix(m.Source, "/") {
		m.Type = "bind"
		return m, nil
	}
	if _, ok := volumes[m.Source]; !ok {
		return Mount{}, fmt.Errorf("volume %s is not defined under volumes (a bind mount needs an absolute path)", m.Source)
	}
	return m, nil
}

// parsePort reads "[IP:]HOST:CONTAINER[/tcp|udp]".
func parsePort(s string) (Port, error) {
	m := portRE.FindStringSubmatch(s)
	if m == nil {
		return Port{}, errors.New("want [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]")
	}
	host, _ := strconv.Atoi(m[2])
	ctr, _ := strconv.Atoi(m[3])
	if host < 1 || host > 65535 || ctr < 1 || ctr > 65535 {
		return Port{}, errors.New("ports are 1-65535")
	}
	proto := m[4]
	if proto == "" {
		proto = "tcp"
	}
	return Port{HostIP: strings.Trim(m[1], "[]"), HostPort: host, ContainerPort: ctr, Protocol: proto}, nil
}

// keyLine is the line of a key path in a YAML document, 0 if absent; an
// empty last key means the line of the parent key.
func keyLine(root *yaml.Node, keys ...string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, k := range keys {
		if k == "" {
			return line
		}
		if n.Kind != yaml.MappingNode {
			return line
		}
		found := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				line = n.Content[i].Line
				n = n.Content[i+1]
				found = true
				break
			}
		}
		if !found {
			return 0
		}
	}
	return line
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
