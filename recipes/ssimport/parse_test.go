package ssimport

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseLine(t *testing.T) {
	for _, c := range []struct {
		line       string
		key, value string
		uneval     bool
		err        string
	}{
		{line: "KEY=value", key: "KEY", value: "value"},
		{line: `KEY="value"`, key: "KEY", value: "value"},
		{line: `KEY='value'`, key: "KEY", value: "value"},
		{line: "  export KEY=value", key: "KEY", value: "value"},
		{line: "export\tKEY='a b'", key: "KEY", value: "a b"},
		{line: "KEY=", key: "KEY", value: ""},
		{line: `KEY=""`, key: "KEY", value: ""},
		{line: `KEY="x" # trailing comment`, key: "KEY", value: "x"},
		{line: "KEY=x\t# trailing comment", key: "KEY", value: "x"},
		{line: "KEY=x#y", key: "KEY", value: "x#y"}, // # inside a word is no comment
		{line: `KEY="a # b"`, key: "KEY", value: "a # b"},
		{line: `KEY="say \"hi\" \\ \$HOME \d"`, key: "KEY", value: `say "hi" \ $HOME \d`},
		{line: `KEY='no $expansion "here"'`, key: "KEY", value: `no $expansion "here"`},
		{line: `KEY="a"'b'c`, key: "KEY", value: "abc"},
		{line: `KEY=a\ b`, key: "KEY", value: "a b"},
		{line: "KEY=$(gpg --gen-random --armor 1 14)", key: "KEY", value: "$(gpg --gen-random --armor 1 14)", uneval: true},
		{line: `KEY="$(gpg --gen-random --armor 1 25)"`, key: "KEY", value: "$(gpg --gen-random --armor 1 25)", uneval: true},
		{line: "KEY=${HOME}/ss", key: "KEY", value: "${HOME}/ss", uneval: true},
		{line: "KEY=`hostname` # x", key: "KEY", value: "`hostname`", uneval: true},
		{line: `KEY="$VAR"`, key: "KEY", value: "$VAR", uneval: true},
		{line: "exported=1", key: "exported", value: "1"},
		{line: ""},
		{line: "   "},
		{line: "# KEY=value"},
		{line: "   # indented comment"},
		{line: "#!/bin/bash"},
		{line: "export", err: "not a KEY=value line"},
		{line: "echo hello", err: "not a KEY=value line"},
		{line: "hunter2", err: "not a KEY=value line"},
		{line: "1KEY=x", err: "not a KEY=value line"},
		{line: "KEY = x", key: "KEY", err: "spaces around = are not allowed (the shell would run KEY as a command); write KEY=value"},
		{line: "KEY+=x", key: "KEY", err: "+= (append) is not supported; write KEY=value"},
		{line: "KEY=a b", key: "KEY", err: "unquoted space in the value (the shell would run the rest as a command); quote the value"},
		{line: "KEY=a; rm -rf /", key: "KEY", err: "shell syntax (;) after or in the value is not supported; one plain KEY=value per line"},
		{line: "KEY=(a|b)", key: "KEY", err: "shell syntax (() after or in the value is not supported; one plain KEY=value per line"},
		{line: `KEY="open`, key: "KEY", err: `unterminated " quote (values spanning lines are not supported)`},
		{line: `KEY='open`, key: "KEY", err: "unterminated ' quote (values spanning lines are not supported)"},
		{line: `KEY=x\`, key: "KEY", err: `line continuation (\ at the end) is not supported`},
		{line: `KEY="x\`, key: "KEY", err: `line continuation (\ at the end) is not supported`},
		{line: "KEY=$(date", key: "KEY", err: "unterminated command substitution"},
		{line: "KEY=`date", key: "KEY", err: "unterminated command substitution"},
		{line: "KEY=\xff", err: "not UTF-8 text"},
		// Shell statements are skipped (parseConf warns) instead of failing.
		{line: "set -e", err: "set skipped: shell options do not matter to the import, which runs nothing"},
		{line: "set -eu;", err: "set skipped: shell options do not matter to the import, which runs nothing"},
		{line: "source ../remote.conf", err: "source skipped: the file it reads is not imported; give it to the import too if it holds settings"},
		{line: ". ./defaults.sh", err: ". (source) skipped: the file it reads is not imported; give it to the import too if it holds settings"},
		{line: `  if [ -z "$X" ]; then`, err: "if skipped: its condition is not run, so the assignments on the lines inside are imported as if it held (any on the if line itself are not)"},
		{line: "else", err: "else skipped: the assignments on the lines inside are imported too, the last of a key winning"},
		{line: "fi"},
		{line: "set=1", key: "set", value: "1"}, // a variable named like a statement
		{line: "iffy=1", key: "iffy", value: "1"},
	} {
		a, err := parseLine(c.line)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if a.Key != c.key || gotErr != c.err || (err == nil && (a.Value != c.value || a.Unevaluated != c.uneval)) {
			t.Errorf("parseLine(%q) = key %q value %q uneval %v err %q\nwant key %q value %q uneval %v err %q",
				c.line, a.Key, a.Value, a.Unevaluated, gotErr, c.key, c.value, c.uneval, c.err)
		}
	}
}

func TestParseConf(t *testing.T) {
	data := "# header\r\nA=1\r\nexport B=\"two\"\r\n\r\nA=3\nC='x'"
	f, warns, errs := parseConf("f.conf", []byte(data))
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	want := []assignment{{Key: "A", Value: "1", Line: 2}, {Key: "B", Value: "two", Line: 3}, {Key: "A", Value: "3", Line: 5}, {Key: "C", Value: "x", Line: 6}}
	if !reflect.DeepEqual(f.Vars, want) {
		t.Errorf("vars (CRLF lines, last line without newline):\n got %+v\nwant %+v", f.Vars, want)
	}
	if a := f.get("A"); a == nil || a.Value != "3" {
		t.Errorf("get(A) = %+v, want the last assignment (3)", a)
	}
	if got, want := warns, []Warning{{File: "f.conf", Line: 5, Key: "A", Message: "set again (first at line 2); the last value wins, as in the shell"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("warnings %v, want %v", got, want)
	}
}

// Sovereign Stack's files are sourced by bash and may hold set -e,
// comments, source and if: each is skipped with a warning naming its line,
// and the assignments around them are read.
func TestParseConfSkipsShellStatements(t *testing.T) {
	data := "#!/bin/bash\nset -e\n# the primary domain\nsource ../defaults.conf\nA=1 # trailing\n" +
		"if [ \"$CHAIN\" = mainnet ]; then\n  B=2\nelse\n  B=3\nfi\n"
	f, warns, errs := parseConf("f.conf", []byte(data))
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	want := []assignment{{Key: "A", Value: "1", Line: 5}, {Key: "B", Value: "2", Line: 7}, {Key: "B", Value: "3", Line: 9}}
	if !reflect.DeepEqual(f.Vars, want) {
		t.Errorf("vars:\n got %+v\nwant %+v", f.Vars, want)
	}
	var got []string
	for _, w := range warns {
		got = append(got, w.String())
	}
	wantWarns := []string{
		"f.conf:2: set skipped: shell options do not matter to the import, which runs nothing",
		"f.conf:4: source skipped: the file it reads is not imported; give it to the import too if it holds settings",
		"f.conf:6: if skipped: its condition is not run, so the assignments on the lines inside are imported as if it held (any on the if line itself are not)",
		"f.conf:8: else skipped: the assignments on the lines inside are imported too, the last of a key winning",
		"f.conf:9: B: set again (first at line 7); the last value wins, as in the shell",
	}
	if !reflect.DeepEqual(got, wantWarns) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantWarns, "\n"))
	}
}

func TestWarningString(t *testing.T) {
	for _, c := range []struct {
		w    Warning
		want string
	}{
		{Warning{File: "project.conf", Line: 7, Key: "WWW_SERVER_MAC_ADDRESS", Message: "empty"}, "project.conf:7: WWW_SERVER_MAC_ADDRESS: empty"},
		{Warning{File: "project.conf", Key: "PRIMARY_DOMAIN", Message: "missing"}, "project.conf: PRIMARY_DOMAIN: missing"},
		{Warning{File: "site.conf", Line: 3, Message: "not a KEY=value line"}, "site.conf:3: not a KEY=value line"},
	} {
		if got := c.w.String(); got != c.want {
			t.Errorf("String() = %q, want %q", got, c.want)
		}
	}
}
