package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/emailproxy/emailproxy/config"
)

// Options tune the provider; zero values take the defaults shown.
type Options struct {
	// HTTPClient makes token requests. Default: a client whose transport
	// honours https_proxy / no_proxy, as the reference does.
	HTTPClient *http.Client
	// TokenTimeout bounds one token request (default 15 s): an endpoint
	// that accepts and never answers costs a login seconds, not a hang.
	TokenTimeout time.Duration
	// RefreshMargin is how long before expiry a token is refreshed in the
	// background (default 600 s, the reference's TOKEN_EXPIRY_MARGIN).
	RefreshMargin time.Duration
	// MaxBackoff caps the wait between retries after a failed fetch
	// (default 60 s; the first retry is after 1 s).
	MaxBackoff time.Duration
	Logger     zerolog.Logger
}

// defaultTokenLifetime is assumed when a provider sends no expires_in.
const defaultTokenLifetime = time.Hour

// minUsable is the least validity a cached token must have to be handed
// to a login, even inside the refresh margin.
const minUsable = 30 * time.Second

// Provider hands out access tokens for logins and keeps them fresh.
type Provider struct {
	cfg    *config.Config
	opts   Options
	log    zerolog.Logger
	verify verifier

	mu       sync.Mutex
	accounts map[string]*account
	closed   bool
	wg       sync.WaitGroup
}

// account is the token state of one login name.
type account struct {
	name  string
	fetch func(ctx context.Context) (*oauth2.Token, error)

	mu       sync.Mutex
	tok      *oauth2.Token
	inflight *fetchCall
	lastErr  *LoginError
	retryAt  time.Time
	backoff  time.Duration
	timer    *time.Timer
	password []byte // verifier of the accepted local password
}

type fetchCall struct {
	done chan struct{}
	tok  *oauth2.Token
	err  *LoginError
}

// NewProvider builds a provider for cfg's accounts.
func NewProvider(cfg *config.Config, opts Options) *Provider {
	if opts.TokenTimeout <= 0 {
		opts.TokenTimeout = 15 * time.Second
	}
	if opts.RefreshMargin <= 0 {
		opts.RefreshMargin = 600 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 60 * time.Second
	}
	if opts.HTTPClient == nil {
		// Its own transport, so Close can drop its idle connections.
		opts.HTTPClient = &http.Client{Transport: &userAgent{base: http.DefaultTransport.(*http.Transport).Clone()}}
	}
	return &Provider{cfg: cfg, opts: opts, log: opts.Logger, verify: newVerifier(), accounts: map[string]*account{}}
}

// userAgent names the proxy in token requests, as the reference does.
type userAgent struct{ base http.RoundTripper }

func (u *userAgent) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("User-Agent", "emailproxy (Go)")
	return u.base.RoundTrip(r)
}

// Start fetches a token for every account that needs no user interaction,
// so that the first login does not wait for the identity provider.
func (p *Provider) Start() {
	for _, s := range p.cfg.File.Sections {
		if !strings.Contains(s.Name, "@") || strings.HasPrefix(s.Name, "@") {
			continue
		}
		acct, err := p.cfg.Account(s.Name)
		if err != nil || acct.Flow() != "client_credentials" {
			continue
		}
		for _, k := range []string{"client_id", "client_secret"} {
			if strings.Contains(acct.Get(k), "*** your") {
				p.log.Warn().Str("account", s.Name).Str("key", k).Msg("value looks like the sample's placeholder")
			}
		}
		a, lerr := p.account(s.Name)
		if lerr != nil {
			p.log.Error().Str("account", s.Name).Msg(lerr.Message)
			continue
		}
		a.mu.Lock()
		p.startFetchLocked(a)
		a.mu.Unlock()
	}
}

// Close stops background refreshes and waits for fetches in flight.
func (p *Provider) Close() {
	p.mu.Lock()
	p.closed = true
	accts := make([]*account, 0, len(p.accounts))
	for _, a := range p.accounts {
		accts = append(accts, a)
	}
	p.mu.Unlock()
	for _, a := range accts {
		a.mu.Lock()
		if a.timer != nil {
			a.timer.Stop()
		}
		a.mu.Unlock()
	}
	p.wg.Wait()
	p.opts.HTTPClient.CloseIdleConnections()
}

// account returns (creating on first use) the state of a login name.
func (p *Provider) account(name string) (*account, *LoginError) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if a, ok := p.accounts[name]; ok {
		return a, nil
	}
	acct, err := p.cfg.Account(name)
	if err != nil {
		return nil, loginErr(false, err, "%s", err.Error())
	}
	fetch, lerr := p.fetcher(acct)
	if lerr != nil {
		return nil, lerr
	}
	a := &account{name: name, fetch: fetch}
	p.accounts[name] = a
	return a, nil
}

