package mock

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	psasl "github.com/emailproxy/emailproxy/protocol/sasl"
)

// popIdleTimeout ends an authenticated session silent this long (RFC
// 1939's minimum).
const popIdleTimeout = 10 * time.Minute

// servePOP3 runs one POP3 session (RFC 1939, CAPA, AUTH XOAUTH2); with
// stls the connection starts in plaintext and requires STLS (RFC 2595)
// before AUTH.
func (up *Upstream) servePOP3(c net.Conn, stls bool, tlsCfg *tls.Config) {
	defer func() { c.Close() }()
	br := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	say := func(s string) { w.WriteString(s + "\r\n") }
	say("+OK POP3 mock ready <1896.697170952@mock.example>")
	w.Flush()
	var user string
	var msgs []Message
	deleted := map[int]bool{}
	if t := up.opts.PreAuthTimeout; t > 0 {
		c.SetReadDeadline(time.Now().Add(t))
	}
	readLine := func() (string, bool) {
		w.Flush()
		if user != "" {
			c.SetReadDeadline(time.Now().Add(popIdleTimeout))
		}
		l, err := br.ReadSlice('\n') // at most the reader's 4 KiB: longer lines end the session
		if ne, ok := err.(net.Error); ok && ne.Timeout() && user == "" {
			say("-ERR [SYS/TEMP] Timed out waiting for authentication") // as a real server does
			w.Flush()
		}
		if err != nil {
			return "", false
		}
		return strings.TrimRight(string(l), "\r\n"), true
	}
	for {
		line, ok := readLine()
		if !ok {
			return
		}
		cmd, arg, _ := strings.Cut(line, " ")
		cmd = strings.ToUpper(cmd)
		if user == "" {
			switch cmd {
			case "CAPA":
				say("+OK Capability list follows")
				for _, l := range []string{"TOP", "UIDL", "SASL XOAUTH2", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"} {
					say(l)
				}
				if stls {
					say("STLS")
				}
				say(".")
			case "STLS":
				if !stls {
					say("-ERR already using TLS")
					continue
				}
				say("+OK Begin TLS negotiation")
				w.Flush()
				tc := tls.Server(c, tlsCfg)
				if err := tc.Handshake(); err != nil {
					return
				}
				c, stls = tc, false
				br.Reset(c)
				w.Reset(c)
			case "AUTH":
				if stls {
					say("-ERR Use STLS first")
					continue
				}
				mech, ir, _ := strings.Cut(arg, " ")
				if !strings.EqualFold(mech, "XOAUTH2") {
					say("-ERR unsupported mechanism")
					continue
				}
				if ir != "" {
					up.mu.Lock()
					up.popInitialResponses++
					up.mu.Unlock()
				}
				if ir == "" {
					say("+ ")
					if ir, ok = readLine(); !ok {
						return
					}
				}
				raw, err := psasl.DecodeBase64([]byte(ir))
				var u string
				if err == nil {
					u, err = up.checkXOAUTH2(raw)
				}
				if errors.Is(err, errResetLogin) {
					resetConn(c)
					return
				}
				if errors.Is(err, errStallLogin) {
					c.SetReadDeadline(time.Time{})
					io.Copy(io.Discard, c) // until the proxy gives up on it
					return
				}
				if err != nil {
					say("+ " + base64.StdEncoding.EncodeToString(errorChallenge()))
					if _, ok = readLine(); !ok {
						return
					}
					say("-ERR [AUTH] Authentication failure")
					continue
				}
				c.SetReadDeadline(time.Time{})
				endSession, ok := up.openSession("pop3", u)
				if !ok {
					say("-ERR [IN-USE] Too many sessions of this mailbox are open.")
					continue
				}
				defer endSession()
				user = u
				up.mu.Lock()
				msgs = append([]Message(nil), up.mailboxes[u]...)
				up.mu.Unlock()
				say("+OK User successfully authenticated.")
			case "QUIT":
				say("+OK bye")
				w.Flush()
				return
			default:
				say("-ERR authenticate first")
			}
			continue
		}
		n, _ := strconv.Atoi(arg)
		valid := n >= 1 && n <= len(msgs) && !deleted[n-1]
		switch cmd {
		case "STAT":
			count, size := 0, 0
			for i, m := range msgs {
				if !deleted[i] {
					count++
					size += len(m.Body)
				}
			}
			say(fmt.Sprintf("+OK %d %d", count, size))
		case "LIST", "UIDL":
			if arg != "" {
				if !valid {
					say("-ERR no such message")
				} else if cmd == "LIST" {
					say(fmt.Sprintf("+OK %d %d", n, len(msgs[n-1].Body)))
				} else {
					say(fmt.Sprintf("+OK %d %s", n, msgs[n-1].UID))
				}
				continue
			}
			say("+OK")
			for i, m := range msgs {
				if deleted[i] {
					continue
				}
				if cmd == "LIST" {
					say(fmt.Sprintf("%d %d", i+1, len(m.Body)))
				} else {
					say(fmt.Sprintf("%d %s", i+1, m.UID))
				}
			}
			say(".")
		case "RETR":
			if !valid {
				say("-ERR no such message")
				continue
			}
			say(fmt.Sprintf("+OK %d octets", len(msgs[n-1].Body)))
			if m := msgs[n-1]; m.stuffed != nil {
				w.Write(m.stuffed)
			} else {
				w.Write(DotStuff(m.Body))
			}
			say(".")
		case "DELE":
			if !valid {
				say("-ERR no such message")
				continue
			}
			deleted[n-1] = true
			say("+OK deleted")
		case "NOOP":
			say("+OK")
		case "RSET":
			deleted = map[int]bool{}
			say("+OK")
		case "QUIT":
			up.mu.Lock()
			var keep []Message
			for i, m := range up.mailboxes[user] {
				if !deleted[i] {
					keep = append(keep, m)
				}
			}
			up.mailboxes[user] = keep
			up.mu.Unlock()
			say("+OK bye")
			w.Flush()
			time.Sleep(up.opts.QuitCloseDelay)
			return
		default:
			say("-ERR unknown command")
		}
	}
}

// DotStuff escapes a message for a POP3 multi-line response: a leading
// "." on a line is doubled, and the result ends with CRLF.
func DotStuff(body []byte) []byte {
	var b bytes.Buffer
	for len(body) > 0 {
		i := bytes.IndexByte(body, '\n')
		line := body
		if i >= 0 {
			line, body = body[:i+1], body[i+1:]
		} else {
			body = nil
		}
		if len(line) > 0 && line[0] == '.' {
			b.WriteByte('.')
		}
		b.Write(line)
	}
	if !bytes.HasSuffix(b.Bytes(), []byte("\r\n")) {
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// resetConn closes c with a TCP reset, as a server or middlebox failing
// mid-exchange would.
func resetConn(c net.Conn) {
	raw := c
	if tc, ok := c.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	if tc, ok := raw.(*trackedConn); ok {
		raw = tc.Conn
	}
	if tcp, ok := raw.(*net.TCPConn); ok {
		tcp.SetLinger(0)
	}
	c.Close()
}
