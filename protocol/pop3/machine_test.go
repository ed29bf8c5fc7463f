package pop3

import (
	"strings"
	"testing"

	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/internal/machinetest"
)

var (
	testProf = NewProfile([]byte("+OK ready"), []string{"TOP", "UIDL", "SASL XOAUTH2", "STLS", "PIPELINING"})
	testCapa = testProf.Capa(TLS{})
)

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

func TestLogins(t *testing.T) {
	tests := []struct{ name, input, out, user, pass string }{
		{"user pass", "USER u@x\r\nPASS secret\r\n", "+OK Send your password\r\n", "u@x", "secret"},
		{"password with spaces", "user u@x\r\npass  two words \r\n", "+OK Send your password\r\n", "u@x", " two words "},
		{"auth plain with IR", "AUTH PLAIN AHVAeABwYXNz\r\n", "", "u@x", "pass"},
		{"auth plain two steps", "AUTH PLAIN\r\nAHVAeABwYXNz\r\n", "+ \r\n", "u@x", "pass"},
		{"after capa and bare auth", "CAPA\r\nAUTH\r\nUSER u@x\r\nPASS p\r\n", string(testCapa) + "+OK Supported mechanisms follow\r\nPLAIN\r\n.\r\n+OK Send your password\r\n", "u@x", "p"},
		// AUTH LOGIN is taken though CAPA offers PLAIN only.
		{"auth login three steps", "AUTH LOGIN\r\ndUB4\r\ncGFzcyB3b3Jk\r\n", "+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n", "u@x", "pass word"},
		{"auth login with IR", "auth login dUB4\r\ncGFzcw==\r\n", "+ UGFzc3dvcmQ6\r\n", "u@x", "pass"},
		{"auth login after a USER", "USER other\r\nAUTH LOGIN dUB4\r\ncGFzcw\r\n", "+OK Send your password\r\n+ UGFzc3dvcmQ6\r\n", "u@x", "pass"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, act, rest := run(New(testProf, TLS{}, DefaultLimits), tc.input)
			if act.Kind != protocol.Login || act.Creds.Username != tc.user || act.Creds.Password != tc.pass {
				t.Fatalf("act %+v out %q", act, out)
			}
			if out != tc.out || rest != "" {
				t.Fatalf("out %q rest %q", out, rest)
			}
		})
	}
}

func TestPreLoginAnswers(t *testing.T) {
	tests := []struct {
		name, input, want string
		kind              protocol.Kind
	}{
		{"quit", "QUIT\r\n", "+OK Bye\r\n", protocol.Close},
		{"pass first", "PASS x\r\n", "-ERR Send USER first\r\n", protocol.NeedMore},
		{"user without name", "USER\r\n", "-ERR USER needs a user name\r\n", protocol.NeedMore},
		{"stls", "STLS\r\n", "-ERR STLS is not available\r\n", protocol.NeedMore},
		{"apop", "APOP u 0123\r\n", "-ERR APOP is not supported: use USER/PASS or AUTH PLAIN\r\n", protocol.NeedMore},
		{"stat before login", "STAT\r\n", "-ERR Unknown command or command not valid before login\r\n", protocol.NeedMore},
		{"auth other mechanism", "AUTH CRAM-MD5\r\n", "-ERR Unsupported SASL mechanism (use PLAIN)\r\n", protocol.NeedMore},
		{"auth login cancelled at the user", "AUTH LOGIN\r\n*\r\n", "+ VXNlcm5hbWU6\r\n-ERR Authentication cancelled\r\n", protocol.NeedMore},
		{"auth login cancelled at the password", "AUTH LOGIN dUB4\r\n*\r\n", "+ UGFzc3dvcmQ6\r\n-ERR Authentication cancelled\r\n", protocol.NeedMore},
		{"auth login malformed", "AUTH LOGIN ###\r\n", "-ERR Invalid SASL LOGIN response\r\n", protocol.NeedMore},
		{"auth login then PASS", "AUTH LOGIN dUB4\r\n!!\r\nPASS p\r\n", "+ UGFzc3dvcmQ6\r\n-ERR Invalid SASL LOGIN response\r\n-ERR Send USER first\r\n", protocol.NeedMore},
		{"auth cancel", "AUTH PLAIN\r\n*\r\n", "+ \r\n-ERR Authentication cancelled\r\n", protocol.NeedMore},
		{"auth malformed", "AUTH PLAIN ###\r\n", "-ERR Invalid SASL PLAIN response\r\n", protocol.NeedMore},
		{"auth malformed second step", "AUTH PLAIN\r\nAAAA\r\n", "+ \r\n-ERR Invalid SASL PLAIN response\r\n", protocol.NeedMore},
		{"user then quit", "USER u\r\nQUIT\r\n", "+OK Send your password\r\n+OK Bye\r\n", protocol.Close},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, act, _ := run(New(testProf, TLS{}, DefaultLimits), tc.input)
			if out != tc.want || act.Kind != tc.kind {
				t.Fatalf("got %q (%v) want %q (%v)", out, act.Kind, tc.want, tc.kind)
			}
		})
	}
}

