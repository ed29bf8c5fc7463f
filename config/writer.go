package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Change sets (or, with Delete, removes) one key of one section.
type Change struct {
	Section, Key, Value string
	Delete              bool
}

// Update applies changes to the INI file at path in place: only the lines
// of the keys it changes are touched, so comments, blank lines, key order
// and every other key stay as they are. The file is re-read first, so
// edits an operator saved since it was loaded are kept. The new file is
// written next to the old one, synced, and renamed over it: a crash leaves
// either the old or the new file. A missing file is created.
func Update(path string, changes []Change) error {
	old, err := os.ReadFile(path)
	mode := fs.FileMode(0o600)
	if err == nil {
		if st, err := os.Stat(path); err == nil {
			mode = st.Mode().Perm()
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	updated, err := applyChanges(old, changes)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if bytes.Equal(updated, old) {
		return nil
	}
	return writeAtomic(path, updated, mode)
}

// check refuses what the file format cannot hold exactly: line breaks
// anywhere (a section name comes from a login name with catch-all
// accounts: it must not be able to add lines), and what the parser would
// read back differently (surrounding spaces, a key that reads as a
// comment or a header).
func (c Change) check() error {
	trimmed := func(s string) bool { return strings.TrimSpace(s) == s }
	switch {
	case c.Section == "" || strings.ContainsAny(c.Section, "\r\n") || !trimmed(c.Section) || c.Section == DefaultSection:
		return fmt.Errorf("cannot write section [%q]: empty, [DEFAULT], or with line breaks or surrounding spaces", c.Section)
	case c.Key == "" || strings.ContainsAny(c.Key, "\r\n=:") || !trimmed(c.Key) || strings.IndexAny(c.Key[:1], "#;[") == 0:
		return fmt.Errorf("cannot write key %q: not a plain key", c.Key)
	case strings.ContainsAny(c.Value, "\r\n") || !trimmed(c.Value):
		return fmt.Errorf("cannot write the value of %q: line breaks or surrounding spaces", c.Key)
	}
	return nil
}

// applyChanges edits the text of an INI file.
func applyChanges(text []byte, changes []Change) ([]byte, error) {
	f, err := Parse(bytes.NewReader(text))
	if err != nil {
		return nil, err
	}
	nl := "\n"
	if bytes.Contains(text, []byte("\r\n")) {
		nl = "\r\n"
	}
	lines := splitLines(text)

	// Edits are (first line, last line, replacement) on 1-based lines;
	// insertions have last = first-1.
	type edit struct {
		first, last int
		repl        []string
		order       int
	}
	var edits []edit
	var newSections []string
	newKeys := map[string][]string{}
	for i, c := range changes {
		if err := c.check(); err != nil {
			return nil, err
		}
		sec := f.Section(c.Section)
		key := strings.ToLower(c.Key)
		if sec == nil {
			if c.Delete {
				continue
			}
			if _, seen := newKeys[c.Section]; !seen {
				newSections = append(newSections, c.Section)
			}
			newKeys[c.Section] = append(newKeys[c.Section], key+" = "+c.Value)
			continue
		}
		e := sec.index[key]
		switch {
		case e != nil && c.Delete:
			edits = append(edits, edit{first: e.Line, last: e.LastLine, order: i})
		case e != nil:
			edits = append(edits, edit{first: e.Line, last: e.LastLine, repl: []string{key + " " + string(e.Delimiter) + " " + c.Value}, order: i})
		case !c.Delete:
			at := sec.Line
			if n := len(sec.Entries); n > 0 {
				at = sec.Entries[n-1].LastLine
			}
			edits = append(edits, edit{first: at + 1, last: at, repl: []string{key + " = " + c.Value}, order: i})
		}
	}
	// Apply from the bottom up so line numbers stay valid; insertions at
	// one place keep their order.
	sort.SliceStable(edits, func(i, j int) bool {
		if edits[i].first != edits[j].first {
			return edits[i].first > edits[j].first
		}
		return edits[i].order > edits[j].order
	})
	for _, e := range edits {
		tail := append([]string{}, lines[e.last:]...)
		lines = append(append(lines[:e.first-1], e.repl...), tail...)
	}
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteString(nl)
	}
	for _, name := range newSections {
		if b.Len() > 0 && !strings.HasSuffix(b.String(), nl+nl) {
			b.WriteString(nl)
		}
		b.WriteString("[" + name + "]" + nl)
		for _, kv := range newKeys[name] {
			b.WriteString(kv + nl)
		}
	}
	return []byte(b.String()), nil
}

func splitLines(text []byte) []string {
	s := strings.ReplaceAll(string(text), "\r\n", "\n")
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// writeAtomic replaces path with data: temp file in the same directory,
// fsync, rename, fsync of the directory.
func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(name)
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(name, path); err != nil {
		return err
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
