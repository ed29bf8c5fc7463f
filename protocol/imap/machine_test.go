package imap

import (
	"strings"
	"testing"

	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/internal/machinetest"
)

var (
	testProf = NewProfile([]byte("* OK ready"), []string{"IMAP4rev1", "AUTH=XOAUTH2", "SASL-IR"})
	testCaps = []byte("* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\n")
)

// step is what the engine does: feed everything, collect replies, stop at
// protocol.Login or protocol.Close. It returns the transcript and the final action.
func run(m *Machine, input string) (string, protocol.Action, string) {
	var out strings.Builder
	in := []byte(input)
	for {
		n, act := m.Next(in)
		in = in[n:]
		out.Write(act.Out)
		switch act.Kind {
		case protocol.Reply:
			continue
		case protocol.NeedMore:
			return out.String(), act, string(in)
		default:
			return out.String(), act, string(in)
		}
	}
}

func TestLoginForms(t *testing.T) {
	tests := []struct {
		name, input  string
		user, pass   string
		wantOut, tag string
	}{
		{"atoms", "a1 LOGIN user@example.com secret\r\n", "user@example.com", "secret", "", "a1"},
		{"lower-case command", "x login u@x p\r\n", "u@x", "p", "", "x"},
		{"quoted with escapes", `a2 LOGIN "u@x" "pa ss\"w\\rd"` + "\r\n", "u@x", `pa ss"w\rd`, "", "a2"},
		{"empty quoted password", `a LOGIN u@x ""` + "\r\n", "u@x", "", "", "a"},
		{"sync literals", "a3 LOGIN {3}\r\nu@x {6}\r\npa\r\n\"s\r\n", "u@x", "pa\r\n\"s", "+ Ready for literal data\r\n+ Ready for literal data\r\n", "a3"},
		{"non-sync literals", "a4 LOGIN {3+}\r\nu@x {4+}\r\np ss\r\n", "u@x", "p ss", "", "a4"},
		{"atom then literal", "a5 LOGIN u@x {2}\r\n{}\r\n", "u@x", "{}", "+ Ready for literal data\r\n", "a5"},
		{"literal then quoted", "a6 LOGIN {3+}\r\nu@x \"pw\"\r\n", "u@x", "pw", "", "a6"},
		{"bare LF", "a7 LOGIN u@x pw\n", "u@x", "pw", "", "a7"},
		{"utf-8 atom", "a8 LOGIN u@x pässwörd\r\n", "u@x", "pässwörd", "", "a8"},
		{"plain with SASL-IR", "a9 AUTHENTICATE PLAIN AHVAeABwYXNz\r\n", "u@x", "pass", "", "a9"},
		{"plain two steps", "b1 AUTHENTICATE PLAIN\r\nAHVAeABwYXNz\r\n", "u@x", "pass", "+ \r\n", "b1"},
		{"plain with authzid = authcid", "b2 authenticate plain dUB4AHVAeABwYXNz\r\n", "u@x", "pass", "", "b2"},
		{"login mechanism", "b3 AUTHENTICATE LOGIN\r\ndUB4\r\ncGFzcw==\r\n", "u@x", "pass", "+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n", "b3"},
		{"login mechanism with IR", "b4 AUTHENTICATE LOGIN dUB4\r\ncGFzcw==\r\n", "u@x", "pass", "+ UGFzc3dvcmQ6\r\n", "b4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := New(testProf, TLS{}, DefaultLimits)
			out, act, rest := run(m, tc.input)
			if act.Kind != protocol.Login {
				t.Fatalf("kind = %v, out %q", act.Kind, out)
			}
			if act.Creds.Username != tc.user || act.Creds.Password != tc.pass || act.Tag != tc.tag {
				t.Fatalf("got %q/%q tag %q, want %q/%q tag %q", act.Creds.Username, act.Creds.Password, act.Tag, tc.user, tc.pass, tc.tag)
			}
			if out != tc.wantOut {
				t.Fatalf("out = %q, want %q", out, tc.wantOut)
			}
			if rest != "" {
				t.Fatalf("unconsumed %q", rest)
			}
		})
	}
}

