//go:build linux

package engine

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// With session reuse, a session where CONDSTORE was turned on is not kept:
// it stays on for the rest of the session (UNSELECT does not end it), and
// every FETCH answer would carry a MODSEQ the next client did not ask for.
// Against a real Dovecot, which has CONDSTORE: whether the client's
// command says so at its start, or only the server's answers show it.
func TestDovecotCondstoreSessionIsNotKept(t *testing.T) {
	dv, _ := startDovecotWithIdP(t)
	px := startProxyFor(t, dv, Options{IMAPSessionReuse: time.Minute})
	kept := func() int { return px.srv.linger.Snapshot().Parked } // sessions kept so far
	session := func(commands ...string) []string {
		t.Helper()
		r, l := imapLogin(t, px.imap, dovecotUser, "pw")
		if !strings.HasPrefix(l, "L1 OK") {
			t.Fatalf("login: %q\n%s", l, px.logs.String())
		}
		r.send("A APPEND INBOX {29}\r\n")
		r.until("+")
		r.send("Subject: condstore\r\n\r\nhello\r\n\r\n")
		r.until("A ")
		var all []string
		for i, c := range commands {
			tag := string(rune('a' + i))
			r.send(tag + " " + c + "\r\n")
			all = append(all, r.until(tag+" ")...)
		}
		r.send("Z LOGOUT\r\n")
		r.until("Z ")
		r.expectEOF()
		waitFor(t, "the session to end", func() bool { return px.srv.Stats().Relays == 0 })
		return all
	}

	session("SELECT INBOX", "UID FETCH 1:* (FLAGS)")
	waitFor(t, "a plain session to be kept", func() bool { return kept() == 1 })

	// The client turns CONDSTORE on at the start of its command.
	got := session("SELECT INBOX (CONDSTORE)")
	if !strings.Contains(strings.Join(got, "\n"), "HIGHESTMODSEQ") {
		t.Fatalf("Dovecot did not turn CONDSTORE on: %q", got)
	}
	if n := kept(); n != 1 {
		t.Fatalf("%d sessions kept, want 1 (not the one after SELECT (CONDSTORE))", n)
	}

	// The word that turns it on comes after the 64 bytes of a command the
	// proxy keeps of each; it looks further into a command that came in
	// one read.
	long := "UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)]) (CHANGEDSINCE 1)"
	got = session("SELECT INBOX", long)
	if !strings.Contains(strings.Join(got, "\n"), "MODSEQ") {
		t.Fatalf("Dovecot did not answer with MODSEQ: %q", got)
	}
	if n := kept(); n != 1 {
		t.Fatalf("%d sessions kept, want 1 (not the one after a FETCH with CHANGEDSINCE):\n%s", n, strings.Join(got, "\n"))
	}
	// Further still (past 512 bytes): only Dovecot's FETCH answers show
	// it, with their MODSEQ items.
	var set strings.Builder
	for i := 1; i <= 200; i++ {
		fmt.Fprintf(&set, "%d,", i)
	}
	got = session("SELECT INBOX", "UID FETCH "+set.String()+"201 (FLAGS) (CHANGEDSINCE 1)")
	if !strings.Contains(strings.Join(got, "\n"), "MODSEQ") {
		t.Fatalf("Dovecot did not answer with MODSEQ: %q", got)
	}
	if n := kept(); n != 1 {
		t.Fatalf("%d sessions kept, want 1 (not the one whose answers carried MODSEQ):\n%s", n, strings.Join(got, "\n"))
	}

	// The mailbox keeps modification sequences now, so Dovecot's SELECT
	// says [HIGHESTMODSEQ n] in every session: that alone is no reason.
	got = session("SELECT INBOX")
	if !strings.Contains(strings.Join(got, "\n"), "HIGHESTMODSEQ") {
		t.Fatalf("Dovecot's SELECT: %q", got)
	}
	waitFor(t, "a plain session to be kept again", func() bool { return kept() == 2 })
}
