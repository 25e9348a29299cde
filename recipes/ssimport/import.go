package ssimport

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/sovereign-stack/ssbuild/recipes"
	"gopkg.in/yaml.v3"
)

// Input names the Sovereign Stack files to import; each may be empty.
type Input struct {
	Remote  string   // remote.conf (2022: cluster_definition)
	Project string   // project.conf (v0.0.23: project_definition)
	Sites   []string // site.conf files, one per domain (v0.0.23: site_definition)
}

// Warning is something the import could not carry over, or an error in a
// source file. It never holds a secret's value.
type Warning struct {
	File    string `json:"file"`
	Line    int    `json:"line,omitempty"` // 0: the file as a whole
	Key     string `json:"key,omitempty"`
	Message string `json:"message"`
}

func (w Warning) String() string {
	loc := w.File
	if w.Line > 0 {
		loc = fmt.Sprintf("%s:%d", w.File, w.Line)
	}
	if w.Key == "" {
		return loc + ": " + w.Message
	}
	return loc + ": " + w.Key + ": " + w.Message
}

// Error lists every problem that stopped an import.
type Error struct {
	Problems []Warning
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// source is a config file's name (as given, for messages) and content.
type source struct {
	name string
	data []byte
}

// Import reads the files and converts them into a recipe. The warnings
// list what was not carried over; the error is an *Error when a value is
// wrong, naming its file, line and key.
func Import(in Input) (*recipes.Recipe, []Warning, error) {
	if in.Remote == "" && in.Project == "" && len(in.Sites) == 0 {
		return nil, nil, errors.New("nothing to import: give a remote.conf, a project.conf or site.conf files")
	}
	read := func(path string) (*source, error) {
		if path == "" {
			return nil, nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("import: %w", err)
		}
		return &source{path, b}, nil
	}
	remote, err := read(in.Remote)
	if err != nil {
		return nil, nil, err
	}
	project, err := read(in.Project)
	if err != nil {
		return nil, nil, err
	}
	var sites []source
	for _, p := range in.Sites {
		s, err := read(p)
		if err != nil {
			return nil, nil, err
		}
		sites = append(sites, *s)
	}
	return importSources(remote, project, sites)
}

// importer collects warnings, errors and where each recipe field came from.
type importer struct {
	warns, errs []Warning
	origins     map[string]Warning // recipe field path -> source location
	namedBy     bool               // PROJECT_NAME named the deployment
	rank        map[string]int     // file name -> its place in the input
}

func at(f *confFile, a *assignment) Warning {
	w := Warning{File: f.Name}
	if a != nil {
		w.Line, w.Key = a.Line, a.Key
	}
	return w
}

func (im *importer) warn(loc Warning, format string, args ...any) {
	loc.Message = fmt.Sprintf(format, args...)
	im.warns = append(im.warns, loc)
}

func (im *importer) fail(loc Warning, format string, args ...any) {
	loc.Message = fmt.Sprintf(format, args...)
	im.errs = append(im.errs, loc)
}

// value returns a's value, trimmed, warning once when it holds an
// expansion the shell would have run.
func (im *importer) value(f *confFile, a *assignment) string {
	if a.Unevaluated {
		im.warn(at(f, a), "the value holds a shell expansion ($... or `...`) that was not run; it is taken literally")
	}
	return strings.TrimSpace(a.Value)
}

// each calls fn for the effective (last) assignment of each key, in file
// order. Secrets are dropped here, before anything could look at them.
func (im *importer) each(f *confFile, fn func(a *assignment)) {
	for i := range f.Vars {
		a := &f.Vars[i]
		if f.last[a.Key] != i {
			continue
		}
		if msg := secretMessage(a.Key); msg != "" {
			im.warn(at(f, a), "%s", msg)
			continue
		}
		fn(a)
	}
}

// other handles a key the file's own mapping does not take.
func (im *importer) other(f *confFile, kind fileKind, a *assignment) {
	if why, ok := notMapped[a.Key]; ok {
		im.warn(at(f, a), "not mapped: %s", why)
		return
	}
	if k, ok := kindOf(a.Key); ok && k != kind {
		im.warn(at(f, a), "not mapped: it belongs in %s, not in %s", k, kind)
		return
	}
	im.warn(at(f, a), "not mapped: not a Sovereign Stack setting this importer knows")
}

// entry is one (prefix|chain) of DEPLOYMENT_STRING.
type entry struct{ prefix, chain string }

func (e entry) project() string { return e.prefix + "-" + e.chain }

// remoteConf is what remote.conf says.
type remoteConf struct {
	file        *confFile
	entries     []entry
	deployments *assignment // DEPLOYMENT_STRING
	projectName string      // 2022 PROJECT_NAME
	projectAt   *assignment
	registry    string
	registryAt  *assignment
}

var (
	entryRe = regexp.MustCompile(`^\(\s*([^|()]*?)\s*\|\s*([^|()]*?)\s*\)$`)
	chains  = set("mainnet", "testnet", "signet", "regtest")
)

// dockerHub are the ways Sovereign Stack wrote the default registry.
var dockerHub = set("index.docker.io/v1", "index.docker.io", "registry-1.docker.io", "docker.io", "registry.hub.docker.com")

func (im *importer) remote(f *confFile) remoteConf {
	rc := remoteConf{file: f}
	im.each(f, func(a *assignment) {
		switch a.Key {
		case "DEPLOYMENT_STRING":
			rc.deployments = a
			rc.entries = im.deploymentString(f, a)
		case "REGISTRY_URL":
			v := im.value(f, a)
			host := strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(strings.ToLower(v), "https://"), "http://"), "/")
			switch {
			case v == "":
			case dockerHub[host]:
				im.warn(at(f, a), "not mapped: Docker Hub is the default registry; no mirror is set")
			case hasUserinfo(v):
				// A recipe holds no secrets; a login in the URL is one.
				im.warn(at(f, a), "not mapped: the URL holds a login, and a recipe holds no secrets (value not shown); set image.registryMirror to the URL without it")
			default:
				rc.registry, rc.registryAt = v, a
				im.origins["image.registryMirror"] = at(f, a)
			}
		case "PROJECT_NAME":
			rc.projectName, rc.projectAt = im.value(f, a), a
		default:
			im.other(f, remoteFile, a)
		}
	})
	return rc
}