// Every split of the input across reads must give the same result.
func TestLoginSplitAcrossReads(t *testing.T) {
	input := "a3 LOGIN {3}\r\nu@x {6+}\r\npa\r\n\"s\r\n"
	for cut := 0; cut <= len(input); cut++ {
		for cut2 := cut; cut2 <= len(input); cut2++ {
			m := New(testProf, TLS{}, DefaultLimits)
			var out strings.Builder
			var buf []byte
			var final protocol.Action
			for _, chunk := range []string{input[:cut], input[cut:cut2], input[cut2:]} {
				buf = append(buf, chunk...)
				for {
					n, act := m.Next(buf)
					buf = buf[n:]
					out.Write(act.Out)
					if act.Kind != protocol.Reply {
						final = act
						break
					}
				}
				if final.Kind == protocol.Login {
					break
				}
			}
			if final.Kind != protocol.Login || final.Creds.Username != "u@x" || final.Creds.Password != "pa\r\n\"s" {
				t.Fatalf("cuts %d,%d: %+v", cut, cut2, final)
			}
			if out.String() != "+ Ready for literal data\r\n" {
				t.Fatalf("cuts %d,%d: out %q", cut, cut2, out.String())
			}
		}
	}
}

func TestPreLoginCommands(t *testing.T) {
	tests := []struct {
		name, input, want string
		kind              protocol.Kind
	}{
		{"capability", "c1 CAPABILITY\r\n", string(testCaps) + "c1 OK CAPABILITY completed\r\n", protocol.NeedMore},
		{"noop", "c2 noop\r\n", "c2 OK NOOP completed\r\n", protocol.NeedMore},
		{"id", `c3 ID ("name" "app")` + "\r\n", "* ID NIL\r\nc3 OK ID completed\r\n", protocol.NeedMore},
		{"id with literal", "c3 ID ({4+}\r\nname \"x\")\r\n", "* ID NIL\r\nc3 OK ID completed\r\n", protocol.NeedMore},
		{"logout", "c4 LOGOUT\r\n", "* BYE Logging out\r\nc4 OK LOGOUT completed\r\n", protocol.Close},
		{"enable", "c5 ENABLE UTF8=ACCEPT\r\n", "c5 BAD ENABLE is valid only after login\r\n", protocol.NeedMore},
		{"starttls", "c6 STARTTLS\r\n", "c6 BAD STARTTLS is not available\r\n", protocol.NeedMore},
		{"select before login", "c7 SELECT INBOX\r\n", "c7 BAD Unknown command or command not valid before login\r\n", protocol.NeedMore},
		{"unknown", "c8 FROB\r\n", "c8 BAD Unknown command or command not valid before login\r\n", protocol.NeedMore},
		{"empty line", "\r\n", "* BAD Empty command\r\n", protocol.NeedMore},
		{"bad tag", "a+b NOOP\r\n", "* BAD Invalid tag or missing command\r\n", protocol.NeedMore},
		{"tag only", "a1\r\n", "* BAD Invalid tag or missing command\r\n", protocol.NeedMore},
		{"login one arg", "d1 LOGIN user\r\n", "d1 BAD LOGIN expects a user name and a password\r\n", protocol.NeedMore},
		{"login three args", "d1 LOGIN a b c\r\n", "d1 BAD LOGIN expects a user name and a password\r\n", protocol.NeedMore},
		{"login unterminated quote", "d2 LOGIN \"u p\r\n", "d2 BAD LOGIN expects a user name and a password\r\n", protocol.NeedMore},
		{"login bad escape", `d3 LOGIN "u\x" p` + "\r\n", "d3 BAD LOGIN expects a user name and a password\r\n", protocol.NeedMore},
		{"auth unknown mech", "d4 AUTHENTICATE CRAM-MD5\r\n", "d4 NO Unsupported authentication mechanism (use PLAIN or LOGIN)\r\n", protocol.NeedMore},
		{"auth plain cancel", "d5 AUTHENTICATE PLAIN\r\n*\r\n", "+ \r\nd5 BAD AUTHENTICATE cancelled\r\n", protocol.NeedMore},
		{"auth plain bad base64", "d6 AUTHENTICATE PLAIN !!!\r\n", "d6 BAD Invalid SASL PLAIN response\r\n", protocol.NeedMore},
		{"auth plain two fields", "d7 AUTHENTICATE PLAIN dXNlcgBwYXNz\r\n", "d7 BAD Invalid SASL PLAIN response\r\n", protocol.NeedMore},
		{"auth plain foreign authzid", "d8 AUTHENTICATE PLAIN YWRtaW4AdUB4AHBhc3M=\r\n", "d8 BAD Invalid SASL PLAIN response\r\n", protocol.NeedMore},
		{"auth plain empty response", "d9 AUTHENTICATE PLAIN\r\n=\r\n", "+ \r\nd9 BAD Invalid SASL PLAIN response\r\n", protocol.NeedMore},
		{"auth login cancel", "e1 AUTHENTICATE LOGIN\r\n*\r\n", "+ VXNlcm5hbWU6\r\ne1 BAD AUTHENTICATE cancelled\r\n", protocol.NeedMore},
		{"sync literal too large", "e2 LOGIN {100000}\r\n", "e2 BAD Literal too large\r\n", protocol.NeedMore},
		{"non-sync literal too large", "e3 LOGIN {100000+}\r\n", "* BYE Literal too large\r\n", protocol.Close},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := New(testProf, TLS{}, DefaultLimits)
			out, act, _ := run(m, tc.input)
			if out != tc.want || act.Kind != tc.kind {
				t.Fatalf("got %q (kind %v), want %q (kind %v)", out, act.Kind, tc.want, tc.kind)
			}
		})
	}
}

