package ssimport

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/recipes"
)

// FuzzImport feeds arbitrary remote.conf, project.conf and site.conf text
// through the parser, the mapper and Render. It checks that nothing
// panics, that every failure is an *Error naming a file, that a successful
// import renders to a recipe that loads, and that secrets planted in every
// file never show up anywhere.
func FuzzImport(f *testing.F) {
	for _, in := range []Input{set2308, setHead, set2022} {
		read := func(p string) []byte {
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			return b
		}
		f.Add(read(in.Remote), read(in.Project), read(in.Sites[0]))
	}
	f.Add([]byte("DEPLOYMENT_STRING=\"(a|mainnet)\""), []byte("PRIMARY_DOMAIN=x.example\nBITCOIN_CHAIN=regtest"), []byte("DOMAIN_NAME=$(echo x)"))
	const (
		remoteSecret = "FZ-S3CRET-remote-7d1e"
		siteSecret   = "FZ-S3CRET-site-41ab"
		otherSecret  = "FZ-S3CRET-token-c90f"
	)
	f.Fuzz(func(t *testing.T, remote, project, site []byte) {
		for _, in := range [][]byte{remote, project, site} {
			if bytes.Contains(in, []byte("S3CRET")) {
				t.Skip("the input itself holds the planted secrets' marker")
			}
		}
		remote = append([]byte("LXD_REMOTE_PASSWORD='"+remoteSecret+"'\n"), remote...)
		site = append(site, "\nGHOST_MYSQL_PASSWORD=\""+siteSecret+"\"\nexport API_TOKEN="+otherSecret+"\n"...)
		var pr *source
		if len(project) > 0 {
			pr = &source{"projects/dev-regtest/project.conf", project}
		}
		in := Input{Remote: "remotes/r/remote.conf", Sites: []string{"sites/a.example/site.conf"}}
		r, warns, err := importSources(&source{in.Remote, remote}, pr, []source{{in.Sites[0], site}})
		texts := []string{}
		for _, w := range warns {
			texts = append(texts, w.String())
		}
		if err != nil {
			var ie *Error
			if !errors.As(err, &ie) || len(ie.Problems) == 0 {
				t.Fatalf("error is not an *Error with problems: %v", err)
			}
			for _, p := range ie.Problems {
				if p.File == "" || p.File == "imported recipe" {
					t.Errorf("problem not traced to a source file: %s", p)
				}
			}
			texts = append(texts, err.Error())
		} else {
			out, err := Render(r, in)
			if err != nil {
				t.Fatalf("Render of a successful import: %v", err)
			}
			if _, err := recipes.Parse("rendered", out, ""); err != nil {
				t.Fatalf("rendered recipe does not load: %v\n%s", err, out)
			}
			texts = append(texts, string(out))
		}
		for _, s := range texts {
			for _, secret := range []string{remoteSecret, siteSecret, otherSecret} {
				if strings.Contains(s, secret) {
					t.Fatalf("secret shown: %s", s)
				}
			}
		}
	})
}
