package auth

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// lastActivity reads an account's last_activity from the file (-1: none).
func lastActivity(t *testing.T, path, account string) int64 {
	t.Helper()
	sec := loadCfg(t, path).File.Section(account)
	if sec == nil {
		return -1
	}
	v, ok := sec.Get("last_activity")
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("last_activity = %q: %v", v, err)
	}
	return n
}

// Activity noted by sessions reaches the token cache as emailproxy.py's
// last_activity: with the account's next save of its tokens, and when the
// provider closes; never going back in time, never for an account not in
// use.
func TestLastActivitySaved(t *testing.T) {
	t.Parallel()
	ts := newTokenServer(t, 0, 3600)
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	os.WriteFile(path, []byte("[IMAP-1993]\nserver_address = x\nserver_port = 993\n\n[a@x]\ntoken_url = "+ts.URL+
		"\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = id\nclient_secret = sec\n\n"+
		"[b@x]\ntoken_url = "+ts.URL+"\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = id\nclient_secret = sec\n"), 0o600)
	p := newFileProvider(t, path, Options{})
	p.Start()
	if _, err := p.authorize(context.Background(), "a@x", "pw", ""); err != nil || !p.confirm("a@x", "pw") {
		t.Fatal("login", err)
	}
	// The key is derived in the background; its save brings the tokens.
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), "access_token = ") {
			break
		} else if time.Now().After(end) {
			t.Fatalf("tokens never saved:\n%s", b)
		}
	}
	if got := lastActivity(t, path, "a@x"); got != -1 {
		t.Fatalf("last_activity %d before any session", got)
	}

	t1 := time.Unix(1_900_000_000, 0)
	p.NoteActivity("a@x", t1)
	p.NoteActivity("a@x", t1.Add(-time.Hour)) // an older note changes nothing
	p.NoteActivity("nobody@x", t1)            // not an account: ignored
	a, lerr := p.account("a@x")
	if lerr != nil {
		t.Fatal(lerr)
	}
	p.persist(a, false) // as a refresh saves
	if got := lastActivity(t, path, "a@x"); got != t1.Unix() {
		t.Fatalf("after a token save: last_activity %d, want %d", got, t1.Unix())
	}

	t2 := t1.Add(time.Minute)
	p.NoteActivity("a@x", t2)
	p.Close()
	if got := lastActivity(t, path, "a@x"); got != t2.Unix() {
		t.Fatalf("after Close: last_activity %d, want %d", got, t2.Unix())
	}
	if got := lastActivity(t, path, "nobody@x"); got != -1 {
		t.Fatal("a section was written for a name that is no account")
	}
	if got := lastActivity(t, path, "b@x"); got != -1 {
		t.Fatal("last_activity written for an account without sessions")
	}

	// The next process starts from what was saved: an older note does not
	// take it back.
	p2 := newFileProvider(t, path, Options{})
	p2.Start()
	if _, err := p2.authorize(context.Background(), "a@x", "pw", ""); err != nil {
		t.Fatal(err)
	}
	p2.NoteActivity("a@x", t1)
	p2.Close()
	if got := lastActivity(t, path, "a@x"); got != t2.Unix() {
		t.Fatalf("an older note after a restart: last_activity %d, want %d", got, t2.Unix())
	}
}

// A reload that changes an account drops its state in memory; the
// activity noted before is saved, not lost.
func TestLastActivitySavedOnReload(t *testing.T) {
	t.Parallel()
	ts := newTokenServer(t, 0, 3600)
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	write := func(scope string) {
		os.WriteFile(path, []byte("[IMAP-1993]\nserver_address = x\nserver_port = 993\n\n[a@x]\ntoken_url = "+ts.URL+
			"\noauth2_scope = "+scope+"\noauth2_flow = client_credentials\nclient_id = id\nclient_secret = sec\n"), 0o600)
	}
	write("s")
	p := newFileProvider(t, path, Options{})
	defer p.Close()
	p.Start()
	if _, err := p.authorize(context.Background(), "a@x", "pw", ""); err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1_900_000_000, 0)
	p.NoteActivity("a@x", at)
	write("s2") // a token key changed: the account starts again
	p.Reload(loadCfg(t, path))
	if got := lastActivity(t, path, "a@x"); got != at.Unix() {
		t.Fatalf("after the reload: last_activity %d, want %d", got, at.Unix())
	}
}
