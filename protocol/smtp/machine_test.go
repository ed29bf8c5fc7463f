package smtp

import (
	"strings"
	"testing"

	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/internal/machinetest"
)

var testProf = &Profile{Domain: "mx.example.com", Caps: ProxyCaps([]string{"SIZE 35882577", "8BITMIME", "AUTH LOGIN XOAUTH2", "AUTH=LOGIN", "STARTTLS", "PIPELINING", "SMTPUTF8", "CHUNKING", "ENHANCEDSTATUSCODES"})}

func run(m *Machine, input string) (string, protocol.Action, string) {
	var out strings.Builder
	in := []byte(input)
	for {
		n, act := m.Next(in)
		in = in[n:]
		out.Write(act.Out)
		if act.Kind != protocol.Reply {
			return out.String(), act, string(in)
		}
	}
}

const ehloPlain = "250-mx.example.com\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n250-PIPELINING\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n"

func TestEHLORewriting(t *testing.T) {
	out, _, _ := run(New(testProf, TLS{}, DefaultLimits), "EHLO client.example\r\n")
	if out != ehloPlain {
		t.Fatalf("EHLO:\n%s", out)
	}
	out, _, _ = run(New(testProf, TLS{}, DefaultLimits), "HELO client.example\r\n")
	if out != "250 mx.example.com\r\n" {
		t.Fatalf("HELO %q", out)
	}
	// STARTTLS offered and required: no AUTH until TLS.
	out, _, _ = run(New(testProf, TLS{Offered: true, Required: true}, DefaultLimits), "EHLO c\r\n")
	if strings.Contains(out, "AUTH") || !strings.HasSuffix(out, "250 STARTTLS\r\n") {
		t.Fatalf("EHLO before TLS:\n%s", out)
	}
	m := New(testProf, TLS{Offered: true, Required: true}, DefaultLimits)
	out, act, rest := run(m, "EHLO c\r\nSTARTTLS\r\nAUTH PLAIN AHVAeABw\r\n")
	if act.Kind != protocol.StartTLS || !strings.HasSuffix(out, "220 2.0.0 Ready to start TLS\r\n") || rest != "AUTH PLAIN AHVAeABw\r\n" {
		t.Fatalf("STARTTLS: %q %v %q", out, act.Kind, rest)
	}
	m.TLSStarted()
	// After TLS the client must EHLO again; AUTH is now offered, STARTTLS not.
	out, _, _ = run(m, "AUTH PLAIN AHVAeABw\r\n")
	if out != "503 5.5.1 Send EHLO first\r\n" {
		t.Fatalf("AUTH after TLS without EHLO %q", out)
	}
	out, _, _ = run(m, "EHLO c\r\n")
	if !strings.HasSuffix(out, "250 AUTH PLAIN LOGIN\r\n") || strings.Contains(out, "STARTTLS") {
		t.Fatalf("EHLO after TLS:\n%s", out)
	}
}

func TestAuthForms(t *testing.T) {
	tests := []struct{ name, input, out, user, pass string }{
		{"plain ir", "EHLO c\r\nAUTH PLAIN AHVAeABwIHc=\r\n", ehloPlain, "u@x", "p w"},
		{"plain two steps", "EHLO c\r\nAUTH PLAIN\r\nAHVAeABwIHc=\r\n", ehloPlain + "334 \r\n", "u@x", "p w"},
		{"login", "EHLO c\r\nAUTH LOGIN\r\ndUB4\r\ncCB3\r\n", ehloPlain + "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n", "u@x", "p w"},
		{"login ir", "EHLO c\r\nauth login dUB4\r\ncCB3\r\n", ehloPlain + "334 UGFzc3dvcmQ6\r\n", "u@x", "p w"},
		{"helo then auth", "HELO c\r\nAUTH PLAIN AHVAeABwIHc=\r\n", "250 mx.example.com\r\n", "u@x", "p w"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, act, rest := run(New(testProf, TLS{}, DefaultLimits), tc.input)
			if act.Kind != protocol.Login || act.Creds.Username != tc.user || act.Creds.Password != tc.pass || out != tc.out || rest != "" {
				t.Fatalf("out %q act %+v rest %q", out, act, rest)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name, input, want string
		kind              protocol.Kind
	}{
		{"auth before ehlo", "AUTH PLAIN AHVAeABw\r\n", "503 5.5.1 Send EHLO first\r\n", protocol.NeedMore},
		{"pipelined auth before ehlo", "AUTH PLAIN AHVAeABw\r\nEHLO c\r\n", "503 5.5.1 Send EHLO first\r\n" + ehloPlain, protocol.NeedMore},
		{"mail before auth", "EHLO c\r\nMAIL FROM:<a@b>\r\n", ehloPlain + "530 5.7.0 Authentication required\r\n", protocol.NeedMore},
		{"auth tls required", "EHLO c\r\nAUTH PLAIN AHVAeABw\r\n", "", protocol.NeedMore},
		{"unknown mech", "EHLO c\r\nAUTH CRAM-MD5\r\n", ehloPlain + "504 5.5.4 Unrecognized authentication type (use PLAIN or LOGIN)\r\n", protocol.NeedMore},
		{"cancel", "EHLO c\r\nAUTH PLAIN\r\n*\r\n", ehloPlain + "334 \r\n501 5.7.0 Authentication cancelled\r\n", protocol.NeedMore},
		{"bad base64", "EHLO c\r\nAUTH LOGIN\r\n!!\r\n", ehloPlain + "334 VXNlcm5hbWU6\r\n501 5.5.2 Cannot decode the SASL response\r\n", protocol.NeedMore},
		{"ehlo without name", "EHLO\r\n", "501 5.5.4 Syntax: EHLO hostname\r\n", protocol.NeedMore},
		{"starttls not offered", "STARTTLS\r\n", "502 5.5.1 STARTTLS is not available\r\n", protocol.NeedMore},
		{"noop rset quit", "NOOP\r\nRSET\r\nQUIT\r\n", "250 2.0.0 OK\r\n250 2.0.0 OK\r\n221 2.0.0 Bye\r\n", protocol.Close},
		{"unknown", "FROB\r\n", "502 5.5.2 Command not recognized\r\n", protocol.NeedMore},
		{"too long", "EHLO " + strings.Repeat("x", 9000) + "\r\nNOOP\r\n", "500 5.5.6 Line too long\r\n250 2.0.0 OK\r\n", protocol.NeedMore},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tls := TLS{}
			if tc.name == "auth tls required" {
				tls = TLS{Offered: true, Required: true}
				m := New(testProf, tls, DefaultLimits)
				run(m, "EHLO c\r\n")
				out, _, _ := run(m, "AUTH PLAIN AHVAeABw\r\n")
				if out != "530 5.7.0 Must issue a STARTTLS command first\r\n" {
					t.Fatalf("%q", out)
				}
				return
			}
			out, act, _ := run(New(testProf, tls, DefaultLimits), tc.input)
			if out != tc.want || act.Kind != tc.kind {
				t.Fatalf("got %q (%v) want %q (%v)", out, act.Kind, tc.want, tc.kind)
			}
		})
	}
}

