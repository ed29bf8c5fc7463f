package load

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

// randomScript is one client of the random-scripts kind: a session of
// IMAP, POP3 or SMTP put together at random from logins in every form the
// proxy takes (with the right password or a wrong one), the commands a
// poller sends, literals, and junk; written whole, in pieces or with
// pauses; read in full, slowly, or never; ended by a close, a reset, a
// half-close or silence. It finds what the other kinds, each one
// behaviour, do not: two of them at once, at any step of a session.
func (t *Target) randomScript(ctx context.Context, a Account, r *rand.Rand) {
	protos := []config.Protocol{config.IMAP, config.POP, config.SMTP}
	proto := protos[r.IntN(len(protos))]
	if !t.Has(proto) {
		proto = config.POP
	}
	c, err := t.dialProxy(ctx, proto, "")
	if err != nil {
		return
	}
	defer c.Close()
	defer context.AfterFunc(ctx, func() { c.Close() })() // the phase is over: hang up
	c.SetDeadline(time.Now().Add(time.Duration(1+r.IntN(10)) * time.Second))
	if r.IntN(3) == 0 {
		c.SetReadBuffer(4096) // a download can fill it: the proxy must wait
	}
	pass := t.Password
	if r.IntN(5) == 0 {
		pass = "wrong-" + t.Password
	}
	var steps []string
	switch proto {
	case config.IMAP:
		steps = imapSteps(r, a.Address, pass)
	case config.POP:
		steps = popSteps(r, a.Address, pass)
	default:
		steps = smtpSteps(r, a.Address, pass)
	}

	// How it reads: 0 everything, 1 slowly, 2 never.
	reading := r.IntN(3)
	readerDone := make(chan struct{})
	if reading == 2 {
		close(readerDone)
	} else {
		buf := make([]byte, 1+r.IntN(512))
		go func() {
			defer close(readerDone)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
				if reading == 1 { // r is the writer's: the package's source here
					time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
				}
			}
		}()
	}
	for _, step := range steps {
		if ctx.Err() != nil || r.IntN(40) == 0 { // hang up mid-script
			break
		}
		if r.IntN(10) == 0 { // a command in two writes
			k := r.IntN(len(step) + 1)
			c.Write([]byte(step[:k]))
			time.Sleep(time.Duration(r.IntN(30)) * time.Millisecond)
			step = step[k:]
		}
		if _, err := c.Write([]byte(step)); err != nil {
			break
		}
		if r.IntN(3) == 0 {
			time.Sleep(time.Duration(r.IntN(100)) * time.Millisecond)
		}
	}
	switch r.IntN(4) {
	case 0:
		c.SetLinger(0) // the close resets
	case 1:
		c.CloseWrite() // done sending; wait for the answers
		if reading == 2 {
			io.Copy(io.Discard, c)
		}
		<-readerDone
	case 2:
		sleep(ctx, time.Duration(r.IntN(500))*time.Millisecond)
	}
	c.Close()
	<-readerDone
}

