package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/emailproxy/emailproxy/telemetry"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// defaultTokenLifetime is assumed when a provider sends no expires_in.
const defaultTokenLifetime = time.Hour

// minUsable is the least validity a cached token must have to be handed
// to a login, even inside the refresh margin (less for tokens that live
// under two minutes: a quarter of their lifetime).
const minUsable = 30 * time.Second

// usableFor is the validity a token issued for lifetime must still have
// to be handed to a login.
func usableFor(lifetime time.Duration) time.Duration {
	return max(min(minUsable, lifetime/4), time.Second)
}

type fetchCall struct {
	done chan struct{}
	tok  *oauth2.Token
	err  *LoginError
}

// userAgent names the proxy in token requests, as the reference does.
type userAgent struct{ base http.RoundTripper }

func (u *userAgent) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("User-Agent", "emailproxy (Go)")
	return u.base.RoundTrip(r)
}

// canFetchLocked: a token can be had without a login's help.
func (p *Provider) canFetchLocked(a *account) bool {
	if a.refresh != "" {
		return true
	}
	if !a.unattended() {
		return false
	}
	if a.flow == "password" {
		return a.loginPassword != ""
	}
	if a.cfg.Get("client_secret") != "" || a.secret != "" || a.flow == "service_account" ||
		(a.cfg.Get("jwt_certificate_path") != "" && a.cfg.Get("jwt_key_path") != "") {
		return true
	}
	// A public client needs no secret, unless the secret is encrypted or
	// is the login password.
	return a.cached["client_secret_encrypted"] == "" && !p.config().Global.UseLoginPasswordAsClientCredentialsSecret
}

func (p *Provider) cachedTokenValidLocked(a *account) bool {
	exp, err := strconv.ParseInt(a.cached["access_token_expiry"], 10, 64)
	return err == nil && a.cached["access_token"] != "" && time.Until(time.Unix(exp, 0)) > p.opts.RefreshMargin
}

// startFetchLocked starts the one fetch of an account; a.mu is held.
func (p *Provider) startFetchLocked(a *account) *fetchCall {
	if a.inflight != nil {
		return a.inflight
	}
	call := &fetchCall{done: make(chan struct{})}
	a.inflight = call
	p.mu.Lock()
	closed := p.closed
	if !closed {
		p.wg.Add(1)
	}
	p.mu.Unlock()
	if closed {
		call.err = loginErr(true, nil, "the proxy is shutting down")
		a.inflight = nil
		close(call.done)
		return call
	}
	go func() {
		defer p.wg.Done()
		p.runFetch(a, call)
	}()
	return call
}

