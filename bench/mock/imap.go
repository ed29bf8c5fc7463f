package mock

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"

	psasl "github.com/emailproxy/emailproxy/protocol/sasl"
)

// imapSession is an unauthenticated session that accepts only XOAUTH2
// and then becomes the mailbox's in-memory session.
type imapSession struct {
	*imapmemserver.UserSession
	up         *Upstream
	endSession func()
	// selection is held by Idle for as long as it runs and by whatever
	// changes the selected mailbox. go-imap runs Idle on a goroutine of
	// its own and, when the line that ends an IDLE is not DONE (or the
	// read fails), goes on to the next command without waiting for that
	// goroutine; a SELECT, CLOSE or logout that follows at once would
	// then change the mailbox under it.
	selection sync.Mutex
}

func (s *imapSession) Close() error {
	s.selection.Lock()
	defer s.selection.Unlock()
	if s.endSession != nil {
		s.endSession()
	}
	return s.UserSession.Close()
}

func (s *imapSession) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	s.selection.Lock()
	defer s.selection.Unlock()
	return s.UserSession.Idle(w, stop)
}

func (s *imapSession) Select(name string, options *imap.SelectOptions) (*imap.SelectData, error) {
	s.selection.Lock()
	defer s.selection.Unlock()
	return s.UserSession.Select(name, options)
}

func (s *imapSession) Unselect() error {
	s.selection.Lock()
	defer s.selection.Unlock()
	return s.UserSession.Unselect()
}

var errLoginDisabled = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodePrivacyRequired,
	Text: "LOGIN is disabled, use AUTHENTICATE XOAUTH2"}

func (s *imapSession) Login(string, string) error { return errLoginDisabled }

func (s *imapSession) AuthenticateMechanisms() []string { return []string{"XOAUTH2"} }

func (s *imapSession) Authenticate(mech string) (sasl.Server, error) {
	if mech != "XOAUTH2" {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Text: "unsupported mechanism"}
	}
	return &xoauth2Server{up: s.up, onSuccess: func(u *imapmemserver.User, end func()) {
		s.UserSession = imapmemserver.NewUserSession(u)
		s.endSession = end
	}}, nil
}

// xoauth2Server checks the XOAUTH2 response like Exchange Online and Gmail:
// a bad token gets a base64 JSON error challenge, then a NO.
type xoauth2Server struct {
	up        *Upstream
	failed    bool
	onSuccess func(*imapmemserver.User, func())
}

func (x *xoauth2Server) Next(resp []byte) ([]byte, bool, error) {
	if x.failed {
		return nil, false, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAuthenticationFailed, Text: "AUTHENTICATE failed."}
	}
	if resp == nil {
		return []byte{}, false, nil // ask for the initial response
	}
	user, err := x.up.checkXOAUTH2(resp)
	if err != nil {
		x.failed = true
		return errorChallenge(), false, nil
	}
	end, ok := x.up.openSession("imap", user)
	if !ok {
		return nil, false, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeLimit,
			Text: "Too many sessions of this mailbox are open."}
	}
	x.up.mu.Lock()
	u := x.up.imapUsers[user]
	x.up.mu.Unlock()
	x.onSuccess(u, end)
	return nil, true, nil
}

func errorChallenge() []byte {
	b, _ := json.Marshal(map[string]string{"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"})
	return b
}

// maxRecorded bounds the XOAUTH2 responses kept for XOAUTH2Received.
const maxRecorded = 1000

// errResetLogin, errStallLogin: the faults ResetLogin and StallLogin apply.
var (
	errResetLogin = errors.New("connection reset (fault)")
	errStallLogin = errors.New("stalled (fault)")
)

// checkXOAUTH2 validates a decoded XOAUTH2 response and records it.
func (up *Upstream) checkXOAUTH2(raw []byte) (string, error) {
	user, token, err := psasl.ParseXOAUTH2(raw)
	up.mu.Lock()
	if len(up.xoauth2) >= maxRecorded { // the demo runs for days: keep the latest only
		up.xoauth2 = append(up.xoauth2[:0], up.xoauth2[len(up.xoauth2)-maxRecorded/2:]...)
	}
	up.xoauth2 = append(up.xoauth2, string(raw))
	_, known := up.imapUsers[user]
	reject := up.rejectTokens
	fault := up.userFaults[user]
	up.mu.Unlock()
	if err != nil {
		return "", err
	}
	switch fault {
	case ResetLogin:
		return "", errResetLogin
	case StallLogin:
		return "", errStallLogin
	}
	if reject || fault == RefuseToken || !known || !up.Authority.Valid(token) {
		return "", errors.New("invalid token or mailbox")
	}
	up.mu.Lock()
	up.logins++
	up.mu.Unlock()
	return user, nil
}

// openSession counts an authenticated session of user over proto against
// the per-mailbox cap; end, called once, gives the slot back.
func (up *Upstream) openSession(proto, user string) (end func(), ok bool) {
	key := proto + "\x00" + user
	up.mu.Lock()
	defer up.mu.Unlock()
	if up.opts.MailboxLimit > 0 && up.sessions[key] >= up.opts.MailboxLimit {
		up.limitRefusals++
		return nil, false
	}
	up.sessions[key]++
	up.peak[key] = max(up.peak[key], up.sessions[key])
	var once sync.Once
	return func() {
		once.Do(func() {
			up.mu.Lock()
			up.sessions[key]--
			up.mu.Unlock()
		})
	}, true
}

// Sessions reports the authenticated sessions of user over proto ("imap"
// or "pop3") open now and the most ever open at once.
func (up *Upstream) Sessions(proto, user string) (now, peak int) {
	up.mu.Lock()
	defer up.mu.Unlock()
	key := proto + "\x00" + user
	return up.sessions[key], up.peak[key]
}

// ResetPeaks starts every mailbox's peak again from its sessions open now
// (between phases of a bench run).
func (up *Upstream) ResetPeaks() {
	up.mu.Lock()
	defer up.mu.Unlock()
	for k := range up.peak {
		up.peak[k] = up.sessions[k]
	}
}

// LimitRefusals counts logins refused by the per-mailbox cap.
func (up *Upstream) LimitRefusals() int {
	up.mu.Lock()
	defer up.mu.Unlock()
	return up.limitRefusals
}

// literal adapts a byte slice to imap.LiteralReader for seeding.
type literal struct {
	*bytes.Reader
	size int64
}

func (l literal) Size() int64 { return l.size }

// newIMAPServer serves implicit TLS (starttls nil: the listener does TLS)
// or plaintext with STARTTLS required before authentication.
func newIMAPServer(up *Upstream, starttls *tls.Config) *imapserver.Server {
	return imapserver.New(&imapserver.Options{
		TLSConfig: starttls,
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return &imapSession{up: up}, nil, nil
		},
		Caps:   imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		Logger: quietLogger{},
	})
}

type quietLogger struct{}

func (quietLogger) Printf(string, ...interface{}) {}
