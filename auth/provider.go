package auth

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/oauth2"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/telemetry"
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
	// ConfigErrorBackoff is the first wait after the identity provider
	// refused the client itself (invalid_client, unauthorized_client: a
	// configuration error); it doubles up to eight times that (default 1
	// min).
	ConfigErrorBackoff time.Duration
	// Iterations is the PBKDF2 count of new keys (default
	// CurrentIterations, emailproxy.py's); caches written with other counts
	// are read and re-encrypted with it. Tests lower it.
	Iterations int
	// MaxDerivations caps the PBKDF2 runs at once (default: one less than
	// the number of CPUs, at least one), so that a restart with hundreds
	// of accounts or a flood of wrong passwords always leaves a CPU to the
	// event loops, the relays and the logins that need no derivation.
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

// Provider hands out access tokens for logins and keeps them fresh.
type Provider struct {
	cfg    atomic.Pointer[config.Config] // swapped by Reload
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
	// refusedToken is the last token the upstream refused: never taken
	// back from a shared store.
	refusedToken string
	// claimSalt is the salt this proxy claimed in a shared store for the
	// key its first login will make ("" if none pending); claimUsers
	// counts the logins under way that share the claim.
	claimSalt  string
	claimUsers int
	// activity is when a server last sent a client of this account data
	// (Unix seconds; emailproxy.py's last_activity), saved with the
	// account's next save and when the provider closes.
	activity int64
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
	if opts.ConfigErrorBackoff <= 0 {
		opts.ConfigErrorBackoff = time.Minute
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
		opts.MaxDerivations = max(1, runtime.NumCPU()-1)
	}
	if opts.InteractiveTimeout <= 0 {
		opts.InteractiveTimeout = 10 * time.Minute
	}
	p := &Provider{opts: opts, log: opts.Logger, verify: newVerifier(), accounts: map[string]*account{},
		limit: newLimiter(opts.LockoutBase), kdf: make(chan struct{}, opts.MaxDerivations)}
	p.cfg.Store(cfg)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	cache, err := opts.Store.Load()
	if err != nil {
		p.log.Error().Err(err).Msg("cannot read the token cache; starting without cached tokens")
	}
	p.cache = cache
	return p
}

// Start fetches a token for every account that needs no user interaction
// and has no usable cached token, so that the first login does not wait
// for the identity provider. Not with a shared store: a token fetched
// before the first login (which brings the key) could not be shared, and
// every proxy of the fleet would fetch its own; the first login fetches
// one for all instead.
func (p *Provider) Start() {
	_, shared := p.opts.Store.(SharedStore)
	for _, s := range p.config().File.Sections {
		if !strings.Contains(s.Name, "@") || strings.HasPrefix(s.Name, "@") {
			continue
		}
		acct, err := p.config().Account(s.Name)
		if err != nil {
			continue
		}
		for _, k := range acct.Placeholders() {
			p.log.Warn().Str("account", s.Name).Str("key", k).Msg("value looks like the sample's placeholder")
		}
		a, lerr := p.account(s.Name)
		if lerr != nil {
			p.log.Error().Str("account", s.Name).Msg(lerr.Message)
			continue
		}
		a.mu.Lock()
		held := a.tok != nil && time.Until(a.tok.Expiry) > a.usableLeft() // after a reload
		if !shared && p.canFetchLocked(a) && !p.cachedTokenValidLocked(a) && !held {
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
	p.saveActivity(accts)
	p.opts.HTTPClient.CloseIdleConnections()
}

// account returns (creating on first use) the state of a login name.
func (p *Provider) account(name string) (*account, *LoginError) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if a, ok := p.accounts[name]; ok {
		return a, nil
	}
	acct, err := p.config().Account(name)
	if err != nil {
		return nil, loginErr(false, err, "%s", err.Error()) // wraps config.ErrNoAccount
	}
	if err := acct.Validate(); err != nil {
		return nil, loginErr(false, err, "%s", err.Error())
	}
	flow := acct.Flow()
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
	telemetry.Gauge(fmt.Sprintf(`emailproxy_token_expiry_seconds{account=%q}`, name), func() float64 {
		p.mu.Lock()
		a := p.accounts[name] // the current state: a reload may replace it
		p.mu.Unlock()
		if a == nil {
			return 0
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.tok == nil {
			return 0
		}
		return max(time.Until(a.tok.Expiry).Seconds(), 0)
	})
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

// NotReady lists the accounts whose logins cannot be served now, and why:
// no usable token (in memory, or cached and still valid) and a last fetch
// that failed, or no way to get one without the user. Empty: ready.
func (p *Provider) NotReady() []string {
	p.mu.Lock()
	accts := make([]*account, 0, len(p.accounts))
	for _, a := range p.accounts {
		accts = append(accts, a)
	}
	p.mu.Unlock()
	var out []string
	for _, a := range accts {
		a.mu.Lock()
		usable := a.tok != nil && time.Until(a.tok.Expiry) > a.usableLeft() || p.cachedTokenValidLocked(a)
		switch {
		case usable:
		case a.lastErr != nil:
			out = append(out, a.lastErr.Message)
		case a.inflight != nil:
			out = append(out, fmt.Sprintf("account %s: fetching a token", a.name))
		case !p.canFetchLocked(a):
			out = append(out, p.cannotFetch(a).Message)
		}
		a.mu.Unlock()
	}
	sort.Strings(out)
	return out
}

// config is the configuration in force.
func (p *Provider) config() *config.Config { return p.cfg.Load() }

// tokenKeys are the keys whose change makes an account's tokens another
// account's: the tokens in memory are dropped when one changes.
var tokenKeys = []string{"token_url", "oauth2_scope", "oauth2_flow", "permission_url", "client_id", "client_secret",
	"client_secret_encrypted", "redirect_uri", "oauth2_resource", "jwt_certificate_path", "jwt_key_path"}

// Reload takes a new configuration (SIGHUP). Accounts added apply from
// the next login (and those that need no user are fetched now); removed
// ones are forgotten; changed ones start again from the token store (what
// is held in memory is dropped, what the store holds is read again);
// unchanged ones keep their tokens.
func (p *Provider) Reload(cfg *config.Config) {
	cache, err := p.opts.Store.Load()
	if err != nil {
		p.log.Error().Err(err).Msg("cannot read the token cache; keeping the one read before")
	}
	var changed []*account // still configured: their activity is saved
	p.mu.Lock()
	p.cfg.Store(cfg)
	if err == nil {
		p.cache = cache
	}
	for name, a := range p.accounts {
		next, err := cfg.Account(name)
		same := err == nil
		for _, k := range tokenKeys {
			if same && a.cfg.Get(k) != next.Get(k) {
				same = false
			}
		}
		a.mu.Lock()
		if same {
			a.cfg = next
		} else if a.timer != nil {
			a.timer.Stop()
		}
		a.mu.Unlock()
		if !same {
			delete(p.accounts, name)
			if err == nil {
				changed = append(changed, a)
			}
			p.log.Info().Str("account", name).Msg("account changed or removed by the reload: its tokens in memory are dropped")
		}
	}
	p.mu.Unlock()
	p.saveActivity(changed)
	p.Start()
}
