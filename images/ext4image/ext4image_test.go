package ext4image

import (
	"os"
	"strings"
	"testing"
)

func TestDebugfsScriptQuotes(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{`with space`, `with"quote`} {
		if err := os.WriteFile(dir+"/"+name, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script, err := TimesScript(dir, 7)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`sif "/" mtime @7`, `sif "/with space" atime @7`, `sif "/with""quote" ctime @7`} {
		if !strings.Contains(string(script), want+"\n") {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
}
