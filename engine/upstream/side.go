package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/telemetry"
)

// Side is the upstream side of one server section: where its logins get
// an authenticated session.
type Side struct {
	Srv    *config.Server
	Dialer *Dialer
	Pool   *Pool   // warm connections (nil or empty: every login dials)
	Gates  *Gates  // per-mailbox caps, shared by every section
	Linger *Linger // kept sessions, shared; nil: reuse is off for this section
	// Learn sees every freshly dialled connection (its greeting and
	// capabilities, for what clients are shown).
	Learn func(*Conn)
	// POP3InitialResponse sends AUTH XOAUTH2 with the response on the
	// same line.
	POP3InitialResponse bool
}

// Request is the upstream half of one login.
type Request struct {
	Tag   string // the client's IMAP tag, used upstream so answers need no rewriting
	User  string
	Token string
	// TokenExpiry is when Token expires (zero: not known).
	TokenExpiry time.Time
	// ReuseKey names the kept sessions this login may take, and under
	// which its own session may be kept after LOGOUT or QUIT ("": neither).
	ReuseKey string
}

// Session is an authenticated upstream session, holding one of its
// mailbox's slots until Conn is closed.
type Session struct {
	Conn       *Conn
	Reply      []byte // the answer to relay to the client
	LoginReply []byte // the server's own login answer, to answer later logins that reuse the session
	Mailbox    string // MailboxKey of the account on this server
	ReuseKey   string // "" when the session may not be kept after LOGOUT or QUIT
	Reused     bool   // a kept session was taken
	// Expiry is when the token the session logged in with expires (zero:
	// not known): a kept session is not reused past it.
	Expiry time.Time
}

// Failure is a login the upstream side could not serve for a reason
// other than the token: the server is down, the mailbox's slots are all
// taken. It is temporary, and its text is safe to show the client.
type Failure struct{ Text string }

func (f *Failure) Error() string { return f.Text }

// Open returns an authenticated session for req: a kept one of the same
// account and password if session reuse has one, else a warm or fresh
// connection authenticated with req.Token once the mailbox has a free
// slot. A warm connection the server has dropped meanwhile is replaced by
// a fresh dial once. A token the server refuses is a *RefusedError; a
// mailbox the server throttles a *Throttled (and its logins are answered
// so until the time the server asked for has passed); any other failure
// a *Failure.
func (s *Side) Open(ctx context.Context, req Request) (*Session, error) {
	sess := &Session{Mailbox: MailboxKey(s.Srv, req.User), ReuseKey: req.ReuseKey, Expiry: req.TokenExpiry}
	if t := s.Gates.HeldOff(sess.Mailbox); t != nil {
		return nil, t
	}
	if lg := s.Linger.Take(req.ReuseKey); lg != nil {
		reply := lg.reply // SMTP's 235 line, as the server said it
		if s.Srv.Protocol == config.IMAP {
			reply = Retag(lg.reply, req.Tag)
		}
		if reply != nil {
			sess.Conn, sess.Reply, sess.LoginReply, sess.Reused, sess.Expiry = lg.u, reply, lg.reply, true, lg.expiry
			return sess, nil
		}
		lg.u.Close()
	}
	queued := time.Now()
	release, err := s.Gates.Acquire(ctx, sess.Mailbox)
	telemetry.MailboxWait.UpdateDuration(queued)
	if err != nil {
		if f := stopped(ctx); f != nil {
			return nil, f
		}
		return nil, &Failure{fmt.Sprintf("too many sessions of mailbox %s are open upstream (limit %d); waited for one to end until the login timed out",
			req.User, s.Gates.Limit())}
	}
	held := true
	defer func() {
		if held {
			release()
		}
	}()
	freshDial := false
	for {
		var u *Conn
		pooled := false
		if !freshDial {
			u = s.Pool.Take()
			pooled = u != nil
		}
		if u == nil {
			if u, err = s.Dialer.Dial(ctx); err != nil {
				if f := stopped(ctx); f != nil {
					return nil, f
				}
				return nil, &Failure{"upstream server unavailable: " + err.Error()}
			}
			s.Learn(u)
		}
		if dl, ok := ctx.Deadline(); ok {
			u.TLS.SetDeadline(dl)
		}
		// A login whose client has gone (or the proxy stopping) ends its
		// exchange at once rather than waiting for the server's answer,
		// and gives its mailbox slot back.
		unhook := context.AfterFunc(ctx, func() { u.TLS.SetDeadline(time.Now()) })
		reply, err := u.Authenticate(s.Srv, req.Tag, req.User, req.Token, s.POP3InitialResponse)
		if !unhook() && err == nil {
			err = ctx.Err() // cancelled just as the answer came: the client is gone
		}
		if err == nil {
			u.TLS.SetDeadline(time.Time{})
			held = false
			u.release = release
			sess.Conn, sess.Reply, sess.LoginReply = u, reply, reply
			if !CanReuse(s.Srv, u, reply) {
				sess.ReuseKey = ""
			}
			return sess, nil
		}
		u.Close()
		var rej *RefusedError
		if errors.As(err, &rej) {
			return nil, err
		}
		var throttled *Throttled
		if errors.As(err, &throttled) {
			s.Gates.HoldOff(sess.Mailbox, throttled)
			return nil, err
		}
		// The server dropped the warm connection: once more, fresh. Not
		// after a timeout: the connection's deadline is the login's, so
		// its time is up even if ctx's timer has not fired yet, and a
		// dial now would only fail at once and be reported as the cause.
		if pooled && ctx.Err() == nil && !IsTimeout(err) {
			freshDial = true
			continue
		}
		if f := stopped(ctx); f != nil {
			return nil, f
		}
		return nil, &Failure{"upstream server failed during authentication: " + ShortNetErr(err)}
	}
}

// stopped is the failure of a login stopped from outside (its client
// gone, or the proxy stopping: ctx cancelled, not timed out), whichever
// step it was at; nil if ctx was not cancelled. The step's own error
// would blame the server or the mailbox's limit: an exchange cut short
// reads as a timeout, since it is cut short by a deadline.
func stopped(ctx context.Context) *Failure {
	if !errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return &Failure{"login stopped: " + context.Cause(ctx).Error()}
}

// IsTimeout says whether err is a deadline passing (a read or write
// deadline, or a dial's).
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
