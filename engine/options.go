package engine

import (
	"crypto/x509"
	"runtime"
	"time"

	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/protocol/imap"
	"github.com/emailproxy/emailproxy/protocol/pop3"
	"github.com/emailproxy/emailproxy/protocol/smtp"
	"github.com/rs/zerolog"
)

// Options tune the engine; zero values take the defaults shown.
type Options struct {
	// FrontEnd serves the plaintext listeners: FrontEndGnet (an event
	// loop; the default) or FrontEndGoroutines (a goroutine per
	// connection, as local-TLS listeners always are; the default on
	// Windows, where gnet is for development only and sockets cannot be
	// handed from it to the relay). Both drive the same state machines
	// with the same bounds and timeouts.
	FrontEnd     string
	EventLoops   int           // gnet event loops (default: number of CPUs)
	LoginTimeout time.Duration // token + dial + TLS + XOAUTH2 for one login (default 30 s)
	DialTimeout  time.Duration // TCP + TLS + greeting upstream (default 10 s)
	RelayBuffer  int           // bytes per relay direction (default 16 KiB)
	TCPKeepAlive time.Duration // client and upstream keepalive period (default 60 s)
	IdleTimeout  time.Duration // a client silent this long before login is disconnected (default 10 min)
	// SendTimeout ends a session whose peer accepts no bytes for this long
	// (a client that stops reading mid-download; default 60 s, nginx's
	// send_timeout). It measures time without progress, not total time.
	SendTimeout time.Duration
	// Authenticated sessions with no traffic either way for this long are
	// closed; the defaults are the RFC minimums for a server's autologout:
	// IMAP 30 min (RFC 9051 §5.4), POP3 10 min (RFC 1939 §3), SMTP 5 min
	// per command (RFC 5321 §4.5.3.2).
	IMAPIdleTimeout, POP3IdleTimeout, SMTPIdleTimeout time.Duration
	// ParkAfter: an authenticated session with no traffic either way for
	// this long gives up its two goroutines (and their stacks) until data
	// comes; one goroutine watches every parked socket. Linux only
	// (elsewhere sessions keep their goroutines). Default 5 s; negative:
	// never.
	ParkAfter time.Duration
	// ActivityEvery: a session whose server keeps writing to its client
	// tells the account so at most this often, besides when it ends (the
	// account's last_activity; emailproxy.py: about every 10 s). Default
	// 10 s.
	ActivityEvery time.Duration
	// PendingLimit bounds what a client connection on the event loop may
	// hold before login: unsent output (above it, its input waits) and
	// input that must wait (above it, the client is disconnected: gnet
	// cannot stop reading one connection). Default 64 KiB.
	PendingLimit int
	// WarmConnections caps the pre-connected upstream connections kept per
	// server section; the pool grows towards it only while logins find it
	// empty (default 64; negative: none).
	WarmConnections int
	// WarmMaxAge recycles a warm connection this old, well before servers
	// drop unauthenticated connections (default 40 s; Exchange: 60 s).
	WarmMaxAge time.Duration
	// MailboxLimit caps one mailbox's concurrent authenticated sessions on
	// one upstream host; logins over it queue (default 16, Exchange
	// Online's limit; negative: no cap).
	MailboxLimit int
	// SharedMailboxes, if set, holds MailboxLimit across every proxy of
	// a fleet (cluster.Mailboxes, with --cache-store redis://).
	SharedMailboxes upstream.SharedGates
	// POP3InitialResponse sends the XOAUTH2 response on the AUTH line
	// (RFC 5034 allows it) instead of after the server's "+" (default:
	// two steps, as Exchange Online documents).
	POP3InitialResponse bool
	// IMAPSessionReuse keeps an IMAP upstream session this long after its
	// client's LOGOUT for the next login of the same account and password
	// (default 0: off).
	IMAPSessionReuse time.Duration
	// SMTPSessionReuse keeps an SMTP upstream session this long after its
	// client's QUIT for the next login of the same account and password
	// (default 0: off).
	SMTPSessionReuse time.Duration
	IMAPLimits       imap.Limits // default imap.DefaultLimits
	POPLimits        pop3.Limits // default pop3.DefaultLimits
	SMTPLimits       smtp.Limits // default smtp.DefaultLimits
	// RootCAs verifies upstream certificates; nil means the system roots
	// (which honour SSL_CERT_FILE).
	RootCAs *x509.CertPool
	Logger  zerolog.Logger
}

// The front ends (Options.FrontEnd).
const (
	FrontEndGnet       = "gnet"
	FrontEndGoroutines = "goroutines"
)

func (o *Options) defaults() {
	if o.FrontEnd == "" {
		o.FrontEnd = FrontEndGnet
		if runtime.GOOS == "windows" {
			o.FrontEnd = FrontEndGoroutines
		}
	}
	if o.EventLoops <= 0 {
		o.EventLoops = runtime.NumCPU()
	}
	if o.LoginTimeout <= 0 {
		o.LoginTimeout = 30 * time.Second
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.RelayBuffer <= 0 {
		o.RelayBuffer = 16 << 10
	}
	if o.TCPKeepAlive <= 0 {
		o.TCPKeepAlive = 60 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 10 * time.Minute
	}
	if o.SendTimeout <= 0 {
		o.SendTimeout = 60 * time.Second
	}
	if o.IMAPIdleTimeout <= 0 {
		o.IMAPIdleTimeout = 30 * time.Minute
	}
	if o.POP3IdleTimeout <= 0 {
		o.POP3IdleTimeout = 10 * time.Minute
	}
	if o.SMTPIdleTimeout <= 0 {
		o.SMTPIdleTimeout = 5 * time.Minute
	}
	if o.ParkAfter == 0 {
		o.ParkAfter = 5 * time.Second
	}
	if o.ActivityEvery <= 0 {
		o.ActivityEvery = 10 * time.Second
	}
	if o.PendingLimit <= 0 {
		o.PendingLimit = 64 << 10
	}
	if o.WarmConnections == 0 {
		o.WarmConnections = 64
	}
	if o.WarmMaxAge <= 0 {
		o.WarmMaxAge = 40 * time.Second
	}
	if o.MailboxLimit == 0 {
		o.MailboxLimit = 16
	}
	if o.IMAPLimits == (imap.Limits{}) {
		o.IMAPLimits = imap.DefaultLimits
	}
	if o.POPLimits == (pop3.Limits{}) {
		o.POPLimits = pop3.DefaultLimits
	}
	if o.SMTPLimits == (smtp.Limits{}) {
		o.SMTPLimits = smtp.DefaultLimits
	}
}