// RFC 2449 PIPELINING: USER, PASS and STAT in one write; the machine stops
// at the login and leaves STAT for the authenticated session.
func TestPipelinedLogin(t *testing.T) {
	m := New(testProf, TLS{}, DefaultLimits)
	out, act, rest := run(m, "USER u@x\r\nPASS pw\r\nSTAT\r\nLIST\r\n")
	if out != "+OK Send your password\r\n" || act.Kind != protocol.Login || rest != "STAT\r\nLIST\r\n" {
		t.Fatalf("out %q act %+v rest %q", out, act, rest)
	}
	if got := string(m.LoginFailed("bad", false)); got != "-ERR [AUTH] bad\r\n" {
		t.Fatalf("failure %q", got)
	}
	out, _, _ = run(m, rest)
	if strings.Count(out, "-ERR") != 2 {
		t.Fatalf("after failure %q", out)
	}
	if got := string(m.LoginFailed("said\r\n+OK forged", true)); got != "-ERR [SYS/TEMP] said  +OK forged\r\n" {
		t.Fatalf("a message with a line break: %q", got)
	}
	if got := string(m.LoginFailed("later", true)); got != "-ERR [SYS/TEMP] later\r\n" {
		t.Fatalf("temporary failure %q", got)
	}
}

// What the client sends while a SASL exchange waits for it holds
// credentials: the trace must not show it.
func TestConfidential(t *testing.T) {
	for _, tc := range []struct {
		input string
		want  bool
	}{
		{"", false}, {"USER u\r\n", false}, {"AUTH PLAIN\r\n", true},
		{"AUTH LOGIN\r\n", true}, {"AUTH LOGIN dUB4\r\n", true}, {"AUTH LOGIN\r\n*\r\n", false},
	} {
		m := New(testProf, TLS{}, DefaultLimits)
		run(m, tc.input)
		if got := m.Confidential(); got != tc.want {
			t.Errorf("after %q: confidential %v, want %v", tc.input, got, tc.want)
		}
	}
}

func TestSTLS(t *testing.T) {
	m := New(testProf, TLS{Offered: true}, DefaultLimits)
	out, act, rest := run(m, "CAPA\r\nUSER u@x\r\nSTLS\r\nPASS injected\r\n")
	want := "+OK Capability list follows\r\nTOP\r\nUIDL\r\nPIPELINING\r\nSTLS\r\n.\r\n-ERR Use STLS first\r\n+OK Begin TLS negotiation\r\n"
	if out != want || act.Kind != protocol.StartTLS || rest != "PASS injected\r\n" {
		t.Fatalf("out %q kind %v rest %q", out, act.Kind, rest)
	}
	m.TLSStarted()
	out, act, _ = run(m, "STLS\r\nUSER u@x\r\nPASS pw\r\n")
	if out != "-ERR STLS is not available\r\n+OK Send your password\r\n" || act.Kind != protocol.Login {
		t.Fatalf("after TLS: %q %+v", out, act)
	}
}

func TestOverlong(t *testing.T) {
	m := New(testProf, TLS{}, Limits{MaxLine: 32, MaxErrors: 3})
	out, act, _ := run(m, "USER "+strings.Repeat("a", 100)+"\r\nNOOP\r\n")
	if act.Kind != protocol.NeedMore || !strings.HasPrefix(out, "-ERR Line too long\r\n") {
		t.Fatalf("got %q %v", out, act.Kind)
	}
	m = New(testProf, TLS{}, Limits{MaxLine: 32, MaxErrors: 3})
	big := []byte(strings.Repeat("z", 1<<20))
	closed := false
	for len(big) > 0 {
		n, act := m.Next(big)
		big = big[n:]
		if act.Kind == protocol.Close {
			closed = true
			break
		}
		if n == 0 && act.Kind == protocol.NeedMore {
			break
		}
	}
	if !closed {
		t.Fatal("endless line was not cut off")
	}
}

func TestCapaAndGreeting(t *testing.T) {
	got := strings.Join(ProxyCapa([]string{"TOP", "SASL XOAUTH2 OAUTHBEARER", "STLS", "UIDL"}), "|")
	if got != "TOP|SASL PLAIN|UIDL|USER" {
		t.Fatalf("capa %q", got)
	}
	if got := strings.Join(ProxyCapa(nil), "|"); got != "SASL PLAIN|USER" {
		t.Fatalf("empty capa %q", got)
	}
	g := ProxyGreeting([]byte("+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n"))
	if string(g) != "+OK POP3 ready\r\n" {
		t.Fatalf("greeting %q", g)
	}
	g = ProxyGreeting([]byte("+OK The Microsoft Exchange POP3 service is ready. [TQBO...]"))
	if string(g) != "+OK The Microsoft Exchange POP3 service is ready. [TQBO...]\r\n" {
		t.Fatalf("greeting %q", g)
	}
}

func FuzzMachine(f *testing.F) {
	for _, s := range []string{"USER a\r\nPASS b\r\n", "AUTH PLAIN\r\nAGEAYg==\r\n", "CAPA\r\nAUTH\r\nQUIT\r\n", "AUTH PLAIN *\r\n", "AUTH LOGIN\r\ndQ==\r\ncA==\r\n"} {
		f.Add([]byte(s), uint8(2))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		m := New(testProf, TLS{}, Limits{MaxLine: 64, MaxErrors: 5})
		machinetest.Feed(t, m, data, int(split)%13+1, func(protocol.Action) { m.LoginFailed("x", false) })
	})
}

func BenchmarkUserPass(b *testing.B) {
	m := New(testProf, TLS{}, DefaultLimits)
	in := []byte("USER user@example.com\r\nPASS secret\r\n")
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
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
