package engine

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/emailproxy/emailproxy/bench/mock"
)

// bigMessage is a multi-MB message with 8-bit bytes and lines starting
// with dots, CRLF line ends throughout.
func bigMessage(size int) []byte {
	rng := rand.New(rand.NewSource(1))
	var b bytes.Buffer
	b.WriteString("From: sender@example.com\r\nTo: " + testAccount + "\r\nSubject: big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		switch i % 7 {
		case 0:
			b.WriteString(".leading dot line\r\n")
		case 1:
			b.WriteString("..two dots\r\n")
		case 2:
			b.WriteString(".\r\n")
		case 3:
			b.WriteString("Grüße, 8-bit: \xc3\xa9\xe2\x82\xac\r\n")
		default:
			line := make([]byte, 70)
			for j := range line {
				line[j] = byte('a' + rng.Intn(26))
			}
			b.Write(line)
			b.WriteString("\r\n")
		}
	}
	return b.Bytes()
}

func mailboxWithBig() (map[string][]mock.Message, []byte) {
	big := bigMessage(3 << 20)
	return map[string][]mock.Message{testAccount: {
		{UID: "small-1", Body: []byte("Subject: first\r\n\r\nhello\r\n")},
		{UID: "big-2", Body: big},
	}}, big
}

// The password has spaces, quotes and a backslash, so the client must quote
// or use a literal.
const testPassword = `local pa"ss\word`

func TestIMAPEndToEnd(t *testing.T) { eachFrontEnd(t, testIMAPEndToEnd) }

