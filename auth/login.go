package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"strconv"
	"time"

	"github.com/emailproxy/emailproxy/config"
	"golang.org/x/oauth2"
)

// Grant is a login's go-ahead: the token to present upstream, and what
// the upstream's verdict on it means for the account (Accepted or
// Refused, called once).
type Grant struct {
	Token string
	// Expiry is when Token expires (zero: not known). A session
	// authenticated with it is not reused past it (see engine's session
	// reuse), as a client logging in itself would need a fresh token.
	Expiry   time.Time
	p        *Provider
	user     string
	password string
	claimed  bool // shares this proxy's claim on the account's key (a fleet's first login)
}

// Login is the one call a login makes: it checks the local password
// (limits per client address, the verifier or one key derivation) and
// returns the account's token, waiting for a fetch only when no usable
// token is cached, and at most until ctx ends. client is the client's
// address (for the failed-password limits); it may be empty. The error is
// a *LoginError, safe to show the client.
func (p *Provider) Login(ctx context.Context, user, password, client string) (*Grant, error) {
	tok, claimed, err := p.authorizeClaim(ctx, user, password, client)
	if err != nil {
		return nil, err
	}
	return &Grant{Token: tok.AccessToken, Expiry: tok.Expiry, p: p, user: user, password: password, claimed: claimed}, nil
}

// Accepted records that the upstream accepted the token. The first
// password to get here becomes the account's password (its key then
// encrypts the cached tokens); a login with another password is refused
// now, with the error to give the client.
func (g *Grant) Accepted() *LoginError {
	if !g.p.confirm(g.user, g.password) {
		return g.p.badPasswordFor(g.user)
	}
	return nil
}

// Failed records that the login did not reach the upstream's verdict
// (the server is down or busy, the client left). A fleet's first login of
// an account gives up its share in the claim on the key then, so that the
// other proxies need not wait for it.
func (g *Grant) Failed() {
	if !g.claimed {
		return
	}
	g.claimed = false
	if a, lerr := g.p.account(g.user); lerr == nil {
		g.p.releaseClaim(a)
	}
}

// Refused records that the upstream refused the token (serverReply is
// what it said) and returns the error to give the client. The token is
// dropped and a fresh one fetched at once for the next login; no second
// attempt is made within this one, since each costs the server's failure
// delay. The first refusal is temporary; a fresh token refused again is
// rarely the token's fault, and the error says what to check.
func (g *Grant) Refused(serverReply string) *LoginError {
	g.Failed()
	if g.p.reject(g.user, g.Token) > 1 {
		return loginErr(false, ErrTokenRefused, "the server refused the OAuth 2.0 token for account %s again, after a fresh one: %s (check the app's permissions for this mailbox)", g.user, serverReply)
	}
	g.p.log.Warn().Str("account", g.user).Str("reply", serverReply).Msg("upstream refused the token; fetching a fresh one for the next login")
	return loginErr(true, ErrTokenRefused, "the server refused the OAuth 2.0 token for account %s: %s; a fresh token is being fetched, try again", g.user, serverReply)
}

// authorize is Login's work: the token, or why not.
func (p *Provider) authorize(ctx context.Context, user, password, client string) (string, error) {
	tok, _, err := p.authorizeClaim(ctx, user, password, client)
	if err != nil {
		return "", err
	}
	return tok.AccessToken, nil
}

// authorizeClaim is authorize, also reporting whether the login shares
// this proxy's claim on the account's key (released here if it fails).
func (p *Provider) authorizeClaim(ctx context.Context, user, password, client string) (tok *oauth2.Token, claimed bool, err error) {
	tok, a, claimed, err := p.authorizeAccount(ctx, user, password, client)
	if err != nil && claimed {
		p.releaseClaim(a)
		claimed = false
	}
	return tok, claimed, err
}