// deploymentString reads "(dev|regtest),(staging|testnet)".
func (im *importer) deploymentString(f *confFile, a *assignment) []entry {
	var out []entry
	seen := map[entry]bool{}
	for _, part := range strings.Split(im.value(f, a), ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		m := entryRe.FindStringSubmatch(part)
		if m == nil || m[1] == "" {
			im.fail(at(f, a), "%q is not a (prefix|chain) entry, like (dev|regtest)", part)
			continue
		}
		e := entry{m[1], m[2]}
		switch {
		case !chains[e.chain]:
			im.fail(at(f, a), "%q: %q is not a chain (mainnet, testnet, signet, regtest)", part, e.chain)
		case seen[e]:
			im.fail(at(f, a), "%q is listed twice", part)
		default:
			seen[e] = true
			out = append(out, e)
		}
	}
	return out
}

var projectDirRe = regexp.MustCompile(`^(.+)-(mainnet|testnet|signet|regtest)$`)

// pickDeployment decides which deployment project.conf describes: the
// <prefix>-<chain> directory it sits in (Sovereign Stack's
// ~/ss/projects/<project>/project.conf), else the DEPLOYMENT_STRING entry
// on BITCOIN_CHAIN, else the first entry, else one named after the chain.
// The returned location is where the name and chain came from.
func (im *importer) pickDeployment(pf *confFile, rc remoteConf, chain string, chainAt *assignment) (entry, Warning) {
	if m := projectDirRe.FindStringSubmatch(filepath.Base(filepath.Dir(pf.Name))); m != nil {
		e := entry{m[1], m[2]}
		if len(rc.entries) > 0 && !containsEntry(rc.entries, e) {
			im.warn(at(rc.file, rc.deployments), "does not list (%s|%s); project.conf is in %s/, so that deployment is imported", e.prefix, e.chain, e.project())
		}
		return e, Warning{File: pf.Name, Message: "directory " + e.project()}
	}
	if len(rc.entries) > 0 {
		if chain != "" {
			var on []entry
			for _, e := range rc.entries {
				if e.chain == chain {
					on = append(on, e)
				}
			}
			if len(on) == 1 {
				im.warn(Warning{File: pf.Name}, "not in a <prefix>-<chain> directory; applied to deployment %s, the DEPLOYMENT_STRING entry on BITCOIN_CHAIN %s", on[0].project(), chain)
				return on[0], at(rc.file, rc.deployments)
			}
		}
		e := rc.entries[0]
		im.warn(Warning{File: pf.Name}, "not in a <prefix>-<chain> directory; applied to deployment %s, the first entry of DEPLOYMENT_STRING", e.project())
		return e, at(rc.file, rc.deployments)
	}
	if chain == "" {
		chain = "regtest" // Sovereign Stack's default chain
	}
	if rc.projectName != "" {
		e := entry{rc.projectName, chain}
		im.namedBy = true
		im.warn(at(rc.file, rc.projectAt), "used as the deployment name; its LXD project is %s", e.project())
		return e, at(rc.file, rc.projectAt)
	}
	e := entry{map[string]string{"mainnet": "production", "testnet": "staging", "signet": "staging"}[chain], chain}
	if e.prefix == "" {
		e.prefix = "dev"
	}
	im.warn(Warning{File: pf.Name}, "no DEPLOYMENT_STRING and not in a <prefix>-<chain> directory; the deployment is named %s", e.project())
	if chainAt != nil {
		return e, at(pf, chainAt)
	}
	return e, Warning{File: pf.Name}
}

