package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
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
	// Iterations is the PBKDF2 count of new keys (default
	// CurrentIterations, emailproxy.py's); caches written with other counts
	// are read and re-encrypted with it. Tests lower it.
	Iterations int
	// MaxDerivations caps the PBKDF2 runs at once (default: the number of
	// CPUs), so that a restart with hundreds of accounts or a flood of
	// wrong passwords cannot take every CPU from the logins.
	MaxDerivations int
	// LockoutBase is the first lock-out after repeated wrong passwords; it
	// doubles with each further failure (default 1 s, at most 5 min).
	LockoutBase time.Duration
	// Store keeps tokens across restarts (default: memory only).
	Store Store
	// StoreIsConfig says Store writes the configuration file itself, so a
	// plaintext client_secret may be replaced by client_secret_encrypted.
	StoreIsConfig bool
	// Interactive, when set, lets a login start the authorisation of an
	// interactive account that has no tokens (--external-auth,
	// --local-server-auth): it runs in the background, one at a time, and
	// the client is told to log in again once it is done.
	Interactive *Prompt
	// InteractiveTimeout bounds one such authorisation (default 10 min).
	InteractiveTimeout time.Duration
	Logger             zerolog.Logger
}

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

// Provider hands out access tokens for logins and keeps them fresh.
type Provider struct {
	cfg    *config.Config
	opts   Options
	log    zerolog.Logger
	verify verifier
	cache  map[string]map[string]string // loaded at start
	limit  *limiter
	kdf    chan struct{} // one token per PBKDF2 that may run

	mu       sync.Mutex
	accounts map[string]*account
	closed   bool
	wg       sync.WaitGroup

	promptMu sync.Mutex // one interactive authorisation at a time (one terminal, one redirect port)
	ctx      context.Context
	cancel   context.CancelFunc
}

// account is the token state of one login name.
type account struct {
	name string
	cfg  *config.Account
	flow string

	unlocking chan struct{} // holds a token while a PBKDF2 runs for the account: one at a time

	mu      sync.Mutex
	tok     *oauth2.Token // plaintext, in memory only
	usable  time.Duration // tok is handed to logins while it has this long left
	refresh string        // plaintext refresh token, once known
	secret  string        // client secret decrypted from client_secret_encrypted
	// loginPassword is kept for the password (ROPC) flow only, where the
	// login password is the account's real password sent to the IdP.
	loginPassword string
	cached        map[string]string // what the store holds
	ring          keyring           // keys from the account's password, once known
	password      []byte            // verifier of the accepted local password
	inflight      *fetchCall
	lastErr       *LoginError
	retryAt       time.Time
	backoff       time.Duration
	timer         *time.Timer
	// authorising: an interactive authorisation started by a login runs.
	authorising bool
	refused     int // tokens the upstream refused in a row (see Reject)
}

type fetchCall struct {
	done chan struct{}
	tok  *oauth2.Token
	err  *LoginError
}

// NewProvider builds a provider for cfg's accounts and loads cached tokens
// from opts.Store.
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
	if opts.Store == nil {
		opts.Store = memoryStore{}
	}
	if opts.LockoutBase <= 0 {
		opts.LockoutBase = time.Second
	}
	if opts.Iterations <= 0 {
		opts.Iterations = CurrentIterations
	}
	if opts.MaxDerivations <= 0 {
		opts.MaxDerivations = runtime.NumCPU()
	}
	if opts.InteractiveTimeout <= 0 {
		opts.InteractiveTimeout = 10 * time.Minute
	}
	p := &Provider{cfg: cfg, opts: opts, log: opts.Logger, verify: newVerifier(), accounts: map[string]*account{},
		limit: newLimiter(opts.LockoutBase), kdf: make(chan struct{}, opts.MaxDerivations)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	cache, err := opts.Store.Load()
	if err != nil {
		p.log.Error().Err(err).Msg("cannot read the token cache; starting without cached tokens")
	}
	p.cache = cache
	return p
}

// userAgent names the proxy in token requests, as the reference does.
type userAgent struct{ base http.RoundTripper }