// Pipelined commands are answered in order and the machine stops at the
// login, leaving what follows it for the session after authentication.
func TestStartTLS(t *testing.T) {
	m := New(testProf, TLS{Offered: true}, DefaultLimits)
	if g := string(testProf.Greeting(TLS{Offered: true})); g != "* OK ready\r\n" {
		t.Fatalf("greeting %q", g)
	}
	out, act, rest := run(m, "a CAPABILITY\r\nb LOGIN u@x pw\r\nc STARTTLS\r\nd LOGIN injected pw\r\n")
	want := "* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\na OK CAPABILITY completed\r\n" +
		"b NO [PRIVACYREQUIRED] Use STARTTLS first\r\nc OK Begin TLS negotiation now\r\n"
	if out != want || act.Kind != protocol.StartTLS || rest != "d LOGIN injected pw\r\n" {
		t.Fatalf("out %q kind %v rest %q", out, act.Kind, rest)
	}
	m.TLSStarted()
	out, act, _ = run(m, "e CAPABILITY\r\nf STARTTLS\r\ng LOGIN u@x pw\r\n")
	want = string(testCaps) + "e OK CAPABILITY completed\r\nf BAD STARTTLS is not available\r\n"
	if out != want || act.Kind != protocol.Login || act.Tag != "g" {
		t.Fatalf("after TLS: out %q act %+v", out, act)
	}
	// A greeting with a CAPABILITY code follows the TLS state too.
	p := NewProfile([]byte("* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] hi"), []string{"IMAP4rev1", "AUTH=XOAUTH2"})
	if g := string(p.Greeting(TLS{Offered: true})); g != "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] hi\r\n" {
		t.Fatalf("pre-TLS greeting %q", g)
	}
	if g := string(p.Greeting(TLS{Offered: true, Active: true})); g != "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n" {
		t.Fatalf("TLS greeting %q", g)
	}
}

func TestPipelining(t *testing.T) {
	m := New(testProf, TLS{}, DefaultLimits)
	out, act, rest := run(m, "1 CAPABILITY\r\n2 NOOP\r\n3 LOGIN u@x pw\r\n4 SELECT INBOX\r\n")
	if want := string(testCaps) + "1 OK CAPABILITY completed\r\n2 OK NOOP completed\r\n"; out != want {
		t.Fatalf("out %q", out)
	}
	if act.Kind != protocol.Login || act.Tag != "3" {
		t.Fatalf("act %+v", act)
	}
	if rest != "4 SELECT INBOX\r\n" {
		t.Fatalf("rest %q", rest)
	}
	// While the login runs, nothing more is consumed.
	if n, a := m.Next([]byte(rest)); n != 0 || a.Kind != protocol.NeedMore {
		t.Fatalf("consumed during login: %d %+v", n, a)
	}
	// A failed login answers with the client's tag and reads on.
	if got := string(m.LoginFailed("3", "no", false)); got != "3 NO [AUTHENTICATIONFAILED] no\r\n" {
		t.Fatalf("failure reply %q", got)
	}
	out, _, _ = run(m, rest)
	if out != "4 BAD Unknown command or command not valid before login\r\n" {
		t.Fatalf("after failure %q", out)
	}
	if got := string(m.LoginFailed("5", "later", true)); got != "5 NO [UNAVAILABLE] later\r\n" {
		t.Fatalf("temporary failure reply %q", got)
	}
	// What a server said, carried in the message, stays on the one line.
	if got := string(m.LoginFailed("6", "it said: no\r\n6 OK forged\x00\x1b[2J", true)); got != "6 NO [UNAVAILABLE] it said: no  6 OK forged  [2J\r\n" {
		t.Fatalf("a message with line breaks and control characters: %q", got)
	}
}