func containsEntry(list []entry, e entry) bool {
	for _, x := range list {
		if x == e {
			return true
		}
	}
	return false
}

// projectConf is what project.conf says, before sites are attached.
type projectConf struct {
	file      *confFile
	dep       recipes.Deployment
	domainAt  *assignment
	others    []string
	othersAt  *assignment
	instances map[string]*assignment // "www.mac" -> its assignment
	rootAt    *assignment
}

func (im *importer) project(f *confFile, rc remoteConf) *projectConf {
	pc := &projectConf{file: f, instances: map[string]*assignment{}}
	var chain string
	chainAt := f.get("BITCOIN_CHAIN")
	if chainAt != nil && secretMessage(chainAt.Key) == "" {
		if chain = strings.TrimSpace(chainAt.Value); chain != "" && !chains[chain] {
			im.fail(at(f, chainAt), "%q is not a chain (mainnet, testnet, signet, regtest)", chain)
			chain = ""
		}
	}
	e, from := im.pickDeployment(f, rc, chain, chainAt)
	if chain != "" && chain != e.chain {
		im.fail(at(f, chainAt), "%s conflicts with deployment %s (chain %s); Sovereign Stack names each project <prefix>-<chain>: make them agree", chain, e.project(), e.chain)
	}
	pc.dep = recipes.Deployment{Name: e.prefix, Chain: e.chain}
	im.origins["deployments[0].name"] = from
	im.origins["deployments[0].chain"] = from
	im.origins["deployments[0]"] = Warning{File: f.Name}

	im.each(f, func(a *assignment) {
		switch a.Key {
		case "PRIMARY_DOMAIN":
			pc.dep.PrimaryDomain, pc.domainAt = im.value(f, a), a
			im.origins["deployments[0].primaryDomain"] = at(f, a)
		case "OTHER_SITES_LIST":
			pc.others, pc.othersAt = splitList(im.value(f, a)), a
		case "BITCOIN_CHAIN":
			im.value(f, a) // used above; this only warns about an expansion
		case "ROOT_DISK_SIZE_GB":
			pc.rootAt = a
		default:
			role, field, ok := instanceKey(a.Key)
			if !ok {
				im.other(f, projectFile, a)
				return
			}
			k := role + "." + field
			if prev := pc.instances[k]; prev != nil && strings.TrimSpace(prev.Value) != strings.TrimSpace(a.Value) {
				im.fail(at(f, a), "conflicts with %s (line %d), which sets the same thing under its other name; keep one", prev.Key, prev.Line)
				return
			}
			pc.instances[k] = a
		}
	})
	if pc.domainAt == nil || pc.dep.PrimaryDomain == "" {
		im.fail(Warning{File: f.Name, Line: lineOf(pc.domainAt), Key: "PRIMARY_DOMAIN"}, "missing; Sovereign Stack requires the primary domain")
	}
	return pc
}

