package upstream

import (
	"strings"
	"testing"
)

// The store's keys separate accounts, passwords and server sections.
func TestLingerKeysSeparateAccountsAndPasswords(t *testing.T) {
	ls := NewLinger(Life{})
	base := ls.Key("IMAP-1993", "a@x", "pw")
	for _, k := range []string{ls.Key("IMAP-1993", "a@x", "pw2"), ls.Key("IMAP-1993", "b@x", "pw"), ls.Key("IMAP-2993", "a@x", "pw")} {
		if k == base {
			t.Fatal("two different logins share a key")
		}
	}
	if base != ls.Key("IMAP-1993", "A@X", "pw") {
		t.Fatal("account names differ only in case: same mailbox")
	}
	if strings.Contains(base, "pw") && !strings.Contains("IMAP-1993\x00a@x", "pw") {
		t.Fatal("the key holds the password")
	}
	other := NewLinger(Life{})
	if other.Key("IMAP-1993", "a@x", "pw") == base {
		t.Fatal("keys are not salted per process")
	}
}

func TestRetag(t *testing.T) {
	got := string(Retag([]byte("* CAPABILITY IMAP4rev1\r\nold OK [CAPABILITY IMAP4rev1] done\r\n"), "new7"))
	if got != "* CAPABILITY IMAP4rev1\r\nnew7 OK [CAPABILITY IMAP4rev1] done\r\n" {
		t.Fatalf("%q", got)
	}
	if got := string(Retag([]byte("a OK x\r\n"), "b")); got != "b OK x\r\n" {
		t.Fatalf("%q", got)
	}
}

func TestIsReusable(t *testing.T) {
	for name, want := range map[string]bool{"select": true, "Uid": true, "IDLE": true, "ENABLE": false,
		"compress": false, "XAPPLEPUSHSERVICE": false, "": false} {
		if got := IsReusable([]byte(name)); got != want {
			t.Errorf("%q: %v, want %v", name, got, want)
		}
	}
}

func TestCondstoreWords(t *testing.T) {
	for line, want := range map[string]bool{
		"a SELECT INBOX (CONDSTORE)":                       true,
		"a uid fetch 1:* (flags) (changedsince 12)":        true,
		"a UID STORE 1 (UNCHANGEDSINCE 5) +FLAGS (\\Seen)": true,
		"a STATUS INBOX (MESSAGES HIGHESTMODSEQ)":          true,
		"a SEARCH MODSEQ 5":                                true,
		"a SELECT INBOX":                                   false,
		"a UID FETCH 1:* (FLAGS BODY.PEEK[])":              false,
		"a SEARCH SUBJECT \"MODSE\"":                       false,
		"":                                                 false,
		"\xcd\xcf\xc4\xd3\xc5\xd1":                         false, // MODSEQ with the high bit set
	} {
		if got := TurnsOnCondstore([]byte(line)); got != want {
			t.Errorf("command %q: %v, want %v", line, got, want)
		}
	}
	for line, want := range map[string]bool{
		"* 1 FETCH (UID 4 MODSEQ (12) FLAGS ())":    true,
		"* 1 FETCH (modseq (12) UID 4)":             true,
		"* OK [HIGHESTMODSEQ 715194045007] Highest": false, // sent on every SELECT by some servers
		"* 1 FETCH (UID 4 FLAGS (\\Seen))":          false,
		"MODSEQ":                                    false,
	} {
		if got := ShowsCondstore([]byte(line)); got != want {
			t.Errorf("answer %q: %v, want %v", line, got, want)
		}
	}
}
