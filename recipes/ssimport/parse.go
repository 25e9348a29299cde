package ssimport

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// assignment is one KEY=value line of a shell-style config file.
type assignment struct {
	Key   string
	Value string
	Line  int
	// Unevaluated is set when the value holds a $ or ` expansion, which
	// the shell would have run and the importer takes literally.
	Unevaluated bool
}

// confFile is a parsed config file: its assignments in file order, the
// last one of each key winning as in the shell.
type confFile struct {
	Name string
	Vars []assignment
	last map[string]int // key -> index in Vars of its last assignment
}

// get returns the last assignment of key, or nil.
func (f *confFile) get(key string) *assignment {
	if i, ok := f.last[key]; ok {
		return &f.Vars[i]
	}
	return nil
}

var keyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*`)

// parseConf reads KEY=value lines the way a shell would assign them,
// without running anything. Problems never quote a value: it could be a
// secret.
func parseConf(name string, data []byte) (*confFile, []Warning, []Warning) {
	f := &confFile{Name: name, last: map[string]int{}}
	var warns, errs []Warning
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		line = strings.TrimSuffix(line, "\r")
		a, err := parseLine(line)
		var skip skippedLine
		if errors.As(err, &skip) {
			if skip.why != "" {
				warns = append(warns, Warning{File: name, Line: n, Message: skip.why})
			}
			continue
		}
		if err != nil {
			errs = append(errs, Warning{File: name, Line: n, Key: a.Key, Message: err.Error()})
			continue
		}
		if a.Key == "" {
			continue // blank or comment
		}
		a.Line = n
		if j, dup := f.last[a.Key]; dup {
			warns = append(warns, Warning{File: name, Line: n, Key: a.Key,
				Message: fmt.Sprintf("set again (first at line %d); the last value wins, as in the shell", f.Vars[j].Line)})
		}
		f.last[a.Key] = len(f.Vars)
		f.Vars = append(f.Vars, a)
	}
	return f, warns, errs
}

// parseLine reads one line. A blank or comment line gives a zero
// assignment; on error the assignment carries the key when one was read.
func parseLine(line string) (assignment, error) {
	if !utf8.ValidString(line) {
		return assignment{}, fmt.Errorf("not UTF-8 text")
	}
	s := strings.TrimLeft(line, " \t")
	if s == "" || s[0] == '#' {
		return assignment{}, nil
	}
	if why, ok := shellStatement(s); ok {
		return assignment{}, skippedLine{why}
	}
	if rest, ok := strings.CutPrefix(s, "export"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
		s = strings.TrimLeft(rest, " \t")
	}
	key := keyRe.FindString(s)
	if key == "" {
		return assignment{}, fmt.Errorf("not a KEY=value line")
	}
	a := assignment{Key: key}
	s = s[len(key):]
	switch {
	case strings.HasPrefix(s, "="):
	case strings.HasPrefix(s, "+="):
		return a, fmt.Errorf("+= (append) is not supported; write KEY=value")
	case strings.HasPrefix(strings.TrimLeft(s, " \t"), "="):
		return a, fmt.Errorf("spaces around = are not allowed (the shell would run %s as a command); write KEY=value", key)
	default:
		// No key is named: a stray line may be a pasted secret.
		return assignment{}, fmt.Errorf("not a KEY=value line")
	}
	v, uneval, err := parseValue(s[1:])
	if err != nil {
		return a, err
	}
	a.Value, a.Unevaluated = v, uneval
	return a, nil
}

// skippedLine is a shell statement that sets nothing the import reads: the
// line is skipped, with a warning when why is set.
type skippedLine struct{ why string }

func (s skippedLine) Error() string { return s.why }

// shellStatements are the statements Sovereign Stack's files may hold
// besides assignments (they are sourced by bash), and why each is skipped.
// An empty reason skips silently: the if before it was warned about.
var shellStatements = map[string]string{
	"set":    "set skipped: shell options do not matter to the import, which runs nothing",
	"source": "source skipped: the file it reads is not imported; give it to the import too if it holds settings",
	".":      ". (source) skipped: the file it reads is not imported; give it to the import too if it holds settings",
	"if":     "if skipped: its condition is not run, so the assignments on the lines inside are imported as if it held (any on the if line itself are not)",
	"elif":   "elif skipped: its condition is not run, so the assignments on the lines inside are imported as if it held",
	"else":   "else skipped: the assignments on the lines inside are imported too, the last of a key winning",
	"then":   "",
	"fi":     "",
}

// shellStatement reports whether s (a line without its indentation) is a
// statement of shellStatements, and the warning for it. The reason never
// quotes the line: it could hold a secret.
func shellStatement(s string) (why string, ok bool) {
	word := s
	if i := strings.IndexAny(s, " \t;"); i >= 0 {
		word = s[:i]
	}
	why, ok = shellStatements[word]
	return why, ok
}

// parseValue reads a shell word made of unquoted, "double" and 'single'
// quoted parts, followed by nothing or a comment.
func parseValue(s string) (val string, uneval bool, err error) {
	var b strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			rest := strings.TrimLeft(s[i:], " \t")
			if rest != "" && rest[0] != '#' {
				return "", false, fmt.Errorf("unquoted space in the value (the shell would run the rest as a command); quote the value")
			}
			return b.String(), uneval, nil
		case c == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return "", false, fmt.Errorf("unterminated ' quote (values spanning lines are not supported)")
			}
			b.WriteString(s[i+1 : i+1+end])
			i += end + 2
		case c == '"':
			j := i + 1
			for ; j < len(s) && s[j] != '"'; j++ {
				switch {
				case s[j] == '\\' && j+1 < len(s) && strings.IndexByte("\"\\$`", s[j+1]) >= 0:
					j++ // the shell drops the backslash before these
				case s[j] == '\\' && j+1 == len(s):
					return "", false, fmt.Errorf("line continuation (\\ at the end) is not supported")
				case s[j] == '$' || s[j] == '`':
					uneval = true
				}
				b.WriteByte(s[j])
			}
			if j == len(s) {
				return "", false, fmt.Errorf("unterminated \" quote (values spanning lines are not supported)")
			}
			i = j + 1
		case c == '\\':
			if i+1 == len(s) {
				return "", false, fmt.Errorf("line continuation (\\ at the end) is not supported")
			}
			b.WriteByte(s[i+1])
			i += 2
		case c == '$' && strings.HasPrefix(s[i:], "$("), c == '`':
			// A command substitution may hold spaces; take it whole, unrun.
			n := substitutionEnd(s[i:])
			if n < 0 {
				return "", false, fmt.Errorf("unterminated command substitution")
			}
			b.WriteString(s[i : i+n])
			uneval = true
			i += n
		case strings.IndexByte(";&|<>()", c) >= 0:
			return "", false, fmt.Errorf("shell syntax (%c) after or in the value is not supported; one plain KEY=value per line", c)
		default:
			if c == '$' || c == '`' {
				uneval = true
			}
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), uneval, nil
}

// substitutionEnd returns the length of the $(...) or `...` at the start of
// s, or -1 when it does not end on this line.
func substitutionEnd(s string) int {
	if s[0] == '`' {
		if j := strings.IndexByte(s[1:], '`'); j >= 0 {
			return j + 2
		}
		return -1
	}
	depth := 0
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			if depth--; depth == 0 {
				return i + 1
			}
		}
	}
	return -1
}
