package stack

import (
	"bytes"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/distribution/reference"
	"gopkg.in/yaml.v3"

	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/recipes"
	"github.com/sovereign-stack/ssbuild/recipes/stacks"
)

// Options are the facts about the instances that the recipe does not hold.
type Options struct {
	// BTCPayHost and BTCPayPort are where the www reverse proxy sends
	// btcpay.<domain> and the alt names: the stack maps BTCPayHost to the
	// www instance itself (extra_hosts host-gateway), whose BTCPayPort LXD
	// forwards to the btcpay instance's port 80 on whichever member it
	// runs (appliance/deploy's link devices).
	BTCPayHost string
	BTCPayPort int
	// SSBuildBinary is where the instance has the static ssbuild binary
	// (the demo's reverse proxy runs it).
	SSBuildBinary string
	// ChainstateDir, when set, is the instance's directory holding the
	// deployment's chainstate volume (made from the pre-loaded one); the
	// btcpay instance's bitcoind then uses it as its data directory instead
	// of a Docker volume.
	ChainstateDir string
	// Scratch renders a restore test's scratch copy of the deployment: it
	// runs beside the live one and must never ask a CA for certificates
	// of the live domains (the sovereign www's Caddy uses its local CA).
	Scratch bool
}

// DefaultOptions: the instance named btcpay, ssbuild where the base image
// puts it.
var DefaultOptions = Options{BTCPayHost: "btcpay", BTCPayPort: 18080, SSBuildBinary: "/usr/local/bin/ssbuild"}

// Render renders the deployment's stack file for an instance role (www,
// btcpay, clams) with DefaultOptions. Images are resolved against the
// recipe's image.dockerImages; passwords come from sec (see SecretNames).
func Render(r *recipes.Recipe, d recipes.Deployment, role string, sec secrets.Set) (*Stack, error) {
	return RenderWith(r, d, role, sec, DefaultOptions)
}

// RenderWith is Render with explicit Options.
func RenderWith(r *recipes.Recipe, d recipes.Deployment, role string, sec secrets.Set, opts Options) (*Stack, error) {
	file, src, err := stacks.Read(d.Stack, role)
	if err != nil {
		return nil, fmt.Errorf("deployment %s: %w", d.Name, err)
	}
	return RenderSource(file, src, r, d, role, sec, opts)
}

// RenderSource renders a stack file given as text; file names it in errors
// (file:line).
func RenderSource(file string, src []byte, r *recipes.Recipe, d recipes.Deployment, role string, sec secrets.Set, opts Options) (*Stack, error) {
	data, err := templateData(d, role, opts)
	if err != nil {
		return nil, err
	}
	var missing []string
	secret := func(name string) (string, error) {
		if v, ok := sec.Get(name); ok {
			return v, nil
		}
		missing = append(missing, name)
		return "missing-secret", nil
	}
	text, lines, err := execute(file, src, data, secret)
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("%s: secrets %s of deployment %s were not generated (secrets.Ensure with stack.SecretNames)",
			file, strings.Join(dedupe(missing), ", "), d.Name)
	}
	st, err := parse(file, text, lines, r.Image.DockerImages)
	if err != nil {
		return nil, redactedError{msg: sec.Redact(err.Error()), err: err}
	}
	st.Project, st.Instance = d.Project(), role
	st.redact = sec.Redact
	return st, nil
}

