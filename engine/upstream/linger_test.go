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
