package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = `# Operator's notes: keep me
[Email OAuth 2.0 Proxy configuration file]
documentation = first
	second line

[IMAP-1993]
server_address = outlook.office365.com
server_port = 993

; accounts below
[a@x]
Token_URL = https://t
custom_unknown_key = keep me too
access_token = OLD
	continuation of the old value

# trailing comment in a@x
[b@x]
client_id = b
`

func TestApplyChangesKeepsEverythingElse(t *testing.T) {
	out, err := applyChanges([]byte(sample), []Change{
		{Section: "a@x", Key: "access_token", Value: "NEW"},
		{Section: "a@x", Key: "refresh_token", Value: "R1"},
		{Section: "a@x", Key: "token_salt", Value: "S"},
		{Section: "b@x", Key: "client_id", Delete: true},
		{Section: "b@x", Key: "missing", Delete: true},
		{Section: "c@x", Key: "access_token", Value: "C"},
		{Section: "c@x", Key: "token_salt", Value: "CS"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(sample, "access_token = OLD\n\tcontinuation of the old value\n", "access_token = NEW\nrefresh_token = R1\ntoken_salt = S\n", 1)
	want = strings.Replace(want, "[b@x]\nclient_id = b\n", "[b@x]\n", 1)
	want += "\n[c@x]\naccess_token = C\ntoken_salt = CS\n"
	if string(out) != want {
		t.Fatalf("got:\n%s\nwant:\n%s", out, want)
	}
	f, err := Parse(strings.NewReader(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := f.Lookup("a@x", "custom_unknown_key"); v != "keep me too" {
		t.Fatal("unknown key lost")
	}
	if _, err := applyChanges([]byte(sample), []Change{{Section: "a@x", Key: "x", Value: "a\nb"}}); err == nil {
		t.Fatal("a value with a line break was written")
	}
}

func TestUpdateIsAtomicAndMergesOperatorEdits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	os.WriteFile(path, []byte(sample), 0o640)
	// The operator edits the file while the proxy runs...
	edited := strings.Replace(sample, "server_port = 993", "server_port = 993\n# added by the operator\nlocal_address = 127.0.0.1", 1)
	os.WriteFile(path, []byte(edited), 0o640)
	// ...and the proxy saves a token afterwards.
	if err := Update(path, []Change{{Section: "a@x", Key: "access_token", Value: "NEW"}}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if !strings.Contains(string(got), "# added by the operator\nlocal_address = 127.0.0.1") || !strings.Contains(string(got), "access_token = NEW") {
		t.Fatalf("merge lost something:\n%s", got)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", st.Mode())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
	// A file that does not exist yet (a new --cache-store) is created.
	cache := filepath.Join(t.TempDir(), "cache.ini")
	if err := Update(cache, []Change{{Section: "a@x", Key: "token_salt", Value: "S"}}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(cache); string(b) != "[a@x]\ntoken_salt = S\n" {
		t.Fatalf("new file %q", b)
	}
	// A file the operator broke is not overwritten.
	os.WriteFile(path, []byte("[a@x]\nk = 1\nk = 2\n"), 0o600)
	if err := Update(path, []Change{{Section: "a@x", Key: "access_token", Value: "X"}}); err == nil {
		t.Fatal("wrote over an unparsable file")
	}
	if b, _ := os.ReadFile(path); string(b) != "[a@x]\nk = 1\nk = 2\n" {
		t.Fatal("unparsable file changed")
	}
}

// A section name that came from a login name cannot add lines to the file.
func TestApplyChangesRefusesInjection(t *testing.T) {
	for _, c := range []Change{
		{Section: "x@y]\n[emailproxy", Key: "access_token", Value: "v"},
		{Section: "a@x", Key: "access_token", Value: "v\nallow_catch_all_accounts = True"},
		{Section: "a@x", Key: "#comment", Value: "v"},
		{Section: DefaultSection, Key: "k", Value: "v"},
	} {
		if out, err := applyChanges([]byte(sample), []Change{c}); err == nil {
			t.Errorf("%+v written:\n%s", c, out)
		}
	}
}