func (p *Provider) authorizeAccount(ctx context.Context, user, password, client string) (tok *oauth2.Token, a *account, claimed bool, err error) {
	if password == "" {
		return nil, nil, false, loginErr(false, nil, "login failed - no password provided for account %s", user)
	}
	now := time.Now()
	if wait, addressWide := p.limit.blocked(user, client, now); wait > 0 {
		retry := wait.Round(time.Second) + time.Second
		if addressWide {
			return nil, nil, false, loginErr(true, ErrLockedOut, "login failed - too many failed logins from this address; try again in %s", retry)
		}
		return nil, nil, false, loginErr(true, ErrLockedOut, "login failed - too many wrong passwords for account %s from this address; try again in %s", user, retry)
	}
	a, lerr := p.account(user)
	if lerr != nil && errors.Is(lerr, config.ErrNoAccount) {
		// Answered exactly like a wrong password, so that accounts cannot
		// be enumerated; the hint is for the operator only.
		p.limit.fail(user, client, now)
		p.log.Warn().Str("account", user).Str("client", client).Msg(lerr.Message)
		return nil, nil, false, loginErr(false, ErrUnknownAccount, "%s", p.badPasswordFor(user).Message)
	}
	if lerr != nil {
		return nil, nil, false, lerr
	}
	tok, claimed, err = p.authorizeUnlocked(ctx, a, user, password, client, now)
	return tok, a, claimed, err
}

// authorizeUnlocked is authorizeAccount once the account is known.
func (p *Provider) authorizeUnlocked(ctx context.Context, a *account, user, password, client string, now time.Time) (tok *oauth2.Token, claimed bool, err error) {
	claimed, lerr := p.checkPassword(ctx, a, password)
	if lerr != nil {
		if errors.Is(lerr, ErrBadPassword) {
			p.limit.fail(user, client, now)
			p.log.Warn().Str("account", user).Str("client", client).Msg("wrong password")
		}
		return nil, claimed, lerr
	}
	p.limit.succeed(user, client, now)
	a.mu.Lock()
	if t := a.tok; t != nil && time.Until(t.Expiry) > a.usableLeft() {
		a.mu.Unlock()
		return t, claimed, nil
	}
	if a.flow == "password" {
		a.loginPassword = password
	}
	if a.secret == "" && p.config().Global.UseLoginPasswordAsClientCredentialsSecret && a.flow == "client_credentials" &&
		a.cfg.Get("client_secret") == "" && a.cached["client_secret_encrypted"] == "" {
		a.secret = password // emailproxy.py #271: the login password is the client secret
	}
	call := a.inflight
	if call == nil {
		if a.lastErr != nil && time.Now().Before(a.retryAt) {
			err := a.lastErr
			a.mu.Unlock()
			return nil, claimed, err
		}
		if !p.canFetchLocked(a) {
			a.mu.Unlock()
			if !a.unattended() && p.opts.Interactive != nil {
				return nil, claimed, p.startInteractive(a, password)
			}
			return nil, claimed, p.cannotFetch(a)
		}
		call = p.startFetchLocked(a)
	}
	a.mu.Unlock()
	select {
	case <-call.done:
		if call.err != nil {
			return nil, claimed, call.err
		}
		return call.tok, claimed, nil
	case <-ctx.Done():
		return nil, claimed, loginErr(true, ctx.Err(), "timed out waiting for an OAuth 2.0 token for account %s", user)
	}
}

func (p *Provider) cannotFetch(a *account) *LoginError {
	if a.unattended() {
		return loginErr(false, nil, "account %s: client_secret_encrypted needs the account's password; log in once to unlock it", a.name)
	}
	return loginErr(false, nil, "account %s (oauth2_flow %s) needs authorising: run `emailproxy authorise %s` on the proxy's host", a.name, a.flow, a.name)
}

