package engine

import (
	"context"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// A silent client is what most held connections are; its budget is
// what keeps a pre-login connection under 0.6 KB with gnet's share.
func TestSilentClientStaysSmall(t *testing.T) {
	if n := unsafe.Sizeof(silentClient{}); n > 48 {
		t.Fatalf("silentClient is %d bytes, more than the 48-byte size class a silent connection may cost", n)
	}
}

// waitGreetingKnown waits until the listener on addr knows its
// upstream's greeting: from then on its clients are greeted at once and
// wait as silent clients.
func waitGreetingKnown(t *testing.T, env *proxyEnv, addr string) {
	t.Helper()
	l := env.srv.listener(portOfAddr(t, addr))
	waitFor(t, "the upstream's greeting to be learned", func() bool { return l.knownProfile() != nil })
}

// held returns how many event-loop clients are silent and how many have
// a session.
func (s *Server) held() (silent, sessions int) {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	return s.silent.n, s.sessions.n
}

// A greeted client that has sent nothing holds no session; its first
// command makes one, and everything a client does from there works as
// before: commands, a login, the relay. A silent client that hangs up
// is let go and logged.
func TestSilentClientsHoldNoSession(t *testing.T) {
	env := startEnv(t, envOptions{})
	waitGreetingKnown(t, env, env.imapAddr)
	waitGreetingKnown(t, env, env.popAddr)

	speaker, quitter, waiter := dialRaw(t, env.imapAddr), dialRaw(t, env.imapAddr), dialRaw(t, env.popAddr)
	for _, r := range []*rawConn{speaker, quitter, waiter} {
		if g := r.line(); !strings.HasPrefix(g, "* OK") && !strings.HasPrefix(g, "+OK") {
			t.Fatalf("greeting: %q", g)
		}
	}
	if silent, sessions := env.srv.held(); silent != 3 || sessions != 0 {
		t.Fatalf("three greeted clients: %d silent, %d sessions; want 3 and 0", silent, sessions)
	}
	if st := env.srv.Stats(); st.PreLogin != 3 {
		t.Fatalf("Stats().PreLogin = %d, want 3", st.PreLogin)
	}

	speaker.send("a1 CAPABILITY\r\n")
	if lines := speaker.until("a1 "); !strings.HasPrefix(lines[0], "* CAPABILITY") || lines[len(lines)-1] != "a1 OK CAPABILITY completed" {
		t.Fatalf("first command: %q", lines)
	}
	if silent, sessions := env.srv.held(); silent != 2 || sessions != 1 {
		t.Fatalf("after a first command: %d silent, %d sessions; want 2 and 1", silent, sessions)
	}
	speaker.send("a2 LOGIN " + testAccount + " pw\r\n")
	if lines := speaker.until("a2 "); !strings.HasPrefix(lines[len(lines)-1], "a2 OK") {
		t.Fatalf("login: %q", lines)
	}
	speaker.send("a3 SELECT INBOX\r\n")
	if lines := speaker.until("a3 "); !strings.HasPrefix(lines[len(lines)-1], "a3 OK") {
		t.Fatalf("relayed: %q", lines)
	}
	waitFor(t, "the session to be relayed", func() bool { st := env.srv.Stats(); return st.Relays == 1 && st.PreLogin == 2 })

	gone := quitter.c.LocalAddr().String()
	quitter.c.Close()
	waitFor(t, "the silent client that hung up to be let go", func() bool {
		silent, _ := env.srv.held()
		return silent == 1 && env.srv.Stats().PreLogin == 1
	})
	waitFor(t, "its end to be logged", func() bool {
		for _, l := range strings.Split(env.logs.String(), "\n") {
			if strings.Contains(l, gone) && strings.Contains(l, "connection closed") && strings.Contains(l, "duration_ms") {
				return true
			}
		}
		return false
	})

	// A POP3 client silent for a while is served like any other.
	waiter.send("USER " + testAccount + "\r\n")
	if l := waiter.line(); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("POP3 USER: %q", l)
	}
	waiter.send("PASS pw\r\n")
	if l := waiter.line(); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("POP3 PASS: %q", l)
	}
	speaker.send("a4 LOGOUT\r\n")
	speaker.until("a4 ")
	waiter.send("QUIT\r\n")
	waiter.line()
	waitFor(t, "every client to be gone", func() bool {
		silent, sessions := env.srv.held()
		st := env.srv.Stats()
		return silent == 0 && sessions == 0 && st.PreLogin == 0 && st.Relays == 0
	})
}

// The idle sweep and a drain reach silent clients: each gets its
// goodbye and is closed, and the proxy holds nothing for it after.
func TestSilentClientsAreSweptAndDrained(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		env := startEnv(t, envOptions{engine: Options{IdleTimeout: 400 * time.Millisecond}})
		waitGreetingKnown(t, env, env.imapAddr)
		waitGreetingKnown(t, env, env.popAddr)
		imap, pop := dialRaw(t, env.imapAddr), dialRaw(t, env.popAddr)
		imap.line()
		pop.line()
		if silent, _ := env.srv.held(); silent != 2 {
			t.Fatalf("%d silent clients, want 2", silent)
		}
		if l := imap.line(); l != "* BYE Autologout; idle for too long" {
			t.Fatalf("IMAP: %q", l)
		}
		imap.expectEOF()
		if l := pop.line(); l != "-ERR Idle for too long, closing" {
			t.Fatalf("POP3: %q", l)
		}
		pop.expectEOF()
		waitFor(t, "the swept clients to be let go", func() bool {
			silent, sessions := env.srv.held()
			return silent == 0 && sessions == 0 && env.srv.Stats().PreLogin == 0
		})
		stillServes(t, env)
	})
	t.Run("drain", func(t *testing.T) {
		env := startEnv(t, envOptions{})
		waitGreetingKnown(t, env, env.imapAddr)
		r := dialRaw(t, env.imapAddr)
		r.line()
		if silent, _ := env.srv.held(); silent != 1 {
			t.Fatalf("%d silent clients, want 1", silent)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		env.srv.Drain(ctx)
		if l := r.line(); l != "* BYE [UNAVAILABLE] emailproxy is shutting down, try again later" {
			t.Fatalf("%q", l)
		}
		r.expectEOF()
		waitFor(t, "the drained client to be let go", func() bool {
			silent, _ := env.srv.held()
			return silent == 0 && env.srv.Stats().PreLogin == 0
		})
	})
}
