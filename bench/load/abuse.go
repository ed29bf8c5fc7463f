package load

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

// Hostile names a kind of hostile client (or a failing upstream) of the
// abuse scenario. Each runs against the proxy while honest clients poll.
type Hostile string

const (
	HangUpStorm   Hostile = "hangup-storm"        // log in and hang up (FIN or RST) at random moments
	NonReader     Hostile = "non-reader"          // pipeline CAPABILITY and never read
	LoginFlood    Hostile = "login-flood"         // LOGIN, then junk at full speed
	StalledReads  Hostile = "stalled-downloads"   // start a large download, then stop reading
	Slowloris     Hostile = "slowloris"           // many connections, one byte every 2 s
	PasswordSpray Hostile = "password-spray"      // wrong passwords for the honest accounts, from other addresses
	UpstreamReset Hostile = "upstream-reset"      // logins of mailboxes whose server resets mid-login
	TokenHang     Hostile = "token-endpoint-hang" // logins that need a token while the endpoint hangs
	RandomScripts Hostile = "random-scripts"      // IMAP, POP3 and SMTP sessions put together at random (see randomScript)
)

// HostileKinds lists the kinds in the order the abuse scenario runs them.
var HostileKinds = []Hostile{HangUpStorm, NonReader, LoginFlood, StalledReads, Slowloris, PasswordSpray, UpstreamReset, TokenHang, RandomScripts}

// ParseHostile reads a comma-separated list of hostile kinds.
func ParseHostile(list string) ([]Hostile, error) {
	var out []Hostile
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		found := false
		for _, k := range HostileKinds {
			if string(k) == name {
				out = append(out, k)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown hostile kind %q (have %v)", name, HostileKinds)
		}
	}
	return out, nil
}

// Attack is one hostile kind's clients.
type Attack struct {
	Kind Hostile
	// Accounts the hostile clients log in to: the honest clients' for a
	// spray, mailboxes of their own otherwise (with the large message for
	// stalled downloads, with the upstream fault for the last two kinds).
	Accounts []Account
	// Connections is how many slowloris connections to hold, or stalled
	// downloads to start (default 2000 and 16).
	Connections int
	// Sources are the local addresses a spray comes from (default
	// 127.0.0.2 to 127.0.0.9).
	Sources []string
}

// Run runs the attack until ctx ends, then closes its connections, except
// stalled downloads: those are returned open (the proxy must end them
// itself) and the caller closes them. It reports how many connections
// the attack opened.
func (t *Target) Attack(ctx context.Context, a Attack) (opened int64, held *Held) {
	var mu sync.Mutex
	count := func() { mu.Lock(); opened++; mu.Unlock() }
	var wg sync.WaitGroup
	workers := func(n int, f func(i int)) {
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					f(i)
				}
			}()
		}
	}
	held = &Held{}
	switch a.Kind {
	case HangUpStorm:
		workers(32, func(i int) { t.hangUp(ctx, a.Accounts[i%len(a.Accounts)], i); count() })
	case NonReader:
		workers(8, func(int) { t.pipelineWithoutReading(ctx); count() })
	case LoginFlood:
		workers(4, func(i int) { t.floodDuringLogin(ctx, a.Accounts[i%len(a.Accounts)]); count() })
	case StalledReads:
		n := a.Connections
		if n <= 0 {
			n = 16
		}
		for i := range n {
			if c := t.stall(ctx, a.Accounts[i%len(a.Accounts)]); c != nil {
				held.add(c)
				count()
			}
		}
		<-ctx.Done()
		return opened, held
	case Slowloris:
		n := a.Connections
		if n <= 0 {
			n = 2000
		}
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if t.slowloris(ctx, i) {
					count()
				}
			}()
		}
	case PasswordSpray:
		src := a.Sources
		if len(src) == 0 {
			for i := 2; i <= 9; i++ {
				src = append(src, "127.0.0."+strconv.Itoa(i))
			}
		}
		workers(len(src), func(i int) {
			t.wrongPassword(ctx, src[i], a.Accounts[i%len(a.Accounts)])
			count()
		})
	case UpstreamReset, TokenHang:
		workers(4, func(i int) {
			acct := a.Accounts[i%len(a.Accounts)]
			cctx, cancel := context.WithTimeout(ctx, 40*time.Second)
			w, err := t.open(cctx, Proxy, config.POP)
			if err == nil {
				t.popLogin(cctx, w, Proxy, acct) // fails: that is the point
				w.c.Close()
				count()
			}
			cancel()
			sleep(ctx, 20*time.Millisecond)
		})
	case RandomScripts:
		workers(16, func(i int) {
			r := rand.New(rand.NewPCG(rand.Uint64(), uint64(i)))
			t.randomScript(ctx, a.Accounts[i%len(a.Accounts)], r)
			count()
		})
	default:
		panic(fmt.Sprintf("load: unknown hostile kind %q", a.Kind))
	}
	wg.Wait()
	return opened, held
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (t *Target) dialProxy(ctx context.Context, proto config.Protocol, local string) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(t.ProxyHost, strconv.Itoa(t.servers[proto].localPort)))
	if err != nil {
		sleep(ctx, 10*time.Millisecond) // out of ports or refused: do not spin
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// hangUp sends a login and hangs up at a random moment, a third of the
// time with a reset.
func (t *Target) hangUp(ctx context.Context, a Account, i int) {
	proto, login := config.IMAP, "a LOGIN "+a.Address+" "+t.Password+"\r\n"
	if i%2 == 1 {
		proto, login = config.POP, "USER "+a.Address+"\r\nPASS "+t.Password+"\r\n"
	}
	c, err := t.dialProxy(ctx, proto, "")
	if err != nil {
		return
	}
	if rand.IntN(2) == 0 {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 512))
	}
	c.Write([]byte(login))
	time.Sleep(time.Duration(rand.IntN(5000)) * time.Microsecond)
	if rand.IntN(3) == 0 {
		c.SetLinger(0)
	}
	c.Close()
}