// fetcher builds the token request for an account's flow.
func (p *Provider) fetcher(acct *config.Account) (func(context.Context) (*oauth2.Token, error), *LoginError) {
	name := acct.Username
	var missing []string
	for _, k := range []string{"token_url", "oauth2_scope", "client_id"} {
		if acct.Get(k) == "" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return nil, loginErr(false, nil, "incomplete config file entry for account %s: set %s", name, strings.Join(missing, ", "))
	}
	switch flow := acct.Flow(); flow {
	case "client_credentials":
		cc := &clientcredentials.Config{
			ClientID:     acct.Get("client_id"),
			ClientSecret: acct.Get("client_secret"),
			TokenURL:     acct.Get("token_url"),
			Scopes:       strings.Fields(acct.Get("oauth2_scope")),
			AuthStyle:    oauth2.AuthStyleInParams,
		}
		if r := acct.Get("redirect_uri"); r != "" {
			cc.EndpointParams = map[string][]string{"redirect_uri": {r}}
		}
		client := p.opts.HTTPClient
		return func(ctx context.Context) (*oauth2.Token, error) {
			return cc.Token(context.WithValue(ctx, oauth2.HTTPClient, client))
		}, nil
	case "":
		return nil, loginErr(false, nil, "incomplete config file entry for account %s: set oauth2_flow (or permission_url for an interactive flow)", name)
	default:
		return nil, loginErr(false, nil, "account %s: oauth2_flow %q is not supported by this version (client_credentials is)", name, flow)
	}
}

// Authorize checks a login's local password and returns an access token
// for the account. It waits for a fetch only when no usable token is
// cached, and at most until ctx ends.
func (p *Provider) Authorize(ctx context.Context, user, password string) (string, error) {
	if password == "" {
		return "", loginErr(false, nil, "login failed - no password provided for account %s", user)
	}
	a, lerr := p.account(user)
	if lerr != nil {
		return "", lerr
	}
	a.mu.Lock()
	if a.password != nil && !p.verify.equal(a.password, user, password) {
		a.mu.Unlock()
		return "", loginErr(false, ErrBadPassword, "login failed - the password for account %s is incorrect", user)
	}
	if t := a.tok; t != nil && time.Until(t.Expiry) > minUsable {
		a.mu.Unlock()
		return t.AccessToken, nil
	}
	call := a.inflight
	if call == nil {
		if a.lastErr != nil && time.Now().Before(a.retryAt) {
			err := a.lastErr
			a.mu.Unlock()
			return "", err
		}
		call = p.startFetchLocked(a)
	}
	a.mu.Unlock()
	select {
	case <-call.done:
		if call.err != nil {
			return "", call.err
		}
		return call.tok.AccessToken, nil
	case <-ctx.Done():
		return "", loginErr(true, ctx.Err(), "timed out waiting for an OAuth 2.0 token for account %s", user)
	}
}

// Confirm records that password logged in successfully. The first
// password that does so becomes the account's password until restart; it
// returns false if another password got there first.
func (p *Provider) Confirm(user, password string) bool {
	a, lerr := p.account(user)
	if lerr != nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.password == nil {
		a.password = p.verify.sum(user, password)
		return true
	}
	return p.verify.equal(a.password, user, password)
}

// Reject drops token if it is still the account's current one, because the
// upstream server refused it; the next Authorize fetches a fresh one.
func (p *Provider) Reject(user, token string) {
	a, lerr := p.account(user)
	if lerr != nil {
		return
	}
	a.mu.Lock()
	if a.tok != nil && a.tok.AccessToken == token {
		a.tok = nil
	}
	a.mu.Unlock()
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

func (p *Provider) runFetch(a *account, call *fetchCall) {
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.TokenTimeout)
	start := time.Now()
	tok, err := a.fetch(ctx)
	cancel()
	if err == nil && (tok == nil || tok.AccessToken == "") {
		err = errors.New("the token endpoint returned no access_token")
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	a.inflight = nil
	if err != nil {
		a.backoff = min(max(2*a.backoff, time.Second), p.opts.MaxBackoff)
		a.retryAt = time.Now().Add(a.backoff)
		detail := describeTokenError(err)
		a.lastErr = loginErr(true, err, "could not get an OAuth 2.0 token for account %s (%s)", a.name, detail)
		call.err = a.lastErr
		p.log.Error().Str("account", a.name).Str("error", detail).Dur("retry_in", a.backoff).
			Msg("token request failed; check token_url, client_id, client_secret and oauth2_scope")
		p.scheduleLocked(a, a.backoff)
	} else {
		if tok.Expiry.IsZero() {
			tok.Expiry = time.Now().Add(defaultTokenLifetime)
		}
		a.tok, a.lastErr, a.backoff = tok, nil, 0
		call.tok = tok
		lifetime := time.Until(tok.Expiry)
		p.log.Info().Str("account", a.name).Int64("expires_in_s", int64(lifetime/time.Second)).
			Dur("took", time.Since(start)).Msg("access token obtained")
		p.scheduleLocked(a, refreshDelay(lifetime, p.opts.RefreshMargin))
	}
	close(call.done)
}

// refreshDelay is when to refresh a token with this lifetime: margin
// before it expires, or half-way for tokens shorter than the margin, and
// never more often than once a second.
func refreshDelay(lifetime, margin time.Duration) time.Duration {
	d := lifetime - margin
	if d <= 0 {
		d = lifetime / 2
	}
	return max(d, time.Second)
}

// scheduleLocked arranges the next background fetch; a.mu is held.
func (p *Provider) scheduleLocked(a *account, after time.Duration) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return
	}
	if a.timer != nil {
		a.timer.Stop()
	}
	a.timer = time.AfterFunc(after, func() {
		a.mu.Lock()
		p.startFetchLocked(a)
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
