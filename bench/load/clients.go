package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/smtp"
	"strconv"
	"strings"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

// Sample is one completed poll cycle.
type Sample struct {
	At    time.Duration // start, from the phase's start
	Login time.Duration // connect until the login is accepted
	Cycle time.Duration // connect until the connection is closed
	Bytes int64         // message bytes received (or sent, for SMTP)
	// Transfer is the time from asking for the message (RETR, UID FETCH)
	// to its last byte.
	Transfer time.Duration
}

// wire is a client connection with line reading; it never holds more
// than one read buffer, so thousands can be open at once.
type wire struct {
	c  net.Conn
	br *bufio.Reader
}

func (t *Target) open(ctx context.Context, mode Mode, proto config.Protocol) (*wire, error) {
	c, err := t.dial(ctx, mode, proto)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return &wire{c: c, br: bufio.NewReaderSize(c, 4096)}, nil
}

func (w *wire) send(s string) error {
	_, err := io.WriteString(w.c, s)
	return err
}

// line reads one line without its CRLF.
func (w *wire) line() (string, error) {
	l, err := w.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", errors.New("line too long")
	}
	if err != nil {
		return "", err
	}
	return string(bytes.TrimRight(l, "\r\n")), nil
}

// xoauth2 is the base64 SASL XOAUTH2 initial response.
func xoauth2(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

// ---- POP3 ----

func (w *wire) popOK(cmd string) (string, error) {
	if cmd != "" {
		if err := w.send(cmd + "\r\n"); err != nil {
			return "", err
		}
	}
	l, err := w.line()
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(l, "+OK") {
		return "", fmt.Errorf("POP3 %s: %s", firstWord(cmd), l)
	}
	return l, nil
}

// popMulti reads a multi-line answer and returns its size in bytes.
func (w *wire) popMulti() (int64, error) {
	var n int64
	for {
		l, err := w.br.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return n, err
		}
		if bytes.Equal(l, []byte(".\r\n")) {
			return n, nil
		}
		n += int64(len(l))
	}
}

// popLogin reads the greeting and logs in: USER/PASS to the proxy, AUTH
// XOAUTH2 with an initial response to the provider.
func (t *Target) popLogin(ctx context.Context, w *wire, mode Mode, a Account) error {
	if _, err := w.popOK(""); err != nil {
		return err
	}
	if mode == Proxy {
		if _, err := w.popOK("USER " + a.Address); err != nil {
			return err
		}
		_, err := w.popOK("PASS " + t.Password)
		return err
	}
	tok, err := t.Token(ctx, a)
	if err != nil {
		return err
	}
	_, err = w.popOK("AUTH XOAUTH2 " + xoauth2(a.Address, tok))
	return err
}

// popStat returns the number of messages (STAT).
func (w *wire) popStat() (int, error) {
	stat, err := w.popOK("STAT")
	if err != nil {
		return 0, err
	}
	count := 0
	if f := strings.Fields(stat); len(f) >= 2 {
		count, _ = strconv.Atoi(f[1])
	}
	if count == 0 {
		return 0, errors.New("POP3: empty mailbox")
	}
	return count, nil
}

// popCycle: connect, log in, STAT, UIDL, RETR one message, QUIT. bulk
// retrieves the last (large) message instead of the first.
func (t *Target) popCycle(ctx context.Context, mode Mode, a Account, bulk bool) (Sample, error) {
	var s Sample
	start := time.Now()
	w, err := t.open(ctx, mode, config.POP)
	if err != nil {
		return s, err
	}
	defer w.c.Close()
	if err := t.popLogin(ctx, w, mode, a); err != nil {
		return s, err
	}
	s.Login = time.Since(start)
	count, err := w.popStat()
	if err != nil {
		return s, err
	}
	if _, err := w.popOK("UIDL"); err != nil {
		return s, err
	}
	if _, err := w.popMulti(); err != nil {
		return s, err
	}
	msg := 1
	if bulk {
		msg = count
	}
	asked := time.Now()
	if _, err := w.popOK("RETR " + strconv.Itoa(msg)); err != nil {
		return s, err
	}
	if s.Bytes, err = w.popMulti(); err != nil {
		return s, err
	}
	s.Transfer = time.Since(asked)
	if _, err := w.popOK("QUIT"); err != nil {
		return s, err
	}
	s.Cycle = time.Since(start)
	return s, nil
}

// ---- IMAP ----

// imapDo sends a tagged command and reads until its tagged answer,
// reading literals; it returns the untagged lines (literals left out)
// and the literal bytes seen.
func (w *wire) imapDo(tag, cmd string) ([]string, int64, error) {
	if err := w.send(tag + " " + cmd + "\r\n"); err != nil {
		return nil, 0, err
	}
	var untagged []string
	var lit int64
	for {
		l, err := w.line()
		if err != nil {
			return nil, lit, err
		}
		// A line ending in {n} is followed by n bytes and its continuation.
		for strings.HasSuffix(l, "}") {
			open := strings.LastIndexByte(l, '{')
			n, err := strconv.ParseInt(strings.TrimSuffix(l[open+1:len(l)-1], "+"), 10, 64)
			if open < 0 || err != nil {
				break
			}
			if _, err := io.CopyN(io.Discard, w.br, n); err != nil {
				return nil, lit, err
			}
			lit += n
			rest, err := w.line()
			if err != nil {
				return nil, lit, err
			}
			l = l[:open] + rest
		}
		switch {
		case strings.HasPrefix(l, tag+" OK"):
			return untagged, lit, nil
		case strings.HasPrefix(l, tag+" "):
			return nil, lit, fmt.Errorf("IMAP %s: %s", firstWord(cmd), l)
		case strings.HasPrefix(l, "+"):
			return nil, lit, fmt.Errorf("IMAP %s: unexpected continuation", firstWord(cmd))
		}
		untagged = append(untagged, l)
	}
}