func TestOverlongLines(t *testing.T) {
	lim := Limits{MaxLine: 64, MaxLiteral: 64, MaxErrors: 3}
	m := New(testProf, TLS{}, lim)
	long := "a1 LOGIN " + strings.Repeat("x", 100) + " pw\r\n"
	out, act, _ := run(m, long+"a2 NOOP\r\n")
	if out != "* BAD Command line too long\r\na2 OK NOOP completed\r\n" || act.Kind != protocol.NeedMore {
		t.Fatalf("got %q %v", out, act.Kind)
	}
	// A client that keeps sending without a line end is cut off.
	m = New(testProf, TLS{}, lim)
	var closed bool
	chunk := []byte(strings.Repeat("y", 4096))
	for i := 0; i < 100 && !closed; i++ {
		buf := chunk
		for len(buf) > 0 {
			n, act := m.Next(buf)
			buf = buf[n:]
			if act.Kind == protocol.Close {
				closed = true
				if !strings.HasPrefix(string(act.Out), "* BYE") {
					t.Fatalf("close without BYE: %q", act.Out)
				}
				break
			}
			if n == 0 && act.Kind == protocol.NeedMore {
				break
			}
		}
	}
	if !closed {
		t.Fatal("endless line was never cut off")
	}
	// Repeated bad commands end in a BYE too.
	m = New(testProf, TLS{}, lim)
	out, act, _ = run(m, "a X\r\nb X\r\nc X\r\nd X\r\n")
	if act.Kind != protocol.Close || !strings.HasSuffix(out, "* BYE Too many bad commands\r\n") {
		t.Fatalf("got %q %v", out, act.Kind)
	}
}

func FuzzMachine(f *testing.F) {
	for _, s := range []string{
		"a1 LOGIN u p\r\n", "a LOGIN {3}\r\nabc {2+}\r\nxy\r\n", "a AUTHENTICATE PLAIN\r\nAHUAcA==\r\n",
		"a AUTHENTICATE LOGIN\r\ndQ==\r\ncA==\r\n", "* \r\n", "a ID ({1}\r\nx)\r\n", "a LOGIN \"\\\\\" \"\\\"\"\r\n",
		"a CAPABILITY\r\nb NOOP\r\nc LOGOUT\r\n",
	} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		m := New(testProf, TLS{}, Limits{MaxLine: 128, MaxLiteral: 128, MaxErrors: 5})
		machinetest.Feed(t, m, data, int(split)%17+1, func(act protocol.Action) {
			if act.Tag == "" {
				t.Fatal("login without tag")
			}
			m.LoginFailed(act.Tag, "x", false)
		})
	})
}

func BenchmarkLogin(b *testing.B) {
	m := New(testProf, TLS{}, DefaultLimits)
	in := []byte("a1 LOGIN user@example.com \"pass word\"\r\n")
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for i := 0; i < b.N; i++ {
		_, act := m.Next(in)
		if act.Kind != protocol.Login {
			b.Fatal(act.Kind)
		}
		m.LoginFailed("a1", "x", false)
	}
}

func BenchmarkCapabilityNoop(b *testing.B) {
	m := New(testProf, TLS{}, DefaultLimits)
	in := []byte("a1 CAPABILITY\r\na2 NOOP\r\n")
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for i := 0; i < b.N; i++ {
		buf := in
		for len(buf) > 0 {
			n, _ := m.Next(buf)
			buf = buf[n:]
		}
	}
}