func (u *userAgent) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("User-Agent", "emailproxy (Go)")
	return u.base.RoundTrip(r)
}

// Start fetches a token for every account that needs no user interaction
// and has no usable cached token, so that the first login does not wait
// for the identity provider.
func (p *Provider) Start() {
	for _, s := range p.cfg.File.Sections {
		if !strings.Contains(s.Name, "@") || strings.HasPrefix(s.Name, "@") {
			continue
		}
		acct, err := p.cfg.Account(s.Name)
		if err != nil {
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
		if p.canFetchLocked(a) && !p.cachedTokenValidLocked(a) {
			p.startFetchLocked(a)
		}
		a.mu.Unlock()
	}
}

// Close stops background refreshes and waits for fetches and saves in
// flight.
func (p *Provider) Close() {
	p.cancel()
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
		return nil, loginErr(false, err, "%s", err.Error()) // wraps config.ErrNoAccount
	}
	var missing []string
	for _, k := range []string{"token_url", "oauth2_scope", "client_id"} {
		if acct.Get(k) == "" && !(k == "oauth2_scope" && acct.Flow() == "password" && acct.Get("oauth2_resource") != "") {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return nil, loginErr(false, nil, "incomplete config file entry for account %s: set %s", name, strings.Join(missing, ", "))
	}
	flow := acct.Flow()
	switch flow {
	case "client_credentials", "authorization_code", "device", "password", "service_account":
	case "":
		return nil, loginErr(false, nil, "incomplete config file entry for account %s: set oauth2_flow (or permission_url for an interactive flow)", name)
	default:
		return nil, loginErr(false, nil, "account %s: oauth2_flow %q is not supported by this version", name, flow)
	}
	a := &account{name: name, cfg: acct, flow: flow, cached: map[string]string{}, unlocking: make(chan struct{}, 1)}
	for k, v := range p.cache[name] {
		a.cached[k] = v
	}
	// Salt, iterations and the encrypted client secret are inherited from
	// a catch-all section (emailproxy.py §1.4); tokens are not.
	for _, k := range []string{"token_salt", "token_iterations", "client_secret_encrypted"} {
		if _, own := a.cached[k]; !own {
			if v := acct.Get(k); v != "" {
				a.cached[k] = v
			}
		}
	}
	p.accounts[name] = a
	return a, nil
}

// unattended flows need no user to get a new token.
func (a *account) unattended() bool {
	return a.flow == "client_credentials" || a.flow == "password" || a.flow == "service_account"
}

// appOnly flows get tokens without any user's consent: a wrong local
// password must never delete their tokens (anyone could mint new ones).
func (a *account) appOnly() bool {
	return a.flow == "client_credentials" || a.flow == "service_account"
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
	return a.cached["client_secret_encrypted"] == "" && !p.cfg.Global.UseLoginPasswordAsClientCredentialsSecret
}

func (p *Provider) cachedTokenValidLocked(a *account) bool {
	exp, err := strconv.ParseInt(a.cached["access_token_expiry"], 10, 64)
	return err == nil && a.cached["access_token"] != "" && time.Until(time.Unix(exp, 0)) > p.opts.RefreshMargin
}

// Authorize checks a login's local password and returns an access token
// for the account. It waits for a fetch only when no usable token is
// cached, and at most until ctx ends. client is the client's address (for
// the failed-password limits); it may be empty.
func (p *Provider) Authorize(ctx context.Context, user, password, client string) (string, error) {
	if password == "" {
		return "", loginErr(false, nil, "login failed - no password provided for account %s", user)
	}
	now := time.Now()
	if wait, addressWide := p.limit.blocked(user, client, now); wait > 0 {
		retry := wait.Round(time.Second) + time.Second
		if addressWide {
			return "", loginErr(true, ErrBadPassword, "login failed - too many failed logins from this address; try again in %s", retry)
		}
		return "", loginErr(true, ErrBadPassword, "login failed - too many wrong passwords for account %s from this address; try again in %s", user, retry)
	}
	a, lerr := p.account(user)
	if lerr != nil {
		if errors.Is(lerr, config.ErrNoAccount) {
			// Answered exactly like a wrong password, so that accounts
			// cannot be enumerated; the hint is for the operator only.
			p.limit.fail(user, client, now)
			p.log.Warn().Str("account", user).Str("client", client).Msg(lerr.Message)
			return "", p.badPasswordFor(user)
		}
		return "", lerr
	}
	if lerr := p.checkPassword(ctx, a, password); lerr != nil {
		if errors.Is(lerr, ErrBadPassword) {
			p.limit.fail(user, client, now)
			p.log.Warn().Str("account", user).Str("client", client).Msg("wrong password")
		}
		return "", lerr
	}
	p.limit.succeed(user, client, now)
	a.mu.Lock()
	if t := a.tok; t != nil && time.Until(t.Expiry) > a.usableLeft() {
		a.mu.Unlock()
		return t.AccessToken, nil
	}
	if a.flow == "password" {
		a.loginPassword = password
	}
	if a.secret == "" && p.cfg.Global.UseLoginPasswordAsClientCredentialsSecret && a.flow == "client_credentials" &&
		a.cfg.Get("client_secret") == "" && a.cached["client_secret_encrypted"] == "" {
		a.secret = password // emailproxy.py #271: the login password is the client secret
	}
	call := a.inflight
	if call == nil {
		if a.lastErr != nil && time.Now().Before(a.retryAt) {
			err := a.lastErr
			a.mu.Unlock()
			return "", err
		}
		if !p.canFetchLocked(a) {
			a.mu.Unlock()
			if !a.unattended() && p.opts.Interactive != nil {
				return "", p.startInteractive(a, password)
			}
			return "", p.cannotFetch(a)
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

// checkPassword verifies the local password: against the in-memory
// verifier when one exists (microseconds), else by decrypting the cached
// tokens (one PBKDF2 per account and password per process). With nothing
// cached, any password may try: the first that logs in becomes the
// account's password (see Confirm).
func (p *Provider) checkPassword(ctx context.Context, a *account, password string) *LoginError {
	if ok, known := p.knownPassword(a, password); known {
		if !ok {
			return p.badPassword(a)
		}
		return nil
	}
	select { // waiting for another login's derivation ends with the login
	case a.unlocking <- struct{}{}:
	case <-ctx.Done():
		return loginErr(true, ctx.Err(), "login failed for account %s: timed out waiting for the password check", a.name)
	}
	defer func() { <-a.unlocking }()
	if ok, known := p.knownPassword(a, password); known { // another login got there first
		if !ok {
			return p.badPassword(a)
		}
		return nil
	}
	a.mu.Lock()
	cached := make(map[string]string, len(a.cached))
	for k, v := range a.cached {
		cached[k] = v
	}
	a.mu.Unlock()
	probe := ""
	for _, k := range []string{"access_token", "refresh_token", "client_secret_encrypted"} {
		if cached[k] != "" {
			probe = cached[k]
			break
		}
	}
	if probe == "" {
		if p.cfg.Global.EnrolledAccountsOnly {
			return loginErr(false, nil, "account %s is not enrolled: run `emailproxy authorise %s` first (enrolled_accounts_only)", a.name, a.name)
		}
		return nil
	}
	salt, err := base64.StdEncoding.DecodeString(cached["token_salt"])
	if err != nil || len(salt) == 0 {
		p.log.Warn().Str("account", a.name).Msg("token_salt is not valid base64; the cached tokens cannot be used and will be replaced")
		p.forget(a, true)
		return nil
	}
	stored := LegacyIterations
	if s := cached["token_iterations"]; s != "" {
		if stored, err = strconv.Atoi(s); err != nil || stored <= 0 {
			stored = LegacyIterations
		}
	}
	var ring keyring
	err = p.derive(ctx, func() (err error) { ring, err = openKeyring(password, salt, stored, p.opts.Iterations, probe); return })
	if err != nil && !errors.Is(err, ErrDecrypt) {
		return loginErr(true, err, "login failed for account %s: the password check did not finish in time", a.name)
	}
	if err != nil {
		if p.cfg.Global.DeleteAccountTokenOnPasswordError && !a.appOnly() {
			p.log.Warn().Str("account", a.name).Msg("password does not decrypt the cached tokens; deleting them (delete_account_token_on_password_error)")
			p.forget(a, true)
			return nil
		}
		return p.badPassword(a)
	}
	p.unlock(a, ring, cached, password)
	return nil
}

// derive runs a key derivation when one of the MaxDerivations slots is
// free, or gives up when ctx ends.
func (p *Provider) derive(ctx context.Context, f func() error) error {
	select {
	case p.kdf <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.kdf }()
	return f()
}

func (p *Provider) knownPassword(a *account, password string) (ok, known bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.password == nil {
		return false, false
	}
	return p.verify.equal(a.password, a.name, password), true
}

func (p *Provider) badPassword(a *account) *LoginError { return p.badPasswordFor(a.name) }

func (p *Provider) badPasswordFor(user string) *LoginError {
	return loginErr(false, ErrBadPassword, "login failed - the password for account %s is incorrect", user)
}

// unlock takes the decrypted cache into memory and re-encrypts values
// that were written with an older iteration count.
func (p *Provider) unlock(a *account, ring keyring, cached map[string]string, password string) {
	dec := func(k string) (string, bool) {
		if cached[k] == "" {
			return "", false
		}
		v, stale, err := ring.decrypt(cached[k])
		if err != nil {
			return "", false
		}
		return string(v), stale
	}
	access, s1 := dec("access_token")
	refresh, s2 := dec("refresh_token")
	secret, s3 := dec("client_secret_encrypted")
	a.mu.Lock()
	a.ring = ring
	a.password = p.verify.sum(a.name, password)
	if exp, err := strconv.ParseInt(cached["access_token_expiry"], 10, 64); err == nil && access != "" {
		if t := time.Unix(exp, 0); a.tok == nil || t.After(a.tok.Expiry) {
			a.tok = &oauth2.Token{AccessToken: access, Expiry: t, TokenType: "Bearer"}
		}
	}
	// A token fetched before the key was known (at start, say) lives in
	// memory only: save it now, or a restart would find the older one.
	fresher := a.tok != nil && a.tok.AccessToken != access
	if refresh != "" {
		a.refresh = refresh
	}
	if secret != "" {
		a.secret = secret
	}
	stale := s1 || s2 || s3
	if stale {
		p.log.Info().Str("account", a.name).Int("token_iterations", p.opts.Iterations).Msg("re-encrypting cached tokens with the current key")
	}
	p.scheduleIfIdleLocked(a)
	a.mu.Unlock()
	if stale || fresher {
		p.persist(a, true)
	}
}

// forget drops the cached tokens (and, with all, the salt) of an account.
func (p *Provider) forget(a *account, all bool) {
	del := []string{"access_token", "access_token_expiry", "refresh_token"}
	if all {
		del = append(del, "token_salt", "token_iterations")
	}
	a.mu.Lock()
	for _, k := range del {
		delete(a.cached, k)
	}
	a.tok, a.refresh = nil, ""
	if all {
		a.ring = nil
	}
	a.mu.Unlock()
	p.save(a.name, nil, del)
}

// Confirm records that password logged in successfully. The first
// password that does so becomes the account's password; it returns false
// if another password got there first. A newly accepted password's key
// encrypts the account's tokens in the store.
func (p *Provider) Confirm(user, password string) bool {
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
	if needKey {
		// PBKDF2 in the background: the client has its answer already.
		p.goTracked(func() {
			salt := newSalt()
			raw, _ := base64.StdEncoding.DecodeString(salt)
			var k *fernetKey
			// Not cancelled by Close, which waits for it: the key must reach the store.
			if err := p.derive(context.Background(), func() (err error) { k, err = deriveKey(password, raw, p.opts.Iterations); return }); err != nil {
				return
			}
			a.mu.Lock()
			a.ring = keyring{k}
			a.cached["token_salt"] = salt
			a.cached["token_iterations"] = strconv.Itoa(p.opts.Iterations)
			a.mu.Unlock()
			p.persist(a, true)
		})
	}
	return true
}

// persist encrypts the account's tokens with its key and saves them.
// withKeys also writes the salt and iteration count.
func (p *Provider) persist(a *account, withKeys bool) {
	a.mu.Lock()
	if a.ring == nil {
		a.mu.Unlock()
		return
	}
	set := map[string]string{}
	var del []string
	if a.tok != nil {
		set["access_token"] = a.ring.encrypt([]byte(a.tok.AccessToken))
		set["access_token_expiry"] = strconv.FormatInt(a.tok.Expiry.Unix(), 10)
	}
	if a.refresh != "" {
		set["refresh_token"] = a.ring.encrypt([]byte(a.refresh))
	} else if a.cached["refresh_token"] != "" {
		del = append(del, "refresh_token")
	}
	plainSecret := a.cfg.Get("client_secret")
	switch {
	case a.secret != "" && a.cached["client_secret_encrypted"] != "":
		set["client_secret_encrypted"] = a.ring.encrypt([]byte(a.secret))
	case plainSecret != "" && p.cfg.Global.EncryptClientSecretOnFirstUse && a.unattended():
		set["client_secret_encrypted"] = a.ring.encrypt([]byte(plainSecret))
		a.secret = plainSecret
		if _, own := p.cfg.File.Section(a.name).Get("client_secret"); own && p.opts.StoreIsConfig {
			// encrypt_client_secret_on_first_use: the plaintext leaves the
			// account's own section (an inherited one stays; see README).
			del = append(del, "client_secret")
		}
	}
	if withKeys || set["access_token"] != "" {
		set["token_salt"] = a.cached["token_salt"]
		set["token_iterations"] = strconv.Itoa(a.ring[0].iterations)
	}
	for k, v := range set {
		a.cached[k] = v
	}
	for _, k := range del {
		delete(a.cached, k)
	}
	a.mu.Unlock()
	p.save(a.name, set, del)
}

func (p *Provider) save(account string, set map[string]string, del []string) {
	if err := p.opts.Store.Save(account, set, del); err != nil {
		p.log.Error().Str("account", account).Err(err).Msg("cannot save the token cache")
	}
}

func (p *Provider) goTracked(f func()) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	go func() { defer p.wg.Done(); f() }()
}

// Reject reports that the upstream server refused token. If it is still
// the account's current token, it is dropped and a fresh one is fetched at
// once, so that the next login does not offer it again nor wait for the
// scheduled refresh. It returns how many tokens in a row the server has
// refused for the account (a success resets the count): a second refusal
// in a row is rarely the token's fault.
func (p *Provider) Reject(user, token string) int {
	a, lerr := p.account(user)
	if lerr != nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tok != nil && a.tok.AccessToken == token {
		a.tok = nil
		a.refused++
		if p.canFetchLocked(a) {
			p.startFetchLocked(a)
		}
	}
	return max(a.refused, 1)
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
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.TokenTimeout)
	start := time.Now()
	tok, err := p.fetch(ctx, a)
	cancel()
	if err == nil && (tok == nil || tok.AccessToken == "") {
		err = errors.New("the token endpoint returned no access_token")
	}

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
		a.backoff = min(max(2*a.backoff, time.Second), p.opts.MaxBackoff)
		a.retryAt = time.Now().Add(a.backoff)
		detail := describeTokenError(err)
		a.lastErr = loginErr(true, err, "could not get an OAuth 2.0 token for account %s (%s)", a.name, detail)
		call.err = a.lastErr
		p.log.Error().Str("account", a.name).Str("error", detail).Dur("retry_in", a.backoff).
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
	p.log.Info().Str("account", a.name).Int64("expires_in_s", int64(lifetime/time.Second)).
		Dur("took", time.Since(start)).Msg("access token obtained")
	p.scheduleLocked(a, refreshDelay(lifetime, p.opts.RefreshMargin))
	a.mu.Unlock()
	close(call.done)
	p.persist(a, false)
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