func testIMAPEndToEnd(t *testing.T, fe string) {
	boxes, big := mailboxWithBig()
	env := startEnv(t, envOptions{mailboxes: boxes, engine: Options{FrontEnd: fe}})

	c, notified := dialIMAPNotified(t, env.imapAddr)
	if err := c.WaitGreeting(); err != nil {
		t.Fatal(err)
	}
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	if !caps.Has("AUTH=PLAIN") || caps.Has("AUTH=XOAUTH2") || caps.Has(imap.CapLoginDisabled) {
		t.Fatalf("pre-login capabilities not rewritten: %v", caps)
	}
	if err := c.Login(testAccount, testPassword).Wait(); err != nil {
		t.Fatalf("login: %v", err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 2 {
		t.Fatalf("messages %d", sel.NumMessages)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(2), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if got := msgs[0].FindBodySection(section); !bytes.Equal(got, big) {
		t.Fatalf("FETCH body differs: %d bytes, want %d", len(got), len(big))
	}

	// A second client APPENDs through the proxy while the first IDLEs.
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	appended := []byte("Subject: appended\r\n\r\n.dot line\r\nbody \xff\r\n")
	c2 := appendFromSecondClient(t, env.imapAddr, testAccount, testPassword, appended, notified, 3)
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err = c.Fetch(imap.SeqSetNum(3), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil || !bytes.Equal(msgs[0].FindBodySection(section), appended) {
		t.Fatalf("appended message differs: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	c2.Logout().Wait()

	// The upstream saw exactly the XOAUTH2 string of §5.4.
	got := env.up.XOAUTH2Received()
	if len(got) != 2 {
		t.Fatalf("upstream logins %d", len(got))
	}
	for _, s := range got {
		if !strings.HasPrefix(s, "user="+testAccount+"\x01auth=Bearer mock-") || !strings.HasSuffix(s, "\x01\x01") {
			t.Fatalf("XOAUTH2 %q", s)
		}
		if strings.Contains(s, testPassword) {
			t.Fatal("local password sent upstream")
		}
	}
	if n := env.up.Authority.Requests(); n != 1 {
		t.Fatalf("token requests %d, want 1 for two logins", n)
	}
}

func TestPOP3EndToEnd(t *testing.T) { eachFrontEnd(t, testPOP3EndToEnd) }

func testPOP3EndToEnd(t *testing.T, fe string) {
	boxes, big := mailboxWithBig()
	env := startEnv(t, envOptions{mailboxes: boxes, engine: Options{FrontEnd: fe}})

	p := dialPOP(t, env.popAddr)
	capa := p.ok("CAPA")
	_ = capa
	lines := string(p.multi())
	if !strings.Contains(lines, "SASL PLAIN\r\n") || !strings.Contains(lines, "USER\r\n") || strings.Contains(lines, "XOAUTH2") {
		t.Fatalf("CAPA not rewritten: %q", lines)
	}
	p.ok("USER %s", testAccount)
	if s := p.ok("PASS %s", testPassword); !strings.Contains(s, "authenticated") {
		t.Fatalf("PASS answer %q (want the upstream's)", s)
	}
	if s := p.ok("STAT"); s != fmt.Sprintf("+OK 2 %d", len(big)+len("Subject: first\r\n\r\nhello\r\n")) {
		t.Fatalf("STAT %q", s)
	}
	p.ok("LIST")
	if l := string(p.multi()); !strings.Contains(l, fmt.Sprintf("2 %d\r\n", len(big))) {
		t.Fatalf("LIST %q", l)
	}
	p.ok("UIDL")
	if l := string(p.multi()); l != "1 small-1\r\n2 big-2\r\n" {
		t.Fatalf("UIDL %q", l)
	}
	p.ok("RETR 2")
	if got := p.multi(); !bytes.Equal(got, big) {
		t.Fatalf("RETR differs: %d bytes, want %d", len(got), len(big))
	}
	p.ok("DELE 1")
	p.ok("QUIT")
	deadline := time.Now().Add(5 * time.Second)
	for len(env.up.Mailbox(testAccount)) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(env.up.Mailbox(testAccount)); n != 1 {
		t.Fatalf("DELE not committed upstream: %d messages", n)
	}

	// RFC 2449 pipelining: USER, PASS, STAT and QUIT in one write.
	r := dialRaw(t, env.popAddr)
	r.line()
	r.send("USER " + testAccount + "\r\nPASS " + testPassword + "\r\nSTAT\r\nQUIT\r\n")
	got := []string{r.line(), r.line(), r.line(), r.line()}
	if !strings.HasPrefix(got[0], "+OK") || !strings.HasPrefix(got[1], "+OK User") || !strings.HasPrefix(got[2], "+OK 1 ") || got[3] != "+OK bye" {
		t.Fatalf("pipelined answers %q", got)
	}

	// AUTH PLAIN, both forms.
	r = dialRaw(t, env.popAddr)
	r.line()
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + testAccount + "\x00" + testPassword))
	r.send("AUTH PLAIN\r\n")
	if l := r.line(); l != "+ " {
		t.Fatalf("AUTH PLAIN prompt %q", l)
	}
	r.send(plain + "\r\nQUIT\r\n")
	if l := r.line(); !strings.HasPrefix(l, "+OK User") {
		t.Fatalf("AUTH PLAIN %q", l)
	}
	r = dialRaw(t, env.popAddr)
	r.line()
	r.send("AUTH PLAIN " + plain + "\r\nSTAT\r\n")
	if l := r.line(); !strings.HasPrefix(l, "+OK User") {
		t.Fatalf("AUTH PLAIN with initial response %q", l)
	}
	if l := r.line(); !strings.HasPrefix(l, "+OK 1 ") {
		t.Fatalf("STAT after AUTH %q", l)
	}

	// AUTH LOGIN, taken though not offered, user name and password each
	// on their own line.
	r = dialRaw(t, env.popAddr)
	r.line()
	b64 := base64.StdEncoding.EncodeToString
	r.send("AUTH LOGIN\r\n")
	if l := r.line(); l != "+ VXNlcm5hbWU6" {
		t.Fatalf("AUTH LOGIN user prompt %q", l)
	}
	r.send(b64([]byte(testAccount)) + "\r\n")
	if l := r.line(); l != "+ UGFzc3dvcmQ6" {
		t.Fatalf("AUTH LOGIN password prompt %q", l)
	}
	r.send(b64([]byte(testPassword)) + "\r\nSTAT\r\n")
	if l := r.line(); !strings.HasPrefix(l, "+OK User") {
		t.Fatalf("AUTH LOGIN %q", l)
	}
	if l := r.line(); !strings.HasPrefix(l, "+OK 1 ") {
		t.Fatalf("STAT after AUTH LOGIN %q", l)
	}
}

// A password with CRLF and quotes can only travel in a literal; the proxy
// reads it by byte count.
func TestIMAPLiteralLoginAndPipelining(t *testing.T) {
	eachFrontEnd(t, testIMAPLiteralLoginAndPipelining)
}

func testIMAPLiteralLoginAndPipelining(t *testing.T, fe string) {
	env := startEnv(t, envOptions{engine: Options{FrontEnd: fe}})
	pass := "line1\r\nline2 \"q\" {3}\r\n"
	r := dialRaw(t, env.imapAddr)
	if g := r.line(); !strings.HasPrefix(g, "* OK") || !strings.Contains(g, "AUTH=PLAIN") {
		t.Fatalf("greeting %q", g)
	}
	r.send(fmt.Sprintf("a1 LOGIN {%d}\r\n", len(testAccount)))
	if l := r.line(); !strings.HasPrefix(l, "+ ") {
		t.Fatalf("literal continuation %q", l)
	}
	// The password literal is non-synchronising, and SELECT and LOGOUT are
	// pipelined behind the login: they must reach the mailbox afterwards.
	r.send(fmt.Sprintf("%s {%d+}\r\n%s\r\na2 SELECT INBOX\r\na3 LOGOUT\r\n", testAccount, len(pass), pass))
	lines := r.until("a1 ")
	if !strings.HasPrefix(lines[len(lines)-1], "a1 OK") {
		t.Fatalf("login: %q", lines)
	}
	if lines := r.until("a2 "); !strings.HasPrefix(lines[len(lines)-1], "a2 OK") {
		t.Fatalf("pipelined SELECT: %q", lines)
	}
	if lines := r.until("a3 "); !strings.HasPrefix(lines[len(lines)-1], "a3 OK") {
		t.Fatalf("pipelined LOGOUT: %q", lines)
	}
	r.expectEOF()

	// The same password now works quoted-free through AUTHENTICATE PLAIN
	// with SASL-IR, and any other password is refused without reaching the
	// mailbox.
	before := len(env.up.XOAUTH2Received())
	r = dialRaw(t, env.imapAddr)
	r.line()
	r.send("b1 AUTHENTICATE PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+testAccount+"\x00wrong")) + "\r\n")
	if l := r.line(); !strings.HasPrefix(l, "b1 NO [AUTHENTICATIONFAILED]") || !strings.Contains(l, "incorrect") {
		t.Fatalf("wrong password: %q", l)
	}
	if len(env.up.XOAUTH2Received()) != before {
		t.Fatal("a wrong password reached the upstream")
	}
	r.send("b2 AUTHENTICATE PLAIN\r\n")
	if l := r.line(); l != "+ " {
		t.Fatalf("continuation %q", l)
	}
	r.send(base64.StdEncoding.EncodeToString([]byte("\x00"+testAccount+"\x00"+pass)) + "\r\n")
	if lines := r.until("b2 "); !strings.HasPrefix(lines[len(lines)-1], "b2 OK") {
		t.Fatalf("retry on the same connection: %q", lines)
	}
}

// dialIMAPNotified connects a go-imap client to addr that reports the
// mailbox sizes the server announces (EXISTS) on notified; it is closed
// when the test ends.
func dialIMAPNotified(t *testing.T, addr string) (*imapclient.Client, chan uint32) {
	t.Helper()
	notified := make(chan uint32, 4)
	c, err := imapclient.DialInsecure(addr, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				notified <- *d.NumMessages
			}
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, notified
}

// appendFromSecondClient logs a second client in to addr as user,
// APPENDs msg to INBOX and waits for the first client's IDLE to report
// want messages on notified. It returns the second client, logged in.
func appendFromSecondClient(t *testing.T, addr, user, pass string, msg []byte, notified chan uint32, want uint32) *imapclient.Client {
	t.Helper()
	c2, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c2.Close() })
	if err := c2.Login(user, pass).Wait(); err != nil {
		t.Fatalf("second login: %v", err)
	}
	ap := c2.Append("INBOX", int64(len(msg)), nil)
	ap.Write(msg)
	ap.Close()
	if _, err := ap.Wait(); err != nil {
		t.Fatalf("append: %v", err)
	}
	select {
	case n := <-notified:
		if n != want {
			t.Fatalf("IDLE saw %d messages, want %d", n, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("IDLE got no EXISTS")
	}
	return c2
}