func lineOf(a *assignment) int {
	if a == nil {
		return 0
	}
	return a.Line
}

// instances fills the deployment's instances from project.conf. Sovereign
// Stack creates a VM only when its MAC is set, so an empty MAC disables it.
func (im *importer) instances(pc *projectConf, clamsAt *Warning) {
	f := pc.file
	var root recipes.Size
	if a := pc.rootAt; a != nil {
		if n, ok := im.number(f, a, 1<<20); ok {
			root = recipes.Size(n) * recipes.GiB
		}
	}
	for _, role := range pc.dep.Instances.Roles() {
		in, p := role.Instance, "deployments[0].instances."+role.Name
		macKey := map[string]string{"www": "WWW_SERVER_MAC_ADDRESS", "btcpay": "BTCPAY_SERVER_MAC_ADDRESS", "clams": "CLAMS_SERVER_MAC_ADDRESS"}[role.Name]
		a := pc.instances[role.Name+".mac"]
		mac := ""
		if a != nil {
			mac = im.value(f, a)
			macKey = a.Key
		}
		switch {
		case mac != "":
			in.MAC = recipes.MAC(mac)
			im.origins[p+".mac"] = at(f, a)
		case role.Name == "clams" && clamsAt != nil:
			im.warn(*clamsAt, "the clams instance is enabled (DEPLOY_CLAMS=true) without a pinned MAC; set instances.clams.mac for a DHCP reservation")
		default:
			state := "not set"
			if a != nil {
				state = "empty"
			}
			off := false
			in.Enabled = &off
			im.warn(Warning{File: f.Name, Line: lineOf(a), Key: macKey}, "%s, so Sovereign Stack would not create the %s instance; imported as enabled: false", state, role.Name)
		}
		if a := pc.instances[role.Name+".cpus"]; a != nil {
			if n, ok := im.number(f, a, 1<<16); ok {
				in.CPUs = int(n)
				im.origins[p+".cpus"] = at(f, a)
			}
		}
		// Sovereign Stack's MB and GB were meant as MiB and GiB (4096 MB
		// of memory is 4 GiB), as in the recipe's default volume sizes.
		if a := pc.instances[role.Name+".memory"]; a != nil {
			if n, ok := im.number(f, a, 1<<30); ok {
				in.Memory = recipes.Size(n) * recipes.MiB
				im.origins[p+".memory"] = at(f, a)
			}
		}
		for _, d := range []struct {
			field string
			size  *recipes.Size
		}{{"data", &in.Disks.Data}, {"backup", &in.Disks.Backup}, {"docker", &in.Disks.Docker}} {
			field, size := d.field, d.size
			if a := pc.instances[role.Name+"."+field]; a != nil {
				if n, ok := im.number(f, a, 1<<20); ok {
					*size = recipes.Size(n) * recipes.GiB
					im.origins[p+".disks."+field] = at(f, a)
				}
			}
		}
		if root != 0 {
			in.Disks.Root = root
			im.origins[p+".disks.root"] = at(f, pc.rootAt)
		}
	}
}

// number reads a whole number from 1 to max. Zero is refused because the
// recipe would read it as "use the default".
func (im *importer) number(f *confFile, a *assignment, max int64) (int64, bool) {
	v := im.value(f, a)
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 || n > max {
		im.fail(at(f, a), "%q is not a whole number from 1 to %d", v, max)
		return 0, false
	}
	return n, true
}

// siteConf is one imported site.conf.
type siteConf struct {
	file    *confFile
	site    recipes.Site
	at      Warning            // DOMAIN_NAME
	origins map[string]Warning // site field -> location
	clams   *Warning           // DEPLOY_CLAMS=true
}