// imapCycle: connect, log in, SELECT INBOX, UID SEARCH ALL, UID FETCH one
// message, LOGOUT. bulk fetches the last (large) message.
func (t *Target) imapCycle(ctx context.Context, mode Mode, a Account, bulk bool) (Sample, error) {
	var s Sample
	start := time.Now()
	w, err := t.imapLogin(ctx, mode, a)
	if err != nil {
		return s, err
	}
	defer w.c.Close()
	s.Login = time.Since(start)
	if _, _, err := w.imapDo("s", "SELECT INBOX"); err != nil {
		return s, err
	}
	lines, _, err := w.imapDo("u", "UID SEARCH ALL")
	if err != nil {
		return s, err
	}
	var uids []string
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, "* SEARCH"); ok {
			uids = strings.Fields(rest)
		}
	}
	if len(uids) == 0 {
		return s, errors.New("IMAP: empty mailbox")
	}
	uid := uids[0]
	if bulk {
		uid = uids[len(uids)-1]
	}
	asked := time.Now()
	if _, s.Bytes, err = w.imapDo("f", "UID FETCH "+uid+" BODY.PEEK[]"); err != nil {
		return s, err
	}
	s.Transfer = time.Since(asked)
	if _, _, err := w.imapDo("z", "LOGOUT"); err != nil {
		return s, err
	}
	s.Cycle = time.Since(start)
	return s, nil
}

// imapLogin connects and logs in: LOGIN to the proxy, AUTHENTICATE
// XOAUTH2 with an initial response (SASL-IR) to the provider.
func (t *Target) imapLogin(ctx context.Context, mode Mode, a Account) (*wire, error) {
	w, err := t.open(ctx, mode, config.IMAP)
	if err != nil {
		return nil, err
	}
	if g, err := w.line(); err != nil || !strings.HasPrefix(g, "* OK") {
		w.c.Close()
		return nil, fmt.Errorf("IMAP greeting %q: %v", g, err)
	}
	if mode == Proxy {
		_, _, err = w.imapDo("l", "LOGIN "+a.Address+" "+strconv.Quote(t.Password))
	} else {
		var tok string
		if tok, err = t.Token(ctx, a); err == nil {
			_, _, err = w.imapDo("l", "AUTHENTICATE XOAUTH2 "+xoauth2(a.Address, tok))
		}
	}
	if err != nil {
		w.c.Close()
		return nil, err
	}
	return w, nil
}

// ---- SMTP ----

// xoauth2Auth is net/smtp's Auth for SASL XOAUTH2.
type xoauth2Auth struct{ user, token string }

func (x xoauth2Auth) Start(*smtp.ServerInfo) (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}

func (x xoauth2Auth) Next(from []byte, more bool) ([]byte, error) {
	if more {
		return []byte{}, nil // an error challenge: answer empty to get the final reply
	}
	return nil, nil
}

// smtpMessage is the one message each SMTP cycle sends.
var smtpMessage = []byte("From: app@bench.example\r\nTo: someone@bench.example\r\nSubject: bench\r\n\r\n" +
	strings.Repeat("A line of a short business message.\r\n", 20))

// smtpCycle: connect, EHLO, AUTH, one message, QUIT (net/smtp).
func (t *Target) smtpCycle(ctx context.Context, mode Mode, a Account) (Sample, error) {
	var s Sample
	start := time.Now()
	w, err := t.open(ctx, mode, config.SMTP)
	if err != nil {
		return s, err
	}
	defer w.c.Close()
	host := t.tls.ServerName
	var auth smtp.Auth
	if mode == Proxy {
		// net/smtp sends PLAIN in the clear only to localhost; the proxy is.
		host = "localhost"
		auth = smtp.PlainAuth("", a.Address, t.Password, host)
	} else {
		tok, err := t.Token(ctx, a)
		if err != nil {
			return s, err
		}
		auth = xoauth2Auth{a.Address, tok}
	}
	c, err := smtp.NewClient(w.c, host)
	if err != nil {
		return s, err
	}
	if err := c.Hello("bench.example"); err != nil {
		return s, err
	}
	if err := c.Auth(auth); err != nil {
		return s, err
	}
	s.Login = time.Since(start)
	if err := c.Mail(a.Address); err != nil {
		return s, err
	}
	if err := c.Rcpt("someone@bench.example"); err != nil {
		return s, err
	}
	d, err := c.Data()
	if err != nil {
		return s, err
	}
	if _, err := d.Write(smtpMessage); err != nil {
		return s, err
	}
	if err := d.Close(); err != nil {
		return s, err
	}
	s.Bytes = int64(len(smtpMessage))
	if err := c.Quit(); err != nil {
		return s, err
	}
	s.Cycle = time.Since(start)
	return s, nil
}

func firstWord(s string) string {
	w, _, _ := strings.Cut(s, " ")
	return w
}