// fetch gets a new token: with the refresh token when there is one, else
// with the account's flow.
func (p *Provider) fetch(ctx context.Context, a *account) (*oauth2.Token, error) {
	a.mu.Lock()
	refresh, secret := a.refresh, a.cfg.Get("client_secret")
	if secret == "" {
		secret = a.secret
	}
	a.mu.Unlock()
	hc := context.WithValue(ctx, oauth2.HTTPClient, p.opts.HTTPClient)
	if refresh != "" {
		conf := &oauth2.Config{ClientID: a.cfg.Get("client_id"), ClientSecret: secret,
			Endpoint: oauth2.Endpoint{TokenURL: a.cfg.Get("token_url"), AuthStyle: oauth2.AuthStyleInParams}}
		tok, err := conf.TokenSource(hc, &oauth2.Token{RefreshToken: refresh}).Token()
		if isHTTP400(err) {
			// emailproxy.py §3.6: a first 400 is retried once (Entra ID
			// answers 400 for transient conditional-access checks too);
			// a second one in a row means the refresh token is dead.
			p.log.Warn().Str("account", a.name).Str("error", describeTokenError(err)).Msg("refresh refused; retrying once")
			tok, err = conf.TokenSource(hc, &oauth2.Token{RefreshToken: refresh}).Token()
		}
		if !isHTTP400(err) {
			return tok, err
		}
		p.log.Warn().Str("account", a.name).Str("error", describeTokenError(err)).
			Msg("refresh token refused twice (expired or revoked); it is dropped and the account needs authorising again")
		p.forget(a, false)
		if !a.unattended() {
			return nil, p.cannotFetch(a)
		}
	}
	if !a.unattended() {
		return nil, p.cannotFetch(a)
	}
	if a.flow == "service_account" {
		return serviceAccountToken(hc, a.cfg, a.name)
	}
	cc := &clientcredentials.Config{
		ClientID:       a.cfg.Get("client_id"),
		ClientSecret:   secret,
		TokenURL:       a.cfg.Get("token_url"),
		Scopes:         strings.Fields(a.cfg.Get("oauth2_scope")),
		AuthStyle:      oauth2.AuthStyleInParams,
		EndpointParams: url.Values{},
	}
	if r := a.cfg.Get("redirect_uri"); r != "" {
		cc.EndpointParams.Set("redirect_uri", r)
	}
	if a.flow == "password" {
		// ROPC: the login password is the account's real password.
		a.mu.Lock()
		pw := a.loginPassword
		a.mu.Unlock()
		cc.EndpointParams.Set("grant_type", "password")
		cc.EndpointParams.Set("username", a.name)
		cc.EndpointParams.Set("password", pw)
		if res := a.cfg.Get("oauth2_resource"); res != "" {
			cc.EndpointParams.Set("resource", res)
		}
	}
	cert, key := a.cfg.Get("jwt_certificate_path"), a.cfg.Get("jwt_key_path")
	if secret == "" && cert != "" && key != "" {
		assertion, err := clientAssertion(cert, key, cc.ClientID, cc.TokenURL)
		if err != nil {
			return nil, loginErr(false, err, "account %s: unable to create the certificate credential: %v", a.name, err)
		}
		cc.EndpointParams.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		cc.EndpointParams.Set("client_assertion", assertion)
	}
	return cc.Token(hc)
}

func (p *Provider) runFetch(a *account, call *fetchCall) {
	start := time.Now()
	// Several proxies sharing a store: one fetches, the others take its
	// token. The lock is held until the new token is saved (the deferred
	// release runs after persist).
	release := p.lockShared(a)
	defer release()
	tok, adopted := p.adoptShared(a), true
	var err error
	if tok == nil {
		adopted = false
		ctx, cancel := context.WithTimeout(context.Background(), p.opts.TokenTimeout)
		tok, err = p.fetch(ctx, a)
		cancel()
	}
	if err == nil && (tok == nil || tok.AccessToken == "") {
		err = errors.New("the token endpoint returned no access_token")
	}

	result := "ok"
	switch {
	case err != nil:
		result = "error"
	case adopted:
		result = "shared"
	}
	telemetry.TokenFetch(a.name, result)
	a.mu.Lock()
	a.inflight = nil
	if err != nil {
		var lerr *LoginError
		if errors.As(err, &lerr) {
			call.err = lerr
			a.mu.Unlock()
			close(call.done)
			return
		}
		detail := describeTokenError(err)
		if isClientRefused(err) {
			// The identity provider does not know this client or its
			// secret: a configuration error, not an outage. Say which keys
			// to check, and do not ask again for minutes.
			a.backoff = min(max(2*a.backoff, p.opts.ConfigErrorBackoff), 8*p.opts.ConfigErrorBackoff)
			a.lastErr = loginErr(false, err, "the identity provider refused the client of account %s (%s): check client_id, client_secret (or client_secret_encrypted, jwt_certificate_path / jwt_key_path) and token_url in its section", a.name, detail)
		} else {
			a.backoff = min(max(2*a.backoff, time.Second), p.opts.MaxBackoff)
			a.lastErr = loginErr(true, err, "could not get an OAuth 2.0 token for account %s (%s)", a.name, detail)
		}
		a.retryAt = time.Now().Add(a.backoff)
		call.err = a.lastErr
		p.log.Error().Str("account", a.name).Str("error", detail).Dur("retry_in_ms", a.backoff).
			Msg("token request failed; check token_url, client_id, client_secret and oauth2_scope")
		p.scheduleLocked(a, a.backoff)
		a.mu.Unlock()
		close(call.done)
		return
	}
	if tok.Expiry.IsZero() {
		tok.Expiry = time.Now().Add(defaultTokenLifetime)
	}
	if tok.RefreshToken != "" {
		a.refresh = tok.RefreshToken // rotation
	}
	a.tok, a.lastErr, a.backoff = tok, nil, 0
	call.tok = tok
	lifetime := time.Until(tok.Expiry)
	a.usable = usableFor(lifetime)
	msg := "access token obtained"
	if adopted {
		msg = "access token taken from the shared token cache (another proxy fetched it)"
	}
	p.log.Info().Str("account", a.name).Int64("expires_in_s", int64(lifetime/time.Second)).
		Dur("took_ms", time.Since(start)).Msg(msg)
	p.scheduleLocked(a, refreshDelay(lifetime, p.opts.RefreshMargin))
	a.mu.Unlock()
	close(call.done)
	if !adopted {
		p.persist(a, false)
	}
}