// junkLine is up to 300 bytes of letters with some control bytes, quotes,
// braces and line ends among them; one time in six up to 70,000 (past
// the proxy's line limit).
func junkLine(r *rand.Rand) string {
	n := r.IntN(300)
	if r.IntN(6) == 0 {
		n = r.IntN(70000)
	}
	var b strings.Builder
	for range n {
		switch r.IntN(10) {
		case 0:
			b.WriteByte(byte(r.IntN(256)))
		case 1:
			b.WriteByte("\r\n\x00{}()\"\\*+ "[r.IntN(12)])
		default:
			b.WriteByte(byte('a' + r.IntN(26)))
		}
	}
	return b.String()
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// pick returns n steps, each from cmds or, one time in eight, junk.
func pick(r *rand.Rand, n int, cmds []string) []string {
	var out []string
	for range n {
		if r.IntN(8) == 0 {
			out = append(out, junkLine(r))
		} else {
			out = append(out, cmds[r.IntN(len(cmds))])
		}
	}
	return out
}

func imapSteps(r *rand.Rand, user, pass string) []string {
	var login []string
	switch r.IntN(8) {
	case 0:
		login = []string{"a LOGIN " + user + " " + pass + "\r\n"}
	case 1: // synchronising literals
		login = []string{fmt.Sprintf("a LOGIN {%d}\r\n", len(user)), fmt.Sprintf("%s {%d}\r\n", user, len(pass)), pass + "\r\n"}
	case 2: // a non-synchronising literal
		login = []string{fmt.Sprintf("a LOGIN {%d+}\r\n%s \"%s\"\r\n", len(user), user, pass)}
	case 3:
		login = []string{"a AUTHENTICATE PLAIN\r\n", b64("\x00"+user+"\x00"+pass) + "\r\n"}
	case 4:
		login = []string{"a AUTHENTICATE PLAIN " + b64("\x00"+user+"\x00"+pass) + "\r\n"}
	case 5: // cancelled
		login = []string{"a AUTHENTICATE LOGIN\r\n", b64(user) + "\r\n", "*\r\n"}
	case 6: // a literal far past any limit
		login = []string{fmt.Sprintf("a LOGIN {%d}\r\n", r.IntN(1<<30)), junkLine(r)}
	default:
		login = []string{"a CAPABILITY\r\na NOOP\r\na ID (\"name\" \"x\")\r\n", "a LOGIN " + user + " " + pass + "\r\n"}
	}
	return append(login, pick(r, r.IntN(8), []string{
		"b SELECT INBOX\r\n", "c UID SEARCH ALL\r\n", "d FETCH 1:* (FLAGS)\r\n", "e UID FETCH 1:* (BODY.PEEK[])\r\n",
		"f IDLE\r\n", "DONE\r\n", "g NOOP\r\n", "h STATUS INBOX (MESSAGES)\r\n", "i APPEND INBOX {10}\r\n",
		"0123456789\r\n", "j LIST \"\" *\r\n", "k CLOSE\r\n", "l LOGOUT\r\n", "m STARTTLS\r\n",
	})...)
}

func popSteps(r *rand.Rand, user, pass string) []string {
	var login []string
	switch r.IntN(7) {
	case 0:
		login = []string{"USER " + user + "\r\n", "PASS " + pass + "\r\n"}
	case 1:
		login = []string{"USER " + user + "\r\nPASS " + pass + "\r\n"}
	case 2:
		login = []string{"AUTH PLAIN " + b64("\x00"+user+"\x00"+pass) + "\r\n"}
	case 3:
		login = []string{"AUTH PLAIN\r\n", b64("\x00"+user+"\x00"+pass) + "\r\n"}
	case 4:
		login = []string{"AUTH LOGIN\r\n", b64(user) + "\r\n", b64(pass) + "\r\n"}
	case 5:
		login = []string{"CAPA\r\nSTLS\r\n", junkLine(r)}
	default: // out of order
		login = []string{"PASS x\r\nUSER\r\nAPOP a b\r\n", "USER " + user + "\r\n", junkLine(r)}
	}
	return append(login, pick(r, r.IntN(8), []string{
		"STAT\r\n", "LIST\r\n", "UIDL\r\n", "RETR 1\r\n", "TOP 1 0\r\n", "NOOP\r\n", "RSET\r\n",
		"RETR 99999\r\n", "QUIT\r\n", "UIDL 1\r\n", "LIST 1\r\n", "DELE 1\r\n",
	})...)
}

func smtpSteps(r *rand.Rand, user, pass string) []string {
	var steps []string
	if r.IntN(6) != 0 { // else AUTH before a greeting
		steps = append(steps, []string{"EHLO client\r\n", "HELO client\r\n"}[r.IntN(2)])
	}
	switch r.IntN(6) {
	case 0:
		steps = append(steps, "AUTH PLAIN "+b64("\x00"+user+"\x00"+pass)+"\r\n")
	case 1:
		steps = append(steps, "AUTH LOGIN\r\n", b64(user)+"\r\n", b64(pass)+"\r\n")
	case 2:
		steps = append(steps, "AUTH LOGIN "+b64(user)+"\r\n", b64(pass)+"\r\n")
	case 3: // cancelled
		steps = append(steps, "AUTH PLAIN\r\n", "*\r\n")
	case 4:
		steps = append(steps, "STARTTLS\r\n", junkLine(r))
	default: // mail before a login
		steps = append(steps, "MAIL FROM:<a@b>\r\n", junkLine(r))
	}
	body := "Subject: x\r\n\r\n" + strings.Repeat("line\r\n.dot\r\n", r.IntN(2000)) + "\r\n.\r\n"
	return append(steps, pick(r, r.IntN(8), []string{
		"MAIL FROM:<" + user + ">\r\n", "RCPT TO:<x@example.com>\r\n", "DATA\r\n", body, "RSET\r\n", "NOOP\r\n",
		"QUIT\r\n", "MAIL FROM:<" + user + ">\r\nRCPT TO:<y@example.com>\r\nDATA\r\n", "BDAT 5 LAST\r\nhello",
		"VRFY x\r\n", "EHLO again\r\n",
	})...)
}
