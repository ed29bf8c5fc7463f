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
	small := "Subject: condstore\r\n\r\nhello\r\n"
	// session logs in, appends body, sends commands and logs out; it
	// returns the answers.
	session := func(body string, commands ...string) []string {
		t.Helper()
		r, l := imapLogin(t, px.imap, dovecotUser, "pw")
		if !strings.HasPrefix(l, "L1 OK") {
			t.Fatalf("login: %q\n%s", l, px.logs.String())
		}
		r.send(fmt.Sprintf("A APPEND INBOX {%d}\r\n", len(body)))
		r.until("+")
		r.send(body + "\r\n")
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

	session(small, "SELECT INBOX", "UID FETCH 1:* (FLAGS)")
	waitFor(t, "a plain session to be kept", func() bool { return kept() == 1 })

	// The client turns CONDSTORE on at the start of its command.
	got := session(small, "SELECT INBOX (CONDSTORE)")
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
	got = session(small, "SELECT INBOX", long)
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
	got = session(small, "SELECT INBOX", "UID FETCH "+set.String()+"201 (FLAGS) (CHANGEDSINCE 1)")
	if !strings.Contains(strings.Join(got, "\n"), "MODSEQ") {
		t.Fatalf("Dovecot did not answer with MODSEQ: %q", got)
	}
	if n := kept(); n != 1 {
		t.Fatalf("%d sessions kept, want 1 (not the one whose answers carried MODSEQ):\n%s", n, strings.Join(got, "\n"))
	}

	// The same where each answer starts in one read and goes on for many
	// (a 200 KB message): its MODSEQ, 80 bytes in, is seen where it starts.
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 2000)
	var noSuchUIDs strings.Builder // then only the message just appended (*)
	for i := 1000; i <= 1200; i++ {
		fmt.Fprintf(&noSuchUIDs, "%d,", i)
	}
	got = session(big, "SELECT INBOX", "UID FETCH "+noSuchUIDs.String()+"* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[]) (CHANGEDSINCE 1)")
	if n := strings.Count(strings.Join(got, "\n"), " FETCH ("); n != 1 {
		t.Fatalf("%d FETCH answers, want the big message's alone", n)
	}
	if !strings.Contains(strings.Join(got, "\n"), "MODSEQ") {
		t.Fatalf("Dovecot did not answer with MODSEQ")
	}
	if n := kept(); n != 1 {
		t.Fatalf("%d sessions kept, want 1 (not the one whose long answers carried MODSEQ)", n)
	}

	// The mailbox keeps modification sequences now, so Dovecot's SELECT
	// says [HIGHESTMODSEQ n] in every session: that alone is no reason.
	got = session(small, "SELECT INBOX")
	if !strings.Contains(strings.Join(got, "\n"), "HIGHESTMODSEQ") {
		t.Fatalf("Dovecot's SELECT: %q", got)
	}
	waitFor(t, "a plain session to be kept again", func() bool { return kept() == 2 })
}
