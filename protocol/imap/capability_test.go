package imap

import (
	"strings"
	"testing"
)

func TestProxyCapabilities(t *testing.T) {
	tests := []struct{ in, want string }{
		// Gmail: every AUTH= collapses to one AUTH=PLAIN; SASL-IR kept.
		{"IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 XYZZY SASL-IR AUTH=XOAUTH2 AUTH=PLAIN AUTH=PLAIN-CLIENTTOKEN AUTH=OAUTHBEARER AUTH=XOAUTH",
			"IMAP4rev1 AUTH=PLAIN UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 XYZZY SASL-IR"},
		// Exchange: no SASL-IR upstream still offers it (the proxy decodes IR itself).
		{"IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+",
			"IMAP4 IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+"},
		{"IMAP4rev1 LOGINDISABLED STARTTLS AUTH=XOAUTH2", "IMAP4rev1 AUTH=PLAIN SASL-IR"},
		{"IMAP4rev1 IDLE", "IMAP4rev1 AUTH=PLAIN SASL-IR IDLE"},
		{"", "AUTH=PLAIN SASL-IR"},
	}
	for _, tc := range tests {
		got := strings.Join(ProxyCapabilities(strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}

func TestGreetingAndCapabilityLines(t *testing.T) {
	caps, ok := GreetingCapabilities([]byte("* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR] Gimap ready"))
	if !ok || strings.Join(caps, " ") != "IMAP4rev1 AUTH=XOAUTH2 SASL-IR" {
		t.Fatalf("greeting caps %v %v", caps, ok)
	}
	if _, ok := GreetingCapabilities([]byte("* OK The Microsoft Exchange IMAP4 service is ready.")); ok {
		t.Fatal("found caps in a greeting without them")
	}
	g := ProxyGreeting([]byte("* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] Gimap ready\r\n"), []string{"IMAP4rev1", "AUTH=PLAIN"})
	if string(g) != "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Gimap ready\r\n" {
		t.Fatalf("greeting %q", g)
	}
	g = ProxyGreeting([]byte("* OK The Microsoft Exchange IMAP4 service is ready."), nil)
	if string(g) != "* OK The Microsoft Exchange IMAP4 service is ready.\r\n" {
		t.Fatalf("greeting %q", g)
	}
	caps, ok = ParseCapabilityLine([]byte("* capability IMAP4rev1 IDLE"))
	if !ok || len(caps) != 2 {
		t.Fatalf("line caps %v %v", caps, ok)
	}
	if _, ok := ParseCapabilityLine([]byte("* CAPABILITYX")); ok {
		t.Fatal("parsed a non-capability line")
	}
}

func TestParseResponse(t *testing.T) {
	tests := []struct {
		line      string
		st        Status
		tag, text string
	}{
		{"* OK hi", Untagged, "", "* OK hi"},
		{"+ eyJzdGF0dXMiOiI0MDAifQ==", Continuation, "", "eyJzdGF0dXMiOiI0MDAifQ=="},
		{"+", Continuation, "", ""},
		{"a1 OK AUTHENTICATE completed.", OK, "a1", "AUTHENTICATE completed."},
		{"a1 no [AUTHENTICATIONFAILED] failed", NO, "a1", "[AUTHENTICATIONFAILED] failed"},
		{"a1 BAD", BAD, "a1", ""},
		{"a1 WHAT now", Other, "a1", "now"},
		{"garbage", Other, "", ""},
	}
	for _, tc := range tests {
		st, tag, text := ParseResponse([]byte(tc.line))
		if st != tc.st || string(tag) != tc.tag || string(text) != tc.text {
			t.Errorf("%q: got %v %q %q", tc.line, st, tag, text)
		}
	}
}
