package engine

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// popClient is a minimal RFC 1939 client for the tests: commands, status
// lines, and multi-line responses with dot-unstuffing.
type popClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialPOP(t *testing.T, addr string) *popClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { c.Close() })
	p := &popClient{t: t, c: c, br: bufio.NewReader(c)}
	if g := p.status(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting %q", g)
	}
	return p
}

func (p *popClient) status() string {
	p.t.Helper()
	l, err := p.br.ReadString('\n')
	if err != nil {
		p.t.Fatalf("read: %v", err)
	}
	return strings.TrimRight(l, "\r\n")
}

// send sends a command without reading the answer.
func (p *popClient) send(format string, args ...any) {
	fmt.Fprintf(p.c, format+"\r\n", args...)
}

// cmd sends a command and returns its status line.
func (p *popClient) cmd(format string, args ...any) string {
	p.t.Helper()
	fmt.Fprintf(p.c, format+"\r\n", args...)
	return p.status()
}

// ok is cmd that requires +OK.
func (p *popClient) ok(format string, args ...any) string {
	p.t.Helper()
	s := p.cmd(format, args...)
	if !strings.HasPrefix(s, "+OK") {
		p.t.Fatalf("%s: %q", fmt.Sprintf(format, args...), s)
	}
	return s
}

// multi reads a multi-line body after a +OK, undoing dot-stuffing.
func (p *popClient) multi() []byte {
	p.t.Helper()
	var b bytes.Buffer
	for {
		l, err := p.br.ReadBytes('\n')
		if err != nil {
			p.t.Fatalf("read body: %v", err)
		}
		if string(l) == ".\r\n" {
			return b.Bytes()
		}
		if len(l) > 0 && l[0] == '.' {
			l = l[1:]
		}
		b.Write(l)
	}
}