func (im *importer) site(f *confFile) *siteConf {
	sc := &siteConf{file: f, origins: map[string]Warning{}, at: Warning{File: f.Name},
		site: recipes.Site{Languages: []string{"en"}, BTCPayAltNames: []string{}}}
	// Sovereign Stack's site.conf stub: Ghost on, everything else off.
	services := map[string]bool{"ghost": true}
	serviceAt := map[string]*assignment{}
	var pubkey string
	var pubkeyAt *assignment
	im.each(f, func(a *assignment) {
		switch a.Key {
		case "DOMAIN_NAME":
			sc.site.Domain, sc.at = im.value(f, a), at(f, a)
		case "BTCPAY_ALT_NAMES":
			sc.site.BTCPayAltNames = splitList(im.value(f, a))
			sc.origins["btcpayAltNames"] = at(f, a)
		case "SITE_LANGUAGE_CODES":
			if langs := splitList(im.value(f, a)); len(langs) > 0 {
				sc.site.Languages = langs
			} else {
				im.warn(at(f, a), "empty; Sovereign Stack's default en is used")
			}
			sc.origins["languages"] = at(f, a)
		case "DEPLOY_GHOST", "DEPLOY_NEXTCLOUD", "DEPLOY_GITEA", "DEPLOY_NOSTR", "DEPLOY_NOSTR_RELAY":
			svc := map[string]string{"DEPLOY_GHOST": "ghost", "DEPLOY_NEXTCLOUD": "nextcloud", "DEPLOY_GITEA": "gitea",
				"DEPLOY_NOSTR": "nostr-relay", "DEPLOY_NOSTR_RELAY": "nostr-relay"}[a.Key]
			on, ok := im.boolean(f, a)
			if !ok {
				return
			}
			if prev := serviceAt[svc]; prev != nil && services[svc] != on {
				im.fail(at(f, a), "conflicts with %s (line %d), which sets the same thing under its other name; keep one", prev.Key, prev.Line)
				return
			}
			services[svc], serviceAt[svc] = on, a
		case "DEPLOY_CLAMS":
			if on, ok := im.boolean(f, a); ok && on {
				w := at(f, a)
				sc.clams = &w
			} else if ok {
				im.warn(at(f, a), "not mapped: the clams instance is set by CLAMS_SERVER_MAC_ADDRESS in project.conf")
			}
		case "NOSTR_ACCOUNT_PUBKEY":
			pubkey, pubkeyAt = im.value(f, a), a
		default:
			im.other(f, siteFile, a)
		}
	})
	for _, svc := range []string{"ghost", "nextcloud", "gitea", "nostr-relay"} {
		if services[svc] {
			sc.site.Services = append(sc.site.Services, svc)
		}
	}
	if sc.site.Services == nil {
		sc.site.Services = []string{}
	}
	if a := serviceAt["nostr-relay"]; a != nil {
		sc.origins["services"] = at(f, a)
		sc.origins["nostrOwnerPubkey"] = at(f, a)
	} else if a := serviceAt["ghost"]; a != nil {
		sc.origins["services"] = at(f, a)
	}
	switch {
	case pubkey != "" && services["nostr-relay"]:
		sc.site.NostrOwner = pubkey
		sc.origins["nostrOwnerPubkey"] = at(f, pubkeyAt)
	case pubkey != "":
		im.warn(at(f, pubkeyAt), "not mapped: the nostr relay is not deployed (DEPLOY_NOSTR is not true)")
	}
	if sc.site.Domain == "" {
		dir := filepath.Base(filepath.Dir(f.Name))
		if !strings.Contains(strings.Trim(dir, "."), ".") {
			im.fail(Warning{File: f.Name, Line: sc.at.Line, Key: "DOMAIN_NAME"}, "missing; a site.conf names its domain")
			return nil
		}
		sc.site.Domain = dir
		sc.at = Warning{File: f.Name, Key: "DOMAIN_NAME"}
		im.warn(sc.at, "not set; the site's directory name %s is used", dir)
	}
	return sc
}

