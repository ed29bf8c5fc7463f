package load

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

// Held is a set of connections kept open to measure what each costs.
type Held struct {
	mu    sync.Mutex
	conns []net.Conn
}

// Len is how many connections are held.
func (h *Held) Len() int { h.mu.Lock(); defer h.mu.Unlock(); return len(h.conns) }

// Close closes them all.
func (h *Held) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		c.Close()
	}
	h.conns = nil
}

// EndIdle ends the IDLE of the i-th session HoldIdling opened and waits
// for its tagged answer: a session that sat quiet still answers.
func (h *Held) EndIdle(i int) error {
	h.mu.Lock()
	if i >= len(h.conns) {
		h.mu.Unlock()
		return fmt.Errorf("no held session %d", i)
	}
	c := h.conns[i]
	h.mu.Unlock()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("DONE\r\n")); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("after DONE: %w", err)
		}
		if strings.HasPrefix(l, "i ") {
			if !strings.HasPrefix(l, "i OK") {
				return fmt.Errorf("after DONE: %q", strings.TrimSpace(l))
			}
			return nil
		}
	}
}

func (h *Held) add(c net.Conn) { h.mu.Lock(); h.conns = append(h.conns, c); h.mu.Unlock() }

// HoldPreLogin opens n IMAP connections to the proxy and leaves each
// greeted and silent, as a fleet of clients between polls would.
func (t *Target) HoldPreLogin(ctx context.Context, n int, prog *Progress) (*Held, error) {
	return t.hold(ctx, n, t.Accounts, prog, func(ctx context.Context, _ Account) (net.Conn, error) {
		w, err := t.open(ctx, Proxy, config.IMAP)
		if err != nil {
			return nil, err
		}
		if _, err := w.line(); err != nil {
			w.c.Close()
			return nil, err
		}
		return w.c, nil
	})
}

// HoldIdling opens n IMAP sessions in mode, each logged in, with INBOX
// selected and in IDLE (RFC 2177): a push client's steady state.
func (t *Target) HoldIdling(ctx context.Context, mode Mode, n int, prog *Progress) (*Held, error) {
	return t.hold(ctx, n, t.Accounts, prog, func(ctx context.Context, a Account) (net.Conn, error) {
		w, err := t.imapLogin(ctx, mode, a)
		if err != nil {
			return nil, err
		}
		if _, _, err := w.imapDo("s", "SELECT INBOX"); err != nil {
			w.c.Close()
			return nil, err
		}
		if err := w.send("i IDLE\r\n"); err != nil {
			w.c.Close()
			return nil, err
		}
		if l, err := w.line(); err != nil || len(l) == 0 || l[0] != '+' {
			w.c.Close()
			return nil, fmt.Errorf("IDLE: %q %v", l, err)
		}
		return w.c, nil
	})
}

// hold opens n connections, 64 at a time, the i-th for accts[i%len].
func (t *Target) hold(ctx context.Context, n int, accts []Account, prog *Progress, open func(context.Context, Account) (net.Conn, error)) (*Held, error) {
	h := &Held{}
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i := 0; i < n && ctx.Err() == nil; i++ {
		a := accts[i%len(accts)]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := open(ctx, a)
			if err != nil {
				prog.Errors.Add(1)
				mu.Lock()
				if len(errs) < 5 {
					errs = append(errs, err)
				}
				mu.Unlock()
				return
			}
			c.SetDeadline(timeZero)
			h.add(c)
			prog.Cycles.Add(1)
		}()
	}
	wg.Wait()
	return h, errors.Join(errs...)
}

// HoldStalled opens n POP3 sessions in mode that each ask for their
// mailbox's last (large) message and then stop reading: slow readers in
// the middle of a download, the relay's worst case for memory. The
// clients' receive buffers are kept small so the stall reaches the proxy.
// (POP3, because the mock's IMAP mailboxes lock while one session
// writes a FETCH, which would stall the other sessions too.)
func (t *Target) HoldStalled(ctx context.Context, mode Mode, n, accounts int, prog *Progress) (*Held, error) {
	return t.hold(ctx, n, t.accounts(accounts), prog, func(ctx context.Context, a Account) (net.Conn, error) {
		w, err := t.open(ctx, mode, config.POP)
		if err != nil {
			return nil, err
		}
		if tc, ok := w.c.(*net.TCPConn); ok {
			tc.SetReadBuffer(16 << 10)
		}
		if err := t.popLogin(ctx, w, mode, a); err != nil {
			w.c.Close()
			return nil, err
		}
		count, err := w.popStat()
		if err != nil {
			w.c.Close()
			return nil, err
		}
		if err := w.send(fmt.Sprintf("RETR %d\r\n", count)); err != nil {
			w.c.Close()
			return nil, err
		}
		return w.c, nil // and never read the answer
	})
}
