package ssimport

import (
	"regexp"
	"strings"
)

// Messages for secrets. The value is never read into anything that could
// be printed: secrets are dropped by key, before any other check.
const (
	msgClusterSecret = "secret not imported; ssbuild generates its own cluster secret (value not shown)"
	msgSiteSecret    = "secret not imported; ssbuild generates one per deployment (value not shown)"
	msgOtherSecret   = "secret not imported; ssbuild has no setting for it (value not shown)"
)

// secretKeys are Sovereign Stack's known secrets and what ssbuild does
// instead.
var secretKeys = map[string]string{
	"LXD_REMOTE_PASSWORD":           msgClusterSecret,
	"LXD_CLUSTER_PASSWORD":          msgClusterSecret, // 2022 cluster_definition
	"DUPLICITY_BACKUP_PASSPHRASE":   msgSiteSecret,
	"GHOST_MYSQL_PASSWORD":          msgSiteSecret,
	"GHOST_MYSQL_ROOT_PASSWORD":     msgSiteSecret,
	"NEXTCLOUD_MYSQL_PASSWORD":      msgSiteSecret,
	"NEXTCLOUD_MYSQL_ROOT_PASSWORD": msgSiteSecret,
	"GITEA_MYSQL_PASSWORD":          msgSiteSecret,
	"GITEA_MYSQL_ROOT_PASSWORD":     msgSiteSecret,
	"MAILGUN_SMTP_PASSWORD":         msgOtherSecret,
	"REGISTRY_PASSWORD":             msgOtherSecret, // 2022 cluster_definition
}

// secretish catches secrets the tables do not know, so that an unknown key
// holding a password is not echoed back as "not mapped".
var secretish = regexp.MustCompile(`PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|PRIVATE|NSEC|_KEY$|_PASS$|_PSK$`)

// secretMessage returns the warning for a secret key, or "".
func secretMessage(key string) string {
	up := strings.ToUpper(key)
	if m, ok := secretKeys[up]; ok {
		return m
	}
	if secretish.MatchString(up) {
		return msgOtherSecret
	}
	return ""
}

// notMapped are keys of Sovereign Stack (any version) that have no
// counterpart in a recipe, with the reason given to the user.
var notMapped = map[string]string{
	"REGISTRY_USERNAME":           "ssbuild pre-loads Docker images into the base image; registry logins are not supported",
	"SOVEREIGN_STACK_MAC_ADDRESS": "the 2022 single-VM MAC has no counterpart; pin instance MACs with *_SERVER_MAC_ADDRESS in project.conf and host MACs under installer.hosts",
	"DEPLOY_CLBOSS_PLUGIN":        "it had no effect in Sovereign Stack (the code that read it was commented out)",
	"GHOST_DEPLOY_SMTP":           "ssbuild does not configure Ghost mail (SMTP)",
	"MAILGUN_FROM_ADDRESS":        "ssbuild does not configure Ghost mail (SMTP)",
	"MAILGUN_SMTP_USERNAME":       "ssbuild does not configure Ghost mail (SMTP)",
	"DEPLOY_ONION_SITE":           "ssbuild deploys no Tor onion site",
	"DEPLOY_MGMT_REGISTRY":        "ssbuild pre-loads Docker images into the base image; no registry instance is needed",
	"NEXTCLOUD_SPACE_GB":          "Nextcloud data lives on the www data volume; size it with WWW_SSDATA_DISK_SIZE_GB",
	"VLAN_INTERFACE":              "it was unused in Sovereign Stack; networks are set under cluster.networks",
}

// fileKind is which of the three config files a key belongs to.
type fileKind int

const (
	remoteFile fileKind = iota
	projectFile
	siteFile
)

func (k fileKind) String() string {
	return [...]string{"remote.conf", "project.conf", "site.conf"}[k]
}

var (
	remoteKeys = set("DEPLOYMENT_STRING", "REGISTRY_URL", "PROJECT_NAME")
	siteKeys   = set("DOMAIN_NAME", "BTCPAY_ALT_NAMES", "SITE_LANGUAGE_CODES", "DEPLOY_GHOST", "DEPLOY_NEXTCLOUD",
		"DEPLOY_NOSTR", "DEPLOY_NOSTR_RELAY", "DEPLOY_GITEA", "DEPLOY_CLAMS", "NOSTR_ACCOUNT_PUBKEY")
	projectKeys = set("PRIMARY_DOMAIN", "OTHER_SITES_LIST", "BITCOIN_CHAIN", "ROOT_DISK_SIZE_GB", "BTCPAYSERVER_MAC_ADDRESS")
)

// instanceKeyRe matches the per-instance keys of project.conf; LNPLAY is
// the later name of CLAMS.
var instanceKeyRe = regexp.MustCompile(`^(WWW|BTCPAY|CLAMS|LNPLAY)_(SERVER_MAC_ADDRESS|SERVER_CPU_COUNT|SERVER_MEMORY_MB|SSDATA_DISK_SIZE_GB|BACKUP_DISK_SIZE_GB|DOCKER_DISK_SIZE_GB)$`)

// instanceKey splits a per-instance key into the recipe role and field
// (mac, cpus, memory, data, backup, docker).
func instanceKey(key string) (role, field string, ok bool) {
	if key == "BTCPAYSERVER_MAC_ADDRESS" { // v0.0.23 project_definition
		return "btcpay", "mac", true
	}
	m := instanceKeyRe.FindStringSubmatch(key)
	if m == nil {
		return "", "", false
	}
	role = map[string]string{"WWW": "www", "BTCPAY": "btcpay", "CLAMS": "clams", "LNPLAY": "clams"}[m[1]]
	field = map[string]string{"SERVER_MAC_ADDRESS": "mac", "SERVER_CPU_COUNT": "cpus", "SERVER_MEMORY_MB": "memory",
		"SSDATA_DISK_SIZE_GB": "data", "BACKUP_DISK_SIZE_GB": "backup", "DOCKER_DISK_SIZE_GB": "docker"}[m[2]]
	return role, field, true
}

// kindOf says which file a mapped key belongs in.
func kindOf(key string) (fileKind, bool) {
	switch {
	case remoteKeys[key]:
		return remoteFile, true
	case siteKeys[key]:
		return siteFile, true
	case projectKeys[key]:
		return projectFile, true
	}
	if _, _, ok := instanceKey(key); ok {
		return projectFile, true
	}
	return 0, false
}

func set(keys ...string) map[string]bool {
	m := map[string]bool{}
	for _, k := range keys {
		m[k] = true
	}
	return m
}
