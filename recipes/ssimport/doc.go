// Package ssimport converts an existing Sovereign Stack configuration (the
// shell-style remote.conf, project.conf and site.conf files, and their
// 2022/v0.0.23 predecessors cluster_definition, project_definition and
// site_definition) into a recipe. It backs `ssbuild recipe import`.
//
// Nothing in the files is executed: `$(...)`, `$VAR` and backticks are
// taken literally, with a warning when the value is used. The statements
// bash-sourced files hold besides assignments (set -e, source, if/else/fi)
// are skipped with a warning; the assignments inside an if are read as if
// it held. Comments are ignored. Every warning and error names file:line
// and the key.
//
// Secrets (LXD_REMOTE_PASSWORD, the MySQL passwords, the duplicity
// passphrase, SMTP and registry passwords, and any unknown key that looks
// like a secret) are dropped by key before anything else looks at them: a
// recipe never holds secrets, and no value of theirs reaches a warning, an
// error or the output.
//
// Mapping decisions:
//
//   - Base: the shipped default recipe. Its image, installer and cluster
//     sections are kept (Sovereign Stack has no counterpart for hosts or the
//     installer); its example deployment is replaced by the imported one.
//   - DEPLOYMENT_STRING "(prefix|chain),..." lists the LXD projects
//     <prefix>-<chain>. Only the deployment described by the given
//     project.conf is imported (a deployment needs its primary domain);
//     each other entry gets a warning.
//   - Which deployment project.conf describes: the <prefix>-<chain> name of
//     its directory (Sovereign Stack keeps it in ~/ss/projects/<project>/),
//     else the DEPLOYMENT_STRING entry on its BITCOIN_CHAIN, else the first
//     entry, else (no DEPLOYMENT_STRING) PROJECT_NAME (2022) or a name from
//     the chain: production-mainnet, staging-testnet/signet, dev-regtest.
//     Every guess is a warning; a BITCOIN_CHAIN that contradicts the chosen
//     deployment's chain is an error.
//   - An empty or missing *_SERVER_MAC_ADDRESS disables that instance
//     (Sovereign Stack creates a VM only when its MAC is set), with a
//     warning. BTCPAYSERVER_MAC_ADDRESS is the old name of
//     BTCPAY_SERVER_MAC_ADDRESS; LNPLAY_* and CLAMS_* both map to the clams
//     instance. Two names for one setting with different values is an error.
//   - *_SERVER_MEMORY_MB is read as MiB and *_DISK_SIZE_GB as GiB (what
//     Sovereign Stack meant: 4096 MB of memory is 4 GiB; the recipe's
//     default volume sizes read Sovereign Stack's GB the same way).
//     ROOT_DISK_SIZE_GB (2022) sets every instance's root disk. A 0 is an
//     error, since a recipe reads "unset" as "use the default".
//   - REGISTRY_URL becomes image.registryMirror unless it is Docker Hub or
//     holds a login (user:password@, a secret).
//   - Each site.conf becomes the site of its DOMAIN_NAME (or, without one,
//     of its directory name). The sites are the primary domain, then
//     OTHER_SITES_LIST, then any other site.conf given (with a warning); a
//     domain without a site.conf gets Sovereign Stack's site defaults
//     (Ghost only, language en), with a warning.
//   - DEPLOY_GHOST/NEXTCLOUD/GITEA/NOSTR (2022: DEPLOY_NOSTR_RELAY) become
//     the site's services; unset means Sovereign Stack's stub value (Ghost
//     on, the rest off); a value other than true, false or empty is an
//     error. NOSTR_ACCOUNT_PUBKEY becomes the relay owner when the relay is
//     deployed. DEPLOY_CLAMS=true (v0.0.23) enables the clams instance.
//   - Everything else (DEPLOY_CLBOSS_PLUGIN, the SMTP keys, 2022 keys with
//     no counterpart, keys put in the wrong file, unknown keys) is a
//     "not mapped: why" warning.
//
// Values are checked by the recipe loader itself (recipes.Parse), and its
// problems are reported against the key each value came from.
package ssimport