// isClientRefused reports an answer that says the client (its ID, secret
// or certificate) is wrong, which retrying will not fix.
func isClientRefused(err error) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && (re.ErrorCode == "invalid_client" || re.ErrorCode == "unauthorized_client")
}

func isHTTP400(err error) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && re.Response != nil && re.Response.StatusCode == http.StatusBadRequest
}

// refreshDelay is when to refresh a token with this lifetime: margin
// before it expires, or half-way for tokens shorter than the margin, and
// never more often than once a second.
func refreshDelay(lifetime, margin time.Duration) time.Duration {
	d := lifetime - margin
	if d <= 0 {
		d = lifetime / 2
	}
	// Refresh while the token still has twice what a login needs, so
	// that logins never wait for a fetch, whatever the margin.
	d = min(d, lifetime-2*usableFor(lifetime))
	return max(d, time.Second)
}

// usableLeft is what a.tok must have left to serve a login.
func (a *account) usableLeft() time.Duration {
	if a.usable == 0 {
		return minUsable // a token from the cache: its lifetime is unknown
	}
	return a.usable
}

// scheduleIfIdleLocked plans a refresh for a token just taken from the
// cache, if nothing else is planned.
func (p *Provider) scheduleIfIdleLocked(a *account) {
	if a.timer != nil || a.inflight != nil || a.tok == nil {
		return
	}
	p.scheduleLocked(a, refreshDelay(time.Until(a.tok.Expiry), p.opts.RefreshMargin))
}

// scheduleLocked arranges the next background fetch; a.mu is held.
func (p *Provider) scheduleLocked(a *account, after time.Duration) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed || !p.canFetchLocked(a) {
		return
	}
	if a.timer != nil {
		a.timer.Stop()
	}
	a.timer = time.AfterFunc(after, func() {
		a.mu.Lock()
		if p.canFetchLocked(a) {
			p.startFetchLocked(a)
		}
		a.mu.Unlock()
	})
}

// describeTokenError says what the token endpoint answered, in words an
// operator can act on, without echoing the request (which holds secrets).
func describeTokenError(err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		status := 0
		if re.Response != nil {
			status = re.Response.StatusCode
		}
		s := fmt.Sprintf("HTTP %d", status)
		if re.ErrorCode != "" {
			s += ": " + re.ErrorCode
		}
		if re.ErrorDescription != "" {
			d := re.ErrorDescription
			if i := strings.IndexAny(d, "\r\n"); i >= 0 {
				d = d[:i]
			}
			s += ": " + d
		}
		return s
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "no answer from the token endpoint in time"
	}
	return err.Error()
}
