package ssimport

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/recipes"
)

// importText imports files given as text: remote.conf, a project.conf in
// the directory dev-regtest/, and site.conf files s1.conf, s2.conf, ...
func importText(remote, project string, sites ...string) (*recipes.Recipe, []Warning, error) {
	return importAt("dev-regtest/project.conf", remote, project, sites...)
}

func importAt(projectPath, remote, project string, sites ...string) (*recipes.Recipe, []Warning, error) {
	var rs, ps *source
	if remote != "" {
		rs = &source{"remote.conf", []byte(remote)}
	}
	if project != "" {
		ps = &source{projectPath, []byte(project)}
	}
	var ss []source
	for i, s := range sites {
		ss = append(ss, source{"s" + string(rune('1'+i)) + ".conf", []byte(s)})
	}
	return importSources(rs, ps, ss)
}

const (
	macs      = "WWW_SERVER_MAC_ADDRESS=02:00:00:00:00:01\nBTCPAY_SERVER_MAC_ADDRESS=02:00:00:00:00:02\nCLAMS_SERVER_MAC_ADDRESS=02:00:00:00:00:03\n"
	okProject = "PRIMARY_DOMAIN=a.example\n" + macs
	okSite    = "DOMAIN_NAME=a.example\nGHOST_MYSQL_PASSWORD=S3CRET-err-site\n"
)

type errCase struct {
	name                   string
	projectPath            string // default dev-regtest/project.conf
	remote, project        string
	sites                  []string
	wantErrs, wantWarnings []string
	check                  func(*testing.T, *recipes.Recipe) // on success
}