// startInteractive begins the authorisation of an interactive account in
// the background, with the password of the login that asked (it will
// encrypt the tokens), and tells the client to come back.
func (p *Provider) startInteractive(a *account, password string) *LoginError {
	a.mu.Lock()
	running := a.authorising
	a.authorising = true
	a.mu.Unlock()
	if !running {
		p.log.Warn().Str("account", a.name).Msg("account needs authorising: follow the instructions printed by the proxy")
		p.goTracked(func() {
			defer func() { a.mu.Lock(); a.authorising = false; a.mu.Unlock() }()
			p.promptMu.Lock()
			defer p.promptMu.Unlock()
			ctx, cancel := context.WithTimeout(p.ctx, p.opts.InteractiveTimeout)
			defer cancel()
			if err := p.Authorise(ctx, a.name, password, *p.opts.Interactive); err != nil {
				p.log.Error().Str("account", a.name).Str("error", err.Error()).Msg("authorisation failed")
				return
			}
			p.log.Info().Str("account", a.name).Msg("account authorised")
		})
	}
	return loginErr(true, nil, "account %s is being authorised: complete the authorisation shown by the proxy, then log in again", a.name)
}

// confirm records that password logged in successfully. The first
// password that does so becomes the account's password; it returns false
// if another password got there first. A newly accepted password's key
// encrypts the account's tokens in the store.
func (p *Provider) confirm(user, password string) bool {
	a, lerr := p.account(user)
	if lerr != nil {
		return false
	}
	a.mu.Lock()
	a.refused = 0
	if a.password != nil {
		ok := p.verify.equal(a.password, user, password)
		a.mu.Unlock()
		return ok
	}
	a.password = p.verify.sum(user, password)
	_, inMemory := p.opts.Store.(memoryStore)
	needKey := a.ring == nil && !inMemory
	a.mu.Unlock()
	if !needKey {
		return true
	}
	a.mu.Lock()
	salt := a.claimSalt // claimed when the login's password was checked
	a.mu.Unlock()
	if salt == "" {
		salt = newSalt()
		if !p.claimKey(a, salt) {
			return true // its password was not checked against the winner's: the next login's is
		}
	}
	// PBKDF2 in the background: the client has its answer already.
	p.goTracked(func() {
		raw, _ := base64.StdEncoding.DecodeString(salt)
		var k *fernetKey
		// Not cancelled by Close, which waits for it: the key must reach the store.
		if err := p.derive(context.Background(), func() (err error) { k, err = deriveKey(password, raw, p.opts.Iterations); return }); err != nil {
			return
		}
		a.mu.Lock()
		a.ring, a.claimSalt = keyring{k}, ""
		a.cached["token_salt"] = salt
		a.cached["token_iterations"] = strconv.Itoa(p.opts.Iterations)
		a.mu.Unlock()
		p.persist(a, true)
	})
	return true
}

// claimKey tells the other proxies sharing the store that this one makes
// the account's key (with salt), so that they wait for its values rather
// than accept a first password of their own. When another proxy got
// there first, this one gives way (yieldToShared) and reports false. A
// store that cannot be reached leaves the decision to this proxy; a
// conflict, if any, is settled when the values are saved.
func (p *Provider) claimKey(a *account, salt string) bool {
	shared, ok := p.opts.Store.(SharedStore)
	if !ok {
		return true
	}
	held, err := shared.Claim(a.name, salt, keyClaimTTL)
	if err != nil || held == salt {
		return true
	}
	p.yieldToShared(a.name)
	return false
}

// keyClaimTTL bounds how long a claim outlives a proxy that died while
// deriving the key (a derivation takes about a second).
const keyClaimTTL = time.Minute

// reject reports that the upstream server refused token. If it is still
// the account's current token, it is dropped and a fresh one is fetched at
// once, so that the next login does not offer it again nor wait for the
// scheduled refresh. It returns how many tokens in a row the server has
// refused for the account (a success resets the count): a second refusal
// in a row is rarely the token's fault.
func (p *Provider) reject(user, token string) int {
	a, lerr := p.account(user)
	if lerr != nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tok != nil && a.tok.AccessToken == token {
		a.tok, a.refusedToken = nil, token
		a.refused++
		if p.canFetchLocked(a) {
			p.startFetchLocked(a)
		}
	}
	return max(a.refused, 1)
}