// SecretNames lists the secrets the deployment's stacks use, over every
// enabled instance role: what secrets.Ensure must generate before Render.
func SecretNames(d recipes.Deployment) ([]string, error) {
	seen := map[string]bool{}
	for _, role := range d.Instances.Roles() {
		if !role.Instance.IsEnabled() || !stacks.Has(d.Stack, role.Name) {
			continue
		}
		file, src, err := stacks.Read(d.Stack, role.Name)
		if err != nil {
			return nil, err
		}
		data, err := templateData(d, role.Name, DefaultOptions)
		if err != nil {
			return nil, err
		}
		record := func(name string) (string, error) { seen[name] = true; return "x", nil }
		if _, _, err := execute(file, src, data, record); err != nil {
			return nil, err
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// Roles lists the instance roles of the deployment that have a stack: the
// enabled ones with a file in its stack.
func Roles(d recipes.Deployment) []string {
	var out []string
	for _, role := range d.Instances.Roles() {
		if role.Instance.IsEnabled() && stacks.Has(d.Stack, role.Name) {
			out = append(out, role.Name)
		}
	}
	return out
}

func dedupe(s []string) []string {
	var out []string
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// What a stack template sees (recipes/stacks/README.md lists it).
type tmplData struct {
	Project, Deployment, Chain, PrimaryDomain, Role string
	BTCPayHost, SSBuildBinary, ChainstateDir        string
	BTCPayPort                                      int
	Scratch                                         bool
	Bitcoin                                         bitcoinData
	Sites                                           []siteData
	BTCPayNames                                     []string // every BTCPay host name of every site
}

type siteData struct {
	Domain, ID                     string
	Languages                      []langData
	Services                       []string
	Ghost, Nextcloud, Gitea, Nostr bool
	NostrOwnerHex                  string
	BTCPayNames                    []string // btcpay.<domain> and the alt names
}

type langData struct {
	Code string
	Path string // "" for the first language, /<code> for the others
	ID   string // <site ID>-<code>
}

type bitcoinData struct {
	Network         string // the recipe's chain: mainnet, testnet, signet, regtest
	Chain           string // bitcoind -chain: main, test, signet, regtest
	CLNNetwork      string // lightningd --network: bitcoin, testnet, signet, regtest
	RPCPort         int
	P2PPort         int
	LightningWSPort int // published port of Core Lightning's websocket
}

var chains = map[string]bitcoinData{
	"mainnet": {"mainnet", "main", "bitcoin", 8332, 8333, 9738},
	"testnet": {"testnet", "test", "testnet", 18332, 18333, 9737},
	"signet":  {"signet", "signet", "signet", 38332, 38333, 9739},
	"regtest": {"regtest", "regtest", "regtest", 18443, 18444, 9736},
}

func templateData(d recipes.Deployment, role string, opts Options) (tmplData, error) {
	btc, ok := chains[d.Chain]
	if !ok {
		return tmplData{}, fmt.Errorf("deployment %s: chain %q is not mainnet, testnet, signet or regtest", d.Name, d.Chain)
	}
	t := tmplData{Project: d.Project(), Deployment: d.Name, Chain: d.Chain, PrimaryDomain: d.PrimaryDomain,
		Role: role, BTCPayHost: opts.BTCPayHost, BTCPayPort: opts.BTCPayPort, SSBuildBinary: opts.SSBuildBinary, ChainstateDir: opts.ChainstateDir, Scratch: opts.Scratch, Bitcoin: btc}
	for _, s := range d.Sites {
		sd := siteData{Domain: s.Domain, ID: siteID(s.Domain), Services: s.Services,
			Ghost: s.Has("ghost"), Nextcloud: s.Has("nextcloud"), Gitea: s.Has("gitea"), Nostr: s.Has("nostr-relay")}
		langs := s.Languages
		if len(langs) == 0 {
			langs = []string{"en"}
		}
		for i, l := range langs {
			ld := langData{Code: l, ID: sd.ID + "-" + l}
			if i > 0 {
				ld.Path = "/" + l
			}
			sd.Languages = append(sd.Languages, ld)
		}
		if sd.Nostr {
			hexKey, err := recipes.NostrPubkeyHex(s.NostrOwner)
			if err != nil {
				return tmplData{}, fmt.Errorf("deployment %s: site %s: nostrOwnerPubkey: %w", d.Name, s.Domain, err)
			}
			sd.NostrOwnerHex = hexKey
		}
		sd.BTCPayNames = append(sd.BTCPayNames, "btcpay."+s.Domain)
		for _, alt := range s.BTCPayAltNames {
			sd.BTCPayNames = append(sd.BTCPayNames, alt+"."+s.Domain)
		}
		t.BTCPayNames = append(t.BTCPayNames, sd.BTCPayNames...)
		t.Sites = append(t.Sites, sd)
	}
	return t, nil
}

// siteID makes a domain usable in container, network and DNS alias names.
func siteID(domain string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimSuffix(domain, ".")), ".", "-")
}

// Line marks: every template line gets "\x1e<n>\x1f" at its end, so each
// rendered line can be traced back to the template line it came from.
const markStart, markEnd = "\x1e", "\x1f"

var markRE = regexp.MustCompile("\x1e([0-9]+)\x1f")

func addMarks(src string) string {
	var b strings.Builder
	depth := 0 // open {{ actions spanning lines get no mark inside them
	lines := strings.Split(src, "\n")
	for i, l := range lines {
		b.WriteString(l)
		depth += strings.Count(l, "{{") - strings.Count(l, "}}")
		if depth == 0 && i < len(lines)-1 {
			fmt.Fprintf(&b, "%s%d%s", markStart, i+1, markEnd)
		}
		if i < len(lines)-1 {
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// execute runs the template and returns the rendered text with, for each
// rendered line (1-based index), the template line it came from.
func execute(file string, src []byte, data tmplData, secret func(string) (string, error)) (string, []int, error) {
	funcs := template.FuncMap{
		"secret": secret,
		"join":   strings.Join,
		"quote":  strconv.Quote,
	}
	tmpl, err := template.New(file).Option("missingkey=error").Funcs(funcs).Parse(addMarks(string(src)))
	if err != nil {
		return "", nil, fmt.Errorf("stack file %w", err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, data); err != nil {
		return "", nil, fmt.Errorf("stack file %w", err)
	}
	rendered := strings.Split(out.String(), "\n")
	lines := make([]int, len(rendered)+1)
	pending := []int{}
	for i, l := range rendered {
		m := markRE.FindAllStringSubmatch(l, -1)
		rendered[i] = markRE.ReplaceAllString(l, "")
		if len(m) == 0 {
			pending = append(pending, i+1)
			continue
		}
		n, _ := strconv.Atoi(m[len(m)-1][1])
		lines[i+1] = n
		for _, p := range pending {
			lines[p] = n
		}
		pending = pending[:0]
	}
	return strings.Join(rendered, "\n"), lines, nil
}

// resolveImage finds the recipe's image for a repository named in a stack.
func resolveImage(repo string, images []recipes.DockerImage) (recipes.DockerImage, error) {
	named, err := reference.ParseNormalizedNamed(repo)
	if err != nil {
		return recipes.DockerImage{}, fmt.Errorf("image %q is not a repository name: %v", repo, err)
	}
	if !reference.IsNameOnly(named) {
		return recipes.DockerImage{}, fmt.Errorf("image %q: name the repository only (%s); the tag and digest come from the recipe's image.dockerImages", repo, reference.FamiliarName(named))
	}
	var found []recipes.DockerImage
	for _, img := range images {
		n, err := reference.ParseNormalizedNamed(img.Ref)
		if err != nil {
			continue // the recipe validator reports it
		}
		if n.Name() == named.Name() {
			found = append(found, img)
		}
	}
	switch len(found) {
	case 0:
		return recipes.DockerImage{}, fmt.Errorf("image %s is not in the recipe's image.dockerImages: add it there (ref: %s:<tag>, and its digest) so the base image pre-loads it", reference.FamiliarName(named), reference.FamiliarName(named))
	case 1:
		return found[0], nil
	}
	refs := make([]string, len(found))
	for i, f := range found {
		refs[i] = f.Ref
	}
	return recipes.DockerImage{}, fmt.Errorf("image %s is in the recipe's image.dockerImages %d times (%s): keep one", reference.FamiliarName(named), len(found), strings.Join(refs, ", "))
}

// CheckImages is a recipes.Check: every image a deployment's stacks run
// must be in the recipe's image.dockerImages, resolved as Render resolves
// it (resolveImage), so `recipe validate` refuses what deploy would. Each
// service whose image is missing is reported at the deployment's stack.
func CheckImages(r *recipes.Recipe, rep recipes.Reporter) {
	for i, d := range r.Deployments {
		path := fmt.Sprintf("deployments[%d].stack", i)
		for _, role := range Roles(d) {
			file, src, err := stacks.Read(d.Stack, role)
			if err != nil {
				continue // not a shipped stack: the recipe's enum check reports it
			}
			data, err := templateData(d, role, DefaultOptions)
			if err != nil {
				continue // a value the recipe's own checks report
			}
			fake := func(string) (string, error) { return "x", nil }
			text, lines, err := execute(file, src, data, fake)
			if err != nil {
				rep.At(path, "deployment %s: %v", d.Name, err)
				continue
			}
			var root yaml.Node
			var cf composeFile
			if yaml.Unmarshal([]byte(text), &root) != nil || root.Decode(&cf) != nil {
				continue // a broken shipped stack fails its own tests and deploy
			}
			for _, name := range sortedKeys(cf.Services) {
				cs := cf.Services[name]
				if cs == nil || cs.Image == "" {
					continue
				}
				if _, err := resolveImage(cs.Image, r.Image.DockerImages); err != nil {
					line := keyLine(&root, "services", name, "image")
					if line > 0 && line < len(lines) && lines[line] > 0 {
						line = lines[line]
					}
					rep.At(path, "deployment %s, %s instance, service %s (%s:%d): %v", d.Name, role, name, file, line, err)
				}
			}
		}
	}
}