func TestLoginFailedAndPipelining(t *testing.T) {
	m := New(testProf, TLS{}, DefaultLimits)
	_, act, rest := run(m, "EHLO c\r\nAUTH PLAIN AHVAeABw\r\nMAIL FROM:<u@x>\r\nRCPT TO:<v@y>\r\n")
	if act.Kind != protocol.Login || rest != "MAIL FROM:<u@x>\r\nRCPT TO:<v@y>\r\n" {
		t.Fatalf("act %+v rest %q", act, rest)
	}
	if got := string(m.LoginFailed("bad password", false)); got != "535 5.7.8 Authentication credentials invalid: bad password\r\n" {
		t.Fatalf("%q", got)
	}
	if got := string(m.LoginFailed("said 454\r\n235 forged", true)); got != "454 4.7.0 Temporary authentication failure: said 454  235 forged\r\n" {
		t.Fatalf("a message with a line break: %q", got)
	}
	if got := string(m.LoginFailed("token endpoint down", true)); got != "454 4.7.0 Temporary authentication failure: token endpoint down\r\n" {
		t.Fatalf("%q", got)
	}
}

func TestHelpers(t *testing.T) {
	if got := strings.Join(AuthMechanisms([]string{"SIZE 1", "AUTH LOGIN XOAUTH2", "AUTH=OAUTHBEARER"}), " "); got != "LOGIN XOAUTH2 OAUTHBEARER" {
		t.Fatalf("mechs %q", got)
	}
	// Blanks other than one space, and a lower-case keyword, as a careless
	// server may send them.
	if got := strings.Join(AuthMechanisms([]string{"auth\txoauth2  plain ", " AUTH=", "AUTHX Y"}), " "); got != "XOAUTH2 PLAIN" {
		t.Fatalf("mechs %q", got)
	}
	// What the proxy does itself is not offered twice, however it is
	// written; blank keywords go; the rest passes, its blanks trimmed.
	if got := strings.Join(ProxyCaps([]string{"starttls ", "", "  ", "Auth\tPLAIN", "auth=login", "AUTHX 1", " SIZE 10 "}), "|"); got != "AUTHX 1|SIZE 10" {
		t.Fatalf("caps %q", got)
	}
	for _, c := range []struct {
		line     string
		code     int
		more, ok bool
	}{{"250-PIPELINING", 250, true, true}, {"235 2.7.0 OK", 235, false, true}, {"334", 334, false, true}, {"25x hi", 0, false, false}, {"250+x", 0, false, false}} {
		code, more, _, ok := ParseReply([]byte(c.line))
		if code != c.code || more != c.more || ok != c.ok {
			t.Errorf("%q: %d %v %v", c.line, code, more, ok)
		}
	}
}

func FuzzMachine(f *testing.F) {
	for _, s := range []string{"EHLO a\r\nAUTH PLAIN AGEAYg==\r\n", "EHLO a\r\nAUTH LOGIN\r\nYQ==\r\nYg==\r\n", "HELO a\r\nSTARTTLS\r\nQUIT\r\n", "AUTH PLAIN\r\n*\r\n"} {
		f.Add([]byte(s), uint8(3), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint8, offered bool) {
		m := New(testProf, TLS{Offered: offered, Required: offered}, Limits{MaxLine: 64, MaxErrors: 5})
		machinetest.Feed(t, m, data, int(split)%11+1, func(protocol.Action) { m.LoginFailed("x", false) })
	})
}

func BenchmarkEHLOAuth(b *testing.B) {
	m := New(testProf, TLS{}, DefaultLimits)
	in := []byte("EHLO client.example\r\nAUTH PLAIN AHVAeABwIHc=\r\n")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf := in
		for {
			n, act := m.Next(buf)
			buf = buf[n:]
			if act.Kind == protocol.Login {
				m.LoginFailed("x", false)
				break
			}
		}
	}
}
