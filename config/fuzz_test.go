package config

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// Whatever the file holds, Parse returns a File or an error that names a
// line; it never panics.
func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte("[a]\nk = v\n\tcont\n\n\tmore\n"))
	f.Add([]byte("\ufeff[DEFAULT]\nx: y\n"))
	f.Add([]byte("k = v\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		file, err := Parse(bytes.NewReader(text))
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) && !strings.HasPrefix(err.Error(), "line ") {
				t.Fatalf("error without a line: %v", err)
			}
			return
		}
		for _, s := range file.Sections {
			if file.Section(s.Name) != s {
				t.Fatalf("section %q not found by name", s.Name)
			}
		}
	})
}

// What the in-place writer writes parses back: the changed key has its
// new value and every other key of every section is as it was. A change
// the format cannot hold is refused with an error, never written.
func FuzzUpdateRoundTrip(f *testing.F) {
	f.Add([]byte(sample), "a@x", "access_token", "gAAAAA-new", false)
	f.Add([]byte(sample), "new@x", "token_salt", "c2FsdA==", false)
	f.Add([]byte(sample), "b@x", "client_id", "", true)
	f.Add([]byte("[s]\nk: v\n"), "s", "K", " padded ", false)
	f.Add([]byte("[DEFAULT]\nk = v\n[s]\n"), "DEFAULT", "k", "x", false)
	f.Add([]byte("[s]\n"), "x]\n[emailproxy", "k", "v", false)
	f.Fuzz(func(t *testing.T, text []byte, section, key, value string, del bool) {
		before, err := Parse(bytes.NewReader(text))
		if err != nil {
			return
		}
		out, err := applyChanges(text, []Change{{Section: section, Key: key, Value: value, Delete: del}})
		if err != nil {
			return // refused: nothing written
		}
		after, err := Parse(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("written file does not parse: %v\n%q", err, out)
		}
		lkey := strings.ToLower(key)
		changed := func(sec, k string) bool { return sec == section && k == lkey }
		for _, s := range append([]*Section{before.Default}, before.Sections...) {
			as := after.Default
			if s != before.Default {
				as = after.Section(s.Name)
			}
			if as == nil {
				t.Fatalf("section [%s] lost\n%q", s.Name, out)
			}
			for _, e := range s.Entries {
				if changed(s.Name, e.Key) {
					continue
				}
				if v, ok := as.Get(e.Key); !ok || v != e.Value {
					t.Fatalf("[%s] %s = %q became %q (present %v)\n%q", s.Name, e.Key, e.Value, v, ok, out)
				}
			}
		}
		sec := after.Section(section)
		if section == DefaultSection {
			sec = after.Default
		}
		got, ok := "", false
		if sec != nil {
			got, ok = sec.Get(lkey)
		}
		switch {
		case del && ok:
			t.Fatalf("[%s] %s still there after delete\n%q", section, lkey, out)
		case !del && (!ok || got != value):
			t.Fatalf("[%s] %s = %q reads back as %q (present %v)\n%q", section, lkey, value, got, ok, out)
		}
	})
}