// boolean reads true or false; empty is false, as in Sovereign Stack's
// `[ "$DEPLOY_X" = true ]`.
func (im *importer) boolean(f *confFile, a *assignment) (bool, bool) {
	switch v := im.value(f, a); v {
	case "true":
		return true, true
	case "false", "":
		return false, true
	default:
		im.fail(at(f, a), "%q is not true or false", v)
		return false, false
	}
}

// splitList reads a comma list, dropping blanks.
func splitList(s string) []string {
	out := []string{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// attachSites builds the deployment's site list: the primary domain, then
// OTHER_SITES_LIST, then any other site.conf given, each from its site.conf
// or with Sovereign Stack's defaults.
func (im *importer) attachSites(pc *projectConf, sites []*siteConf) {
	byDomain := map[string]*siteConf{}
	for _, sc := range sites {
		if prev, dup := byDomain[sc.site.Domain]; dup {
			im.fail(sc.at, "%s was already imported from %s", sc.site.Domain, prev.file.Name)
			continue
		}
		byDomain[sc.site.Domain] = sc
	}
	used := map[string]bool{}
	add := func(domain string, from Warning) {
		j := len(pc.dep.Sites)
		p := fmt.Sprintf("deployments[0].sites[%d]", j)
		sc := byDomain[domain]
		if sc == nil || used[domain] {
			pc.dep.Sites = append(pc.dep.Sites, recipes.Site{Domain: domain, Languages: []string{"en"},
				BTCPayAltNames: []string{}, Services: []string{"ghost"}})
			im.origins[p] = from
			if !used[domain] {
				im.warn(from, "no site.conf given for %s; imported with Sovereign Stack's site defaults (ghost, language en)", domain)
			}
			used[domain] = true
			return
		}
		used[domain] = true
		pc.dep.Sites = append(pc.dep.Sites, sc.site)
		im.origins[p] = Warning{File: sc.file.Name}
		im.origins[p+".domain"] = sc.at
		for field, loc := range sc.origins {
			im.origins[p+"."+field] = loc
		}
	}
	if pc.dep.PrimaryDomain != "" {
		add(pc.dep.PrimaryDomain, at(pc.file, pc.domainAt))
	}
	for _, d := range pc.others {
		add(d, at(pc.file, pc.othersAt))
	}
	for _, sc := range sites {
		if !used[sc.site.Domain] {
			im.warn(sc.at, "%s is neither PRIMARY_DOMAIN nor in OTHER_SITES_LIST of %s; added as a site of the deployment", sc.site.Domain, pc.file.Name)
			add(sc.site.Domain, sc.at)
		}
	}
}

// importSources maps parsed files onto the shipped default recipe.
func importSources(remote, project *source, sites []source) (*recipes.Recipe, []Warning, error) {
	im := &importer{origins: map[string]Warning{}, rank: map[string]int{}}
	parse := func(s source) *confFile {
		if _, ok := im.rank[s.name]; !ok {
			im.rank[s.name] = len(im.rank)
		}
		f, warns, errs := parseConf(s.name, s.data)
		im.warns = append(im.warns, warns...)
		im.errs = append(im.errs, errs...)
		return f
	}
	var rf, pf *confFile
	if remote != nil {
		rf = parse(*remote)
	}
	if project != nil {
		pf = parse(*project)
	}
	var sfs []*confFile
	for _, s := range sites {
		sfs = append(sfs, parse(s))
	}
	if len(im.errs) > 0 {
		return nil, im.warns, im.failure()
	}

	rc := remoteConf{file: &confFile{Name: "remote.conf"}}
	if rf != nil {
		rc = im.remote(rf)
	}
	var pc *projectConf
	if pf != nil {
		pc = im.project(pf, rc)
	}
	var scs []*siteConf
	var clamsAt *Warning
	for _, f := range sfs {
		if sc := im.site(f); sc != nil {
			scs = append(scs, sc)
			if sc.clams != nil && clamsAt == nil {
				clamsAt = sc.clams
			}
		}
	}
	deployments := []recipes.Deployment{}
	if pc != nil {
		im.instances(pc, clamsAt)
		im.attachSites(pc, scs)
		deployments = append(deployments, pc.dep)
		for _, e := range rc.entries {
			if e.prefix != pc.dep.Name || e.chain != pc.dep.Chain {
				im.warn(at(rc.file, rc.deployments), "(%s|%s) not imported: no project.conf given for %s; import it with its own project.conf", e.prefix, e.chain, e.project())
			}
		}
	} else {
		for _, e := range rc.entries {
			im.warn(at(rc.file, rc.deployments), "(%s|%s) not imported: no project.conf given for %s", e.prefix, e.chain, e.project())
		}
		for _, sc := range scs {
			im.warn(sc.at, "not imported: without a project.conf there is no deployment for %s", sc.site.Domain)
		}
	}
	if rc.projectAt != nil && !im.namedBy {
		im.warn(at(rc.file, rc.projectAt), "not mapped: the deployment is named by DEPLOYMENT_STRING or the project.conf directory")
	}
	if len(im.errs) > 0 {
		return nil, im.warns, im.failure()
	}

	r, err := im.build(rc, deployments)
	if err != nil {
		return nil, im.warns, err
	}
	return r, im.warns, nil
}

// build puts the deployments onto the shipped default recipe and lets the
// recipe loader apply defaults and validate, mapping its problems back to
// the keys the values came from.
func (im *importer) build(rc remoteConf, deployments []recipes.Deployment) (*recipes.Recipe, error) {
	r, err := recipes.Open(recipes.DefaultName)
	if err != nil {
		return nil, fmt.Errorf("import: shipped default recipe: %w", err)
	}
	r.Description = "Imported from a Sovereign Stack configuration."
	r.Image.RegistryMirror = rc.registry
	r.Deployments = deployments
	data, err := marshalSparse(r)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	out, err := recipes.Parse("imported recipe", data, "")
	if err == nil {
		return out, nil
	}
	problems := recipes.Problems(err)
	if problems == nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	seen := map[string]bool{}
	for _, p := range problems {
		loc := im.originOf(p.Path)
		loc.Message = p.Message
		if seen[loc.String()] { // one value can break two fields: primaryDomain and its site
			continue
		}
		seen[loc.String()] = true
		loc.Message = fmt.Sprintf("%s (recipe field %s)", p.Message, p.Path)
		im.errs = append(im.errs, loc)
	}
	return nil, im.failure()
}

// failure returns the errors in the order of the files and their lines.
func (im *importer) failure() error {
	sort.SliceStable(im.errs, func(i, j int) bool {
		a, b := im.errs[i], im.errs[j]
		if a.File != b.File {
			return im.rank[a.File] < im.rank[b.File]
		}
		return a.Line < b.Line
	})
	return &Error{im.errs}
}

// originOf finds the source of a recipe field, or of its closest parent.
func (im *importer) originOf(path string) Warning {
	for p := path; p != ""; {
		if w, ok := im.origins[p]; ok {
			return w
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return Warning{File: "imported recipe"}
}

// marshalSparse writes r without its zero numbers and empty strings, which
// the importer leaves for the recipe defaults to fill (the loader refuses
// a written 0). The importer never takes a 0 or an empty value from a user.
func marshalSparse(r *recipes.Recipe) ([]byte, error) {
	data, err := recipes.Marshal(r)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	dropZeros(doc.Content[0])
	return yaml.Marshal(doc.Content[0])
}

func dropZeros(n *yaml.Node) {
	if n.Kind == yaml.SequenceNode {
		for _, c := range n.Content {
			dropZeros(c)
		}
		return
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	var out []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		dropZeros(v)
		if v.Kind == yaml.ScalarNode && (v.Value == "" || v.Value == "0" || v.Value == "0B") ||
			v.Kind == yaml.MappingNode && len(v.Content) == 0 {
			continue
		}
		out = append(out, k, v)
	}
	n.Content = out
}

// hasUserinfo reports whether a URL carries user:password@.
func hasUserinfo(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && u.User != nil
}
