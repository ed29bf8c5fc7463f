package engine

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/auth"
	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/internal/contain"
	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/sasl"
	"github.com/emailproxy/emailproxy/telemetry"
)

// Why a login's context is cancelled (context.Cause) before its time is up.
var (
	errClientGone = errors.New("the client hung up during the login")
	errStopping   = errors.New("the proxy is stopping")
)

// runLogin runs one login and logs its outcome.
func (s *Server) runLogin(ctx context.Context, l *listener, log connLog, act protocol.Action, client string) *loginResult {
	start := time.Now()
	res, lerr := s.loginContained(ctx, l, log, act, client)
	kind := loginResultKind(lerr)
	stopped := stoppedBy(ctx, kind)
	var ev *zerolog.Event
	switch {
	case lerr == nil:
		ev = log.Info()
	case stopped != nil:
		// Not the server's failure, nor the account's: an info line, and
		// the metrics do not count it as the server being unavailable.
		kind = telemetry.Other
		if stopped == errClientGone {
			kind = telemetry.ClientGone
		}
		ev = log.Info().Str("error", stopped.Error())
	case kind == telemetry.Throttled && heldOff(lerr):
		// The login that met the server's throttling was a warning; those
		// the proxy answers for it meanwhile are not news.
		ev = log.Info().Str("error", lerr.Message)
	default:
		ev = log.Warn().Str("error", lerr.Message)
	}
	if lerr != nil {
		res = &loginResult{user: act.Creds.Username, err: lerr}
	}
	took := time.Since(start)
	l.m.Login(kind, took)
	ev.Str("proto", string(l.srv.Protocol)).Str("account", act.Creds.Username).Bool("ok", lerr == nil).
		Bool("reused", res.reused).Dur("took_ms", took).Msg("login")
	return res
}

// loginContained is login, where a panic fails this login only.
func (s *Server) loginContained(ctx context.Context, l *listener, log connLog, act protocol.Action, client string) (res *loginResult, lerr *auth.LoginError) {
	defer func() {
		if v := recover(); v != nil {
			contain.Recovered(log.logger(), "login", v)
			res, lerr = nil, &auth.LoginError{Message: "internal error, logged by the proxy; try again later", Temporary: true}
		}
	}()
	if h := testHookLogin; h != nil {
		h(act.Creds.Username)
	}
	return s.login(ctx, l, act.Tag, act.Creds, client)
}

// Tests make the code serving one connection panic through these hooks
// (nil in the proxy), to prove that the panic ends that connection only.
var (
	testHookLogin      func(user string)
	testHookRelayChunk func(chunk []byte)
)

// loginResultKind names what became of a login, for the metrics.
func loginResultKind(lerr *auth.LoginError) string {
	var failure *upstream.Failure
	var throttled *upstream.Throttled
	switch {
	case lerr == nil:
		return telemetry.OK
	case errors.Is(lerr, auth.ErrUnknownAccount):
		return telemetry.UnknownAccount
	case errors.Is(lerr, auth.ErrLockedOut):
		return telemetry.LockedOut
	case errors.Is(lerr, auth.ErrBadPassword):
		return telemetry.WrongPassword
	case errors.Is(lerr, auth.ErrTokenRefused):
		return telemetry.UpstreamRefused
	case errors.As(lerr, &throttled):
		return telemetry.Throttled
	case errors.As(lerr, &failure):
		return telemetry.UpstreamUnavailable
	case lerr.Temporary:
		return telemetry.TokenUnavailable
	}
	return telemetry.Other
}

// heldOff says whether lerr is a login the proxy answered itself because
// the server had throttled the mailbox.
func heldOff(lerr *auth.LoginError) bool {
	var t *upstream.Throttled
	return errors.As(lerr, &t) && t.Said == ""
}

// stoppedBy says why a login that failed as kind was stopped from outside
// (errClientGone or errStopping), or nil if it was not: a verdict on the
// credentials or the token stands, since it was reached before anything
// stopped the login.
func stoppedBy(ctx context.Context, kind string) error {
	cause := context.Cause(ctx)
	if cause != errClientGone && cause != errStopping {
		return nil
	}
	switch kind {
	case telemetry.UpstreamUnavailable, telemetry.TokenUnavailable, telemetry.Other:
		return cause
	}
	return nil
}

// hostOf is the address part of a client's remote address.
func hostOf(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

// login checks the client's password and gets a token (auth), then an
// authenticated upstream session (the server section's upstream side),
// and tells auth what the server made of the token.
func (s *Server) login(ctx context.Context, l *listener, tag string, creds sasl.Credentials, client string) (*loginResult, *auth.LoginError) {
	grant, err := s.provider.Login(ctx, creds.Username, creds.Password, client)
	if err != nil {
		return nil, auth.AsLoginError(err)
	}
	req := upstream.Request{Tag: tag, User: creds.Username, Token: grant.Token, TokenExpiry: grant.Expiry}
	if l.up.Linger != nil {
		req.ReuseKey = l.up.Linger.Key(l.reuseScope, creds.Username, creds.Password)
	}
	sess, err := l.up.Open(ctx, req)
	var refused *upstream.RefusedError
	switch {
	case errors.As(err, &refused):
		return nil, grant.Refused(refused.Text)
	case err != nil:
		grant.Failed()
		return nil, auth.Unavailable(err)
	}
	if !sess.Reused {
		if lerr := grant.Accepted(); lerr != nil {
			sess.Conn.Close()
			return nil, lerr
		}
	}
	return &loginResult{l: l, proto: l.srv.Protocol, user: creds.Username, up: sess.Conn, reply: sess.Reply, loginReply: sess.LoginReply,
		mailbox: sess.Mailbox, reuseKey: sess.ReuseKey, reused: sess.Reused, expiry: sess.Expiry}, nil
}