// pipelineWithoutReading sends CAPABILITY commands as fast as the proxy
// takes them and reads nothing, until the proxy gives up on it (or 5 s).
func (t *Target) pipelineWithoutReading(ctx context.Context) {
	c, err := t.dialProxy(ctx, config.IMAP, "")
	if err != nil {
		return
	}
	defer c.Close()
	c.SetReadBuffer(4096)
	chunk := bytes.Repeat([]byte("a CAPABILITY\r\n"), 4096)
	end := time.Now().Add(5 * time.Second)
	c.SetWriteDeadline(end)
	for ctx.Err() == nil && time.Now().Before(end) {
		if _, err := c.Write(chunk); err != nil {
			return
		}
	}
}

// floodDuringLogin sends a login and then up to 64 MiB of junk at full
// speed, until the proxy gives up on it.
func (t *Target) floodDuringLogin(ctx context.Context, a Account) {
	c, err := t.dialProxy(ctx, config.IMAP, "")
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte("a LOGIN " + a.Address + " " + t.Password + "\r\n"))
	junk := bytes.Repeat([]byte("x"), 64<<10)
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	for sent := 0; sent < 64<<20 && ctx.Err() == nil; sent += len(junk) {
		if _, err := c.Write(junk); err != nil {
			return
		}
	}
}

// stall logs in to a mailbox over POP3, asks for its large message and
// never reads it. It returns the connection, left open.
func (t *Target) stall(ctx context.Context, a Account) net.Conn {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w, err := t.open(cctx, Proxy, config.POP)
	if err != nil {
		return nil
	}
	if tc, ok := w.c.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096)
	}
	if err := t.popLogin(cctx, w, Proxy, a); err != nil {
		w.c.Close()
		return nil
	}
	count, err := w.popStat()
	if err != nil {
		w.c.Close()
		return nil
	}
	w.send(fmt.Sprintf("RETR %d\r\n", count)) // the large message is the last one
	w.c.SetDeadline(time.Time{})
	return w.c
}

// slowloris holds a connection that sends one byte of a command every 2 s
// and never finishes it; it reports whether it connected.
func (t *Target) slowloris(ctx context.Context, i int) bool {
	proto := config.IMAP
	if i%2 == 1 {
		proto = config.POP
	}
	c, err := t.dialProxy(ctx, proto, "")
	if err != nil {
		return false
	}
	defer c.Close()
	sleep(ctx, time.Duration(rand.IntN(2000))*time.Millisecond) // spread the bytes out
	for ctx.Err() == nil {
		if _, err := c.Write([]byte("x")); err != nil {
			return true // the proxy let go of it
		}
		sleep(ctx, 2*time.Second)
	}
	return true
}

// wrongPassword tries a wrong password for a from the local address src.
func (t *Target) wrongPassword(ctx context.Context, src string, a Account) {
	c, err := t.dialProxy(ctx, config.IMAP, src)
	if err != nil {
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	w := &wire{c: c, br: bufio.NewReaderSize(c, 4096)}
	if _, err := w.line(); err != nil {
		return
	}
	w.send(fmt.Sprintf("a LOGIN %s guess-%d\r\n", a.Address, rand.IntN(1<<30)))
	for {
		l, err := w.line()
		if err != nil || len(l) > 1 && l[:2] == "a " {
			return
		}
	}
}