var errCases = []errCase{
	{name: "picked by BITCOIN_CHAIN",
		wantWarnings: []string{
			"project.conf: not in a <prefix>-<chain> directory; applied to deployment staging-testnet, the DEPLOYMENT_STRING entry on BITCOIN_CHAIN testnet",
			"project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
			"remote.conf:1: DEPLOYMENT_STRING: (dev|regtest) not imported: no project.conf given for dev-regtest; import it with its own project.conf",
		},
		projectPath: "project.conf", remote: "DEPLOYMENT_STRING=\"(dev|regtest),(staging|testnet)\"\n",
		project: okProject + "BITCOIN_CHAIN=testnet\n", check: wantProject("staging-testnet")},
	{name: "picked as the first entry",
		wantWarnings: []string{
			"project.conf: not in a <prefix>-<chain> directory; applied to deployment dev-regtest, the first entry of DEPLOYMENT_STRING",
			"project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
			"remote.conf:1: DEPLOYMENT_STRING: (staging|testnet) not imported: no project.conf given for staging-testnet; import it with its own project.conf",
		},
		projectPath: "project.conf", remote: "DEPLOYMENT_STRING=\"(dev|regtest),(staging|testnet)\"\n",
		project: okProject, check: wantProject("dev-regtest")},
	{name: "named after the chain",
		wantWarnings: []string{
			"project.conf: no DEPLOYMENT_STRING and not in a <prefix>-<chain> directory; the deployment is named production-mainnet",
			"project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
		projectPath: "project.conf", project: okProject + "BITCOIN_CHAIN=mainnet\n", check: wantProject("production-mainnet")},
	{name: "named after the default chain",
		wantWarnings: []string{
			"project.conf: no DEPLOYMENT_STRING and not in a <prefix>-<chain> directory; the deployment is named dev-regtest",
			"project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
		projectPath: "project.conf", project: okProject, check: wantProject("dev-regtest")},
	{name: "directory not in DEPLOYMENT_STRING",
		wantWarnings: []string{
			"remote.conf:1: DEPLOYMENT_STRING: does not list (dev|regtest); project.conf is in dev-regtest/, so that deployment is imported",
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
			"remote.conf:1: DEPLOYMENT_STRING: (prod|mainnet) not imported: no project.conf given for prod-mainnet; import it with its own project.conf",
		},
		remote: "DEPLOYMENT_STRING=\"(prod|mainnet)\"\n", project: okProject, check: wantProject("dev-regtest")},
	{name: "repeated and misplaced keys",
		wantWarnings: []string{
			"dev-regtest/project.conf:6: WWW_SERVER_CPU_COUNT: set again (first at line 5); the last value wins, as in the shell",
			"remote.conf:1: PRIMARY_DOMAIN: not mapped: it belongs in project.conf, not in remote.conf",
			"dev-regtest/project.conf:7: DOMAIN_NAME: not mapped: it belongs in site.conf, not in project.conf",
			"dev-regtest/project.conf:8: LANGUAGE_CODE: not mapped: not a Sovereign Stack setting this importer knows",
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
		remote:  "PRIMARY_DOMAIN=x.example\nREGISTRY_URL=\n",
		project: okProject + "WWW_SERVER_CPU_COUNT=2\nWWW_SERVER_CPU_COUNT=3\nDOMAIN_NAME=a.example\nLANGUAGE_CODE=en\n",
		check: func(t *testing.T, r *recipes.Recipe) {
			if got := r.Deployments[0].Instances.WWW.CPUs; got != 3 {
				t.Errorf("www cpus = %d, want 3 (the last assignment wins)", got)
			}
			if r.Image.RegistryMirror != "" {
				t.Errorf("an empty REGISTRY_URL set registryMirror %q", r.Image.RegistryMirror)
			}
		}},
	{name: "site details",
		wantWarnings: []string{
			"s1.conf:2: SITE_LANGUAGE_CODES: empty; Sovereign Stack's default en is used",
			"s1.conf:4: DEPLOY_CLAMS: not mapped: the clams instance is set by CLAMS_SERVER_MAC_ADDRESS in project.conf",
			"s1.conf:7: DEPLOY_CLBOSS_PLUGIN: not mapped: it had no effect in Sovereign Stack (the code that read it was commented out)",
			"s1.conf:3: NOSTR_ACCOUNT_PUBKEY: not mapped: the nostr relay is not deployed (DEPLOY_NOSTR is not true)",
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
			"s2.conf:1: DOMAIN_NAME: c.example is neither PRIMARY_DOMAIN nor in OTHER_SITES_LIST of dev-regtest/project.conf; added as a site of the deployment",
		},
		project: okProject + "OTHER_SITES_LIST=b.example\n", sites: []string{
			"DOMAIN_NAME=b.example\nSITE_LANGUAGE_CODES=\nNOSTR_ACCOUNT_PUBKEY=0ae90d42f0c168b0e5aa78dd870388e05e89d6d7403bd5ae6ddc4b144798540b\n" +
				"DEPLOY_CLAMS=false\nDEPLOY_GHOST=false\nexport BTCPAY_ALT_NAMES=' pay , tip ,'\nDEPLOY_CLBOSS_PLUGIN=true\n",
			"DOMAIN_NAME=c.example\nDEPLOY_NOSTR_RELAY=true\nNOSTR_ACCOUNT_PUBKEY=npub1pt5s6shsc95tped20rwcwqugup0gn4khgqaattndm393g3uc2s9svzv06y\nDEPLOY_GITEA=true\nDEPLOY_NEXTCLOUD=\n"},
		check: func(t *testing.T, r *recipes.Recipe) {
			want := []recipes.Site{
				{Domain: "a.example", Languages: []string{"en"}, BTCPayAltNames: []string{}, Services: []string{"ghost"}},
				{Domain: "b.example", Languages: []string{"en"}, BTCPayAltNames: []string{"pay", "tip"}, Services: []string{}},
				{Domain: "c.example", Languages: []string{"en"}, BTCPayAltNames: []string{}, Services: []string{"ghost", "gitea", "nostr-relay"},
					NostrOwner: "npub1pt5s6shsc95tped20rwcwqugup0gn4khgqaattndm393g3uc2s9svzv06y"},
			}
			if got := r.Deployments[0].Sites; !reflect.DeepEqual(got, want) {
				t.Errorf("sites:\n got %+v\nwant %+v", got, want)
			}
		}},
	{name: "no project.conf",
		wantWarnings: []string{
			"remote.conf:1: LXD_REMOTE_PASSWORD: secret not imported; ssbuild generates its own cluster secret (value not shown)",
			"s1.conf:2: GHOST_MYSQL_PASSWORD: secret not imported; ssbuild generates one per deployment (value not shown)",
			"remote.conf:2: DEPLOYMENT_STRING: (dev|regtest) not imported: no project.conf given for dev-regtest",
			"s1.conf:1: DOMAIN_NAME: not imported: without a project.conf there is no deployment for a.example",
		},
		remote: "LXD_REMOTE_PASSWORD=S3CRET-np\nDEPLOYMENT_STRING='(dev|regtest)'\nREGISTRY_URL=https://mirror.lan/\n", sites: []string{okSite},
		check: func(t *testing.T, r *recipes.Recipe) {
			if len(r.Deployments) != 0 || r.Image.RegistryMirror != "https://mirror.lan/" {
				t.Errorf("deployments %+v, registryMirror %q; want none and https://mirror.lan/", r.Deployments, r.Image.RegistryMirror)
			}
		}},
	{name: "registry login and unused PROJECT_NAME", remote: "REGISTRY_URL=https://bob:S3CRET-reg@registry.lan\nPROJECT_NAME=public\n", project: okProject,
		wantWarnings: []string{
			"remote.conf:1: REGISTRY_URL: not mapped: the URL holds a login, and a recipe holds no secrets (value not shown); set image.registryMirror to the URL without it",
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
			"remote.conf:2: PROJECT_NAME: not mapped: the deployment is named by DEPLOYMENT_STRING or the project.conf directory",
		},
		check: func(t *testing.T, r *recipes.Recipe) {
			if r.Image.RegistryMirror != "" {
				t.Errorf("registryMirror %q: a URL with a login was imported", r.Image.RegistryMirror)
			}
		}},
	{name: "no MAC keys at all",
		wantWarnings: []string{
			"dev-regtest/project.conf: WWW_SERVER_MAC_ADDRESS: not set, so Sovereign Stack would not create the www instance; imported as enabled: false",
			"dev-regtest/project.conf: BTCPAY_SERVER_MAC_ADDRESS: not set, so Sovereign Stack would not create the btcpay instance; imported as enabled: false",
			"dev-regtest/project.conf: CLAMS_SERVER_MAC_ADDRESS: not set, so Sovereign Stack would not create the clams instance; imported as enabled: false",
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
		project: "PRIMARY_DOMAIN=a.example\n", check: func(t *testing.T, r *recipes.Recipe) {
			for _, role := range r.Deployments[0].Instances.Roles() {
				if role.Instance.IsEnabled() {
					t.Errorf("%s is enabled without a MAC", role.Name)
				}
			}
		}},
	{name: "bad MAC", project: "PRIMARY_DOMAIN=a.example\nWWW_SERVER_MAC_ADDRESS=00:16:3e:zz:00:01\nBTCPAY_SERVER_MAC_ADDRESS=01:00:5e:00:00:01\nCLAMS_SERVER_MAC_ADDRESS=CHANGE_ME_REQUIRED\n",
		wantErrs: []string{
			"dev-regtest/project.conf:2: WWW_SERVER_MAC_ADDRESS: \"00:16:3e:zz:00:01\" is not a MAC address (six hex pairs, like 00:16:3e:12:34:56) (recipe field deployments[0].instances.www.mac)",
			"dev-regtest/project.conf:3: BTCPAY_SERVER_MAC_ADDRESS: \"01:00:5e:00:00:01\" is a multicast address; a NIC needs a unicast MAC (first byte even) (recipe field deployments[0].instances.btcpay.mac)",
			"dev-regtest/project.conf:4: CLAMS_SERVER_MAC_ADDRESS: \"CHANGE_ME_REQUIRED\" is not a MAC address (six hex pairs, like 00:16:3e:12:34:56) (recipe field deployments[0].instances.clams.mac)",
		},
		wantWarnings: []string{
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
	},
	{name: "duplicate MAC", project: "PRIMARY_DOMAIN=a.example\nWWW_SERVER_MAC_ADDRESS=02:00:00:00:00:01\nBTCPAY_SERVER_MAC_ADDRESS=02-00-00-00-00-01\nCLAMS_SERVER_MAC_ADDRESS=\n",
		wantErrs: []string{
			"dev-regtest/project.conf:3: BTCPAY_SERVER_MAC_ADDRESS: 02:00:00:00:00:01 is already the MAC of deployments[0].instances.www.mac; every NIC needs its own (recipe field deployments[0].instances.btcpay.mac)",
		},
		wantWarnings: []string{
			"dev-regtest/project.conf:4: CLAMS_SERVER_MAC_ADDRESS: empty, so Sovereign Stack would not create the clams instance; imported as enabled: false",
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
	},
	{name: "bad domains", project: "PRIMARY_DOMAIN=Example_.com\nOTHER_SITES_LIST=ok.example,not-a-domain\n" + macs, sites: []string{"DOMAIN_NAME=bad..example\n"},
		wantErrs: []string{
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: \"Example_.com\" is not a domain name (lower-case labels separated by dots, like example.com) (recipe field deployments[0].primaryDomain)",
			"dev-regtest/project.conf:2: OTHER_SITES_LIST: \"not-a-domain\" is not a domain name (lower-case labels separated by dots, like example.com) (recipe field deployments[0].sites[2].domain)",
			"s1.conf:1: DOMAIN_NAME: \"bad..example\" is not a domain name (lower-case labels separated by dots, like example.com) (recipe field deployments[0].sites[3].domain)",
		},
		wantWarnings: []string{
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for Example_.com; imported with Sovereign Stack's site defaults (ghost, language en)",
			"dev-regtest/project.conf:2: OTHER_SITES_LIST: no site.conf given for ok.example; imported with Sovereign Stack's site defaults (ghost, language en)",
			"dev-regtest/project.conf:2: OTHER_SITES_LIST: no site.conf given for not-a-domain; imported with Sovereign Stack's site defaults (ghost, language en)",
			"s1.conf:1: DOMAIN_NAME: bad..example is neither PRIMARY_DOMAIN nor in OTHER_SITES_LIST of dev-regtest/project.conf; added as a site of the deployment",
		},
	},
	{name: "bad numbers", project: okProject + "WWW_SERVER_CPU_COUNT=six\nBTCPAY_SERVER_CPU_COUNT=0\nCLAMS_SERVER_MEMORY_MB=100\nWWW_DOCKER_DISK_SIZE_GB=-5\nBTCPAY_BACKUP_DISK_SIZE_GB=0\nROOT_DISK_SIZE_GB=99999999999\nLNPLAY_SERVER_CPU_COUNT=512\n",
		wantErrs: []string{
			"dev-regtest/project.conf:5: WWW_SERVER_CPU_COUNT: \"six\" is not a whole number from 1 to 65536",
			"dev-regtest/project.conf:6: BTCPAY_SERVER_CPU_COUNT: \"0\" is not a whole number from 1 to 65536",
			"dev-regtest/project.conf:8: WWW_DOCKER_DISK_SIZE_GB: \"-5\" is not a whole number from 1 to 1048576",
			"dev-regtest/project.conf:9: BTCPAY_BACKUP_DISK_SIZE_GB: \"0\" is not a whole number from 1 to 1048576",
			"dev-regtest/project.conf:10: ROOT_DISK_SIZE_GB: \"99999999999\" is not a whole number from 1 to 1048576",
		},
		wantWarnings: []string{
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
	},
	{name: "bad booleans", project: okProject, sites: []string{"DOMAIN_NAME=a.example\nDEPLOY_GITEA=yes\nDEPLOY_GHOST=TRUE\n"},
		wantErrs: []string{
			"s1.conf:2: DEPLOY_GITEA: \"yes\" is not true or false",
			"s1.conf:3: DEPLOY_GHOST: \"TRUE\" is not true or false",
		},
	},
	{name: "chain conflict", remote: "DEPLOYMENT_STRING=\"(dev|regtest)\"\n", project: okProject + "BITCOIN_CHAIN=mainnet\n",
		wantErrs: []string{
			"dev-regtest/project.conf:5: BITCOIN_CHAIN: mainnet conflicts with deployment dev-regtest (chain regtest); Sovereign Stack names each project <prefix>-<chain>: make them agree",
		},
		wantWarnings: []string{
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
	},
	{name: "bad chain", project: okProject + "BITCOIN_CHAIN=bitcoin\n",
		wantErrs: []string{
			"dev-regtest/project.conf:5: BITCOIN_CHAIN: \"bitcoin\" is not a chain (mainnet, testnet, signet, regtest)",
		},
		wantWarnings: []string{
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
	},
	{name: "bad DEPLOYMENT_STRING", remote: "DEPLOYMENT_STRING=\"(dev|regtest),staging,(prod|bitcoin),(dev|regtest),(|regtest)\"\n", project: okProject,
		wantErrs: []string{
			"remote.conf:1: DEPLOYMENT_STRING: \"staging\" is not a (prefix|chain) entry, like (dev|regtest)",
			"remote.conf:1: DEPLOYMENT_STRING: \"(prod|bitcoin)\": \"bitcoin\" is not a chain (mainnet, testnet, signet, regtest)",
			"remote.conf:1: DEPLOYMENT_STRING: \"(dev|regtest)\" is listed twice",
			"remote.conf:1: DEPLOYMENT_STRING: \"(|regtest)\" is not a (prefix|chain) entry, like (dev|regtest)",
		},
		wantWarnings: []string{
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
	},
	{name: "bad deployment prefix", projectPath: "project.conf", remote: "DEPLOYMENT_STRING=\"(Dev_1|regtest)\"\n", project: "PRIMARY_DOMAIN=a.example\n" + macs,
		wantErrs: []string{
			"remote.conf:1: DEPLOYMENT_STRING: \"Dev_1\" is not a valid name (lower-case letters, digits and dashes) (recipe field deployments[0].name)",
		},
		wantWarnings: []string{
			"project.conf: not in a <prefix>-<chain> directory; applied to deployment Dev_1-regtest, the first entry of DEPLOYMENT_STRING",
			"project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
	},
	{name: "aliases disagree", project: okProject + "LNPLAY_SERVER_MAC_ADDRESS=02:00:00:00:00:09\nBTCPAYSERVER_MAC_ADDRESS=02:00:00:00:00:02\n", sites: []string{"DOMAIN_NAME=a.example\nDEPLOY_NOSTR=true\nDEPLOY_NOSTR_RELAY=false\n"},
		wantErrs: []string{
			"dev-regtest/project.conf:5: LNPLAY_SERVER_MAC_ADDRESS: conflicts with CLAMS_SERVER_MAC_ADDRESS (line 4), which sets the same thing under its other name; keep one",
			"s1.conf:3: DEPLOY_NOSTR_RELAY: conflicts with DEPLOY_NOSTR (line 2), which sets the same thing under its other name; keep one",
		},
	},
	{name: "missing primary domain", project: macs,
		wantErrs: []string{
			"dev-regtest/project.conf: PRIMARY_DOMAIN: missing; Sovereign Stack requires the primary domain",
		},
	},
	{name: "empty primary domain", project: "PRIMARY_DOMAIN=\n" + macs,
		wantErrs: []string{
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: missing; Sovereign Stack requires the primary domain",
		},
	},
	{name: "parse errors", remote: "LXD_REMOTE_PASSWORD=\"S3CRET-unterminated\nREGISTRY_URL = http://x\n", project: "just some words S3CRET-words\nPRIMARY_DOMAIN=a.example b.example\nOTHER_SITES_LIST=x;y\nWWW_SERVER_CPU_COUNT+=1\nGITEA_MYSQL_PASSWORD='S3CRET-q\nDUPLICITY_BACKUP_PASSPHRASE=S3CRET-cont\\\n=S3CRET-noval\nCLAMS_SERVER_MAC_ADDRESS=$(cat mac\n",
		wantErrs: []string{
			"remote.conf:1: LXD_REMOTE_PASSWORD: unterminated \" quote (values spanning lines are not supported)",
			"remote.conf:2: REGISTRY_URL: spaces around = are not allowed (the shell would run REGISTRY_URL as a command); write KEY=value",
			"dev-regtest/project.conf:1: not a KEY=value line",
			"dev-regtest/project.conf:2: PRIMARY_DOMAIN: unquoted space in the value (the shell would run the rest as a command); quote the value",
			"dev-regtest/project.conf:3: OTHER_SITES_LIST: shell syntax (;) after or in the value is not supported; one plain KEY=value per line",
			"dev-regtest/project.conf:4: WWW_SERVER_CPU_COUNT: += (append) is not supported; write KEY=value",
			"dev-regtest/project.conf:5: GITEA_MYSQL_PASSWORD: unterminated ' quote (values spanning lines are not supported)",
			"dev-regtest/project.conf:6: DUPLICITY_BACKUP_PASSPHRASE: line continuation (\\ at the end) is not supported",
			"dev-regtest/project.conf:7: not a KEY=value line",
			"dev-regtest/project.conf:8: CLAMS_SERVER_MAC_ADDRESS: unterminated command substitution",
		},
	},
	{name: "not UTF-8", project: "PRIMARY_DOMAIN=a.example\nGHOST_MYSQL_PASSWORD=S3CRET-\xff\xfe\n",
		wantErrs: []string{
			"dev-regtest/project.conf:2: not UTF-8 text",
		},
	},
	{name: "nostr", project: okProject + "OTHER_SITES_LIST=b.example\n", sites: []string{"DOMAIN_NAME=a.example\nDEPLOY_NOSTR=true\n", "DOMAIN_NAME=b.example\nDEPLOY_NOSTR=true\nNOSTR_ACCOUNT_PUBKEY=npub1qqqq\n"},
		wantErrs: []string{
			"s1.conf:2: DEPLOY_NOSTR: missing; the nostr-relay service accepts only its owner's events, so it needs the owner's pubkey (npub1... or 64 hex digits) (recipe field deployments[0].sites[0].nostrOwnerPubkey)",
			"s2.conf:3: NOSTR_ACCOUNT_PUBKEY: \"npub1qqqq\" is not a valid npub: malformed bech32 (recipe field deployments[0].sites[1].nostrOwnerPubkey)",
		},
	},
	{name: "bad site lists", project: okProject, sites: []string{"DOMAIN_NAME=a.example\nSITE_LANGUAGE_CODES=english,en,en\nBTCPAY_ALT_NAMES=Pay!,tip\n"},
		wantErrs: []string{
			"s1.conf:2: SITE_LANGUAGE_CODES: \"english\" is not a two-letter language code (ISO 639-1, like en or es) (recipe field deployments[0].sites[0].languages[0])",
			"s1.conf:2: SITE_LANGUAGE_CODES: \"en\" is already listed at deployments[0].sites[0].languages[1] (recipe field deployments[0].sites[0].languages[2])",
			"s1.conf:3: BTCPAY_ALT_NAMES: \"Pay!\" is not a host name label (like pay or tip) (recipe field deployments[0].sites[0].btcpayAltNames[0])",
		},
	},
	{name: "bad registry", remote: "REGISTRY_URL=ftp://registry.lan\n", project: okProject,
		wantErrs: []string{
			"remote.conf:1: REGISTRY_URL: \"ftp://registry.lan\" is not a URL (http, https) (recipe field image.registryMirror)",
		},
		wantWarnings: []string{
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
	},
	{name: "same site twice", project: okProject, sites: []string{okSite, okSite},
		wantErrs: []string{
			"s2.conf:1: DOMAIN_NAME: a.example was already imported from s1.conf",
		},
		wantWarnings: []string{
			"s1.conf:2: GHOST_MYSQL_PASSWORD: secret not imported; ssbuild generates one per deployment (value not shown)",
			"s2.conf:2: GHOST_MYSQL_PASSWORD: secret not imported; ssbuild generates one per deployment (value not shown)",
		},
	},
	{name: "site without domain", project: okProject, sites: []string{"DEPLOY_GHOST=true\n"},
		wantErrs: []string{
			"s1.conf: DOMAIN_NAME: missing; a site.conf names its domain",
		},
		wantWarnings: []string{
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for a.example; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
	},
	{name: "unevaluated expansion", project: "PRIMARY_DOMAIN=\"$(hostname -d)\"\n" + macs + "OTHER_SITES_LIST=`cat sites`\n",
		wantErrs: []string{
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: \"$(hostname -d)\" is not a domain name (lower-case labels separated by dots, like example.com) (recipe field deployments[0].primaryDomain)",
			"dev-regtest/project.conf:5: OTHER_SITES_LIST: \"`cat sites`\" is not a domain name (lower-case labels separated by dots, like example.com) (recipe field deployments[0].sites[1].domain)",
		},
		wantWarnings: []string{
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: the value holds a shell expansion ($... or `...`) that was not run; it is taken literally",
			"dev-regtest/project.conf:5: OTHER_SITES_LIST: the value holds a shell expansion ($... or `...`) that was not run; it is taken literally",
			"dev-regtest/project.conf:1: PRIMARY_DOMAIN: no site.conf given for $(hostname -d); imported with Sovereign Stack's site defaults (ghost, language en)",
			"dev-regtest/project.conf:5: OTHER_SITES_LIST: no site.conf given for `cat sites`; imported with Sovereign Stack's site defaults (ghost, language en)",
		},
	},
}

func TestImportCases(t *testing.T) {
	for _, c := range errCases {
		t.Run(c.name, func(t *testing.T) {
			if c.projectPath == "" {
				c.projectPath = "dev-regtest/project.conf"
			}
			r, warns, err := importAt(c.projectPath, c.remote, c.project, c.sites...)
			checkWarnings(t, warns, c.wantWarnings)
			for _, w := range warns {
				noSecrets(t, w.String(), "a warning")
			}
			if c.wantErrs == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				out, err := Render(r, Input{Remote: "remote.conf"})
				if err != nil {
					t.Fatalf("Render: %v", err)
				}
				noSecrets(t, string(out), "the rendered recipe")
				if c.check != nil {
					c.check(t, r)
				}
				return
			}
			var ie *Error
			if !errors.As(err, &ie) {
				t.Fatalf("error %v is not an *Error", err)
			}
			if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(c.wantErrs, "\n") {
				t.Errorf("errors:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(c.wantErrs, "\n     "))
			}
			noSecrets(t, err.Error(), "an error")
			if r != nil {
				t.Errorf("a recipe was returned with the error")
			}
		})
	}
}

func wantProject(p string) func(*testing.T, *recipes.Recipe) {
	return func(t *testing.T, r *recipes.Recipe) {
		if len(r.Deployments) != 1 || r.Deployments[0].Project() != p {
			t.Errorf("deployments %+v, want one: %s", r.Deployments, p)
		}
	}
}
