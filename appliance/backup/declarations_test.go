package backup

import (
	"slices"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/appliance/stack"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// TestSovereignDeclarations: the real stack dumps every database (MySQL of
// Ghost, Nextcloud, Gitea; BTCPay's and NBXplorer's PostgreSQL) and keeps
// each Lightning node's seed and static channel backup, while its live
// channel database is declared never-restore and copied by nothing.
func TestSovereignDeclarations(t *testing.T) {
	r, err := recipes.Open("default")
	if err != nil {
		t.Fatal(err)
	}
	d := r.Deployments[0]
	var dumps, kept, never []string
	for _, role := range stack.Roles(d) {
		st, err := declarations(r, d, role)
		if err != nil {
			t.Fatal(err)
		}
		for _, svc := range st.Services {
			b := svc.Backup
			if b == nil {
				continue
			}
			if b.Dump != nil {
				dumps = append(dumps, role+"/"+svc.Name+" "+strings.Join(b.Dump.Command, " "))
			}
			for _, p := range b.Volumes {
				kept = append(kept, role+"/"+svc.Name+" "+p.String())
			}
			for _, p := range b.NeverRestore {
				never = append(never, role+"/"+svc.Name+" "+p.String())
			}
		}
	}
	t.Logf("dumps:\n  %s\nkept:\n  %s\nnever restored:\n  %s", strings.Join(dumps, "\n  "), strings.Join(kept, "\n  "), strings.Join(never, "\n  "))
	count := func(list []string, sub string) int {
		n := 0
		for _, s := range list {
			if strings.Contains(s, sub) {
				n++
			}
		}
		return n
	}
	if count(dumps, "mysqldump") < 3 || count(dumps, "btcpay/postgres pg_dumpall") != 1 {
		t.Errorf("dumps: want mysqldump for Ghost, Nextcloud, Gitea and pg_dumpall for BTCPay's PostgreSQL")
	}
	for _, role := range []string{"btcpay", "clams"} {
		if !slices.Contains(stack.Roles(d), role) {
			continue
		}
		for _, f := range []string{"/bitcoin/hsm_secret", "/bitcoin/emergency.recover"} {
			if count(kept, role+"/lightningd lightning-data:"+f) != 1 {
				t.Errorf("%s's lightningd: %s is not kept", role, f)
			}
		}
		if count(never, role+"/lightningd lightning-data:/bitcoin/lightningd.sqlite3") != 1 {
			t.Errorf("%s's lightningd: the live channel DB is not declared never-restore", role)
		}
	}
	if n := count(kept, "lightningd.sqlite3"); n != 0 {
		t.Errorf("a backup would copy the live channel DB (%d entries)", n)
	}
	for _, k := range kept {
		if strings.HasSuffix(k, "lightning-data:/") {
			t.Errorf("%s: the whole Lightning volume (with its live channel DB) would be copied", k)
		}
	}
}
