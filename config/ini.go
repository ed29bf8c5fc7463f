// Package config reads emailproxy.config: the INI dialect of Python's
// configparser (as emailproxy.py uses it) and the typed view of its servers,
// accounts and global options.
package config

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// DefaultSection is configparser's fallback section: its keys apply to every
// other section.
const DefaultSection = "DEFAULT"

// Entry is one key of a section, with where it stood in the file so that a
// later write-back can edit values in place.
type Entry struct {
	Key       string // lower-cased, as configparser's optionxform does
	Value     string // continuation lines joined with "\n"
	Line      int    // 1-based line of "key = value"
	LastLine  int    // last line of the value (continuations included)
	Delimiter byte   // '=' or ':'
}

// Section is one [name] block. Names are case-sensitive.
type Section struct {
	Name    string
	Line    int
	Entries []*Entry
	index   map[string]*Entry
}

// Get returns the section's own value for key (no [DEFAULT] fallback).
func (s *Section) Get(key string) (string, bool) {
	if s == nil {
		return "", false
	}
	e, ok := s.index[strings.ToLower(key)]
	if !ok {
		return "", false
	}
	return e.Value, true
}

// Keys lists the section's own keys in file order.
func (s *Section) Keys() []string {
	out := make([]string, 0, len(s.Entries))
	for _, e := range s.Entries {
		out = append(out, e.Key)
	}
	return out
}

// File is a parsed configuration file: sections in file order, [DEFAULT]
// kept apart.
type File struct {
	Default  *Section
	Sections []*Section
	byName   map[string]*Section
}

// Section returns the named section, or nil.
func (f *File) Section(name string) *Section { return f.byName[name] }

// Lookup returns a section's value for key, falling back to [DEFAULT] as
// configparser does.
func (f *File) Lookup(section, key string) (string, bool) {
	if v, ok := f.byName[section].Get(key); ok {
		return v, true
	}
	return f.Default.Get(key)
}

// ParseError says which line of the file is wrong and why.
type ParseError struct {
	Line int
	Msg  string
}

func (e *ParseError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// maxLineBytes bounds one line of the file; pasted service-account JSON keys
// are long but far below this.
const maxLineBytes = 1 << 20

// Parse reads the configparser dialect: "key = value" or "key: value",
// case-insensitive keys, case-sensitive section names, whole-line '#' and ';'
// comments (no inline comments), indented continuation lines, no
// interpolation, and duplicate sections or keys rejected.
func Parse(r io.Reader) (*File, error) {
	f := &File{Default: newSection(DefaultSection, 0), byName: map[string]*Section{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLineBytes)

	var (
		cur        *Section
		curEntry   *Entry
		entryInd   int // indentation of the current key line
		blankAfter int // blank lines seen inside the current value, added back if a continuation follows
		lineNo     int
	)
	for sc.Scan() {
		lineNo++
		raw := strings.TrimRight(sc.Text(), "\r")
		if lineNo == 1 {
			raw = strings.TrimPrefix(raw, "\ufeff")
		}
		stripped := strings.TrimSpace(raw)
		indent := len(raw) - len(strings.TrimLeft(raw, " \t"))

		if stripped == "" {
			if curEntry != nil {
				blankAfter++
			}
			continue
		}
		if stripped[0] == '#' || stripped[0] == ';' {
			continue
		}
		if curEntry != nil && indent > entryInd {
			// Continuation of a multi-line value; blank lines inside are kept.
			curEntry.Value += strings.Repeat("\n", blankAfter) + "\n" + stripped
			curEntry.LastLine = lineNo
			blankAfter = 0
			continue
		}
		curEntry, blankAfter = nil, 0

		if stripped[0] == '[' && strings.HasSuffix(stripped, "]") && len(stripped) > 2 {
			name := stripped[1 : len(stripped)-1]
			if name == DefaultSection {
				cur = f.Default
				continue
			}
			if _, dup := f.byName[name]; dup {
				return nil, &ParseError{lineNo, fmt.Sprintf("section [%s] appears more than once", name)}
			}
			cur = newSection(name, lineNo)
			f.byName[name] = cur
			f.Sections = append(f.Sections, cur)
			continue
		}
		if cur == nil {
			return nil, &ParseError{lineNo, "text before the first [section] header"}
		}
		i := strings.IndexAny(stripped, "=:")
		if i < 0 {
			return nil, &ParseError{lineNo, fmt.Sprintf("expected \"key = value\" in section [%s]", cur.Name)}
		}
		key := strings.ToLower(strings.TrimSpace(stripped[:i]))
		if key == "" {
			return nil, &ParseError{lineNo, fmt.Sprintf("empty key in section [%s]", cur.Name)}
		}
		if _, dup := cur.index[key]; dup {
			return nil, &ParseError{lineNo, fmt.Sprintf("key %q appears more than once in section [%s]", key, cur.Name)}
		}
		curEntry = &Entry{Key: key, Value: strings.TrimSpace(stripped[i+1:]), Line: lineNo, LastLine: lineNo, Delimiter: stripped[i]}
		entryInd = indent
		cur.Entries = append(cur.Entries, curEntry)
		cur.index[key] = curEntry
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", lineNo+1, err)
	}
	return f, nil
}

func newSection(name string, line int) *Section {
	return &Section{Name: name, Line: line, index: map[string]*Entry{}}
}
