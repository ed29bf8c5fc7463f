package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"time"

	"github.com/emailproxy/emailproxy/telemetry"
	"golang.org/x/oauth2"
)

// verifier holds a keyed hash of an accepted password, never the password:
// HMAC-SHA256 under a key that exists only in this process's memory, so a
// memory dump cannot be brute-forced offline without the key, and the check
// costs microseconds instead of a PBKDF2.
type verifier struct {
	key []byte
}

func newVerifier() verifier {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic("auth: no randomness: " + err.Error())
	}
	return verifier{key: k}
}

func (v verifier) sum(account, password string) []byte {
	m := hmac.New(sha256.New, v.key)
	m.Write([]byte(account))
	m.Write([]byte{0})
	m.Write([]byte(password))
	return m.Sum(nil)
}

// equal compares in constant time.
func (v verifier) equal(stored []byte, account, password string) bool {
	return hmac.Equal(stored, v.sum(account, password))
}

// checkPassword verifies the local password: against the in-memory
// verifier when one exists (microseconds), else by decrypting the cached
// tokens (one PBKDF2 per account and password per process). With nothing
// cached, any password may try: the first that logs in becomes the
// account's password (see Confirm).
//
// claimed reports that the login took a share in this proxy's claim on
// the key in a shared store (see shareFirstLogin): release it with
// releaseClaim if the login fails.
func (p *Provider) checkPassword(ctx context.Context, a *account, password string) (claimed bool, lerr *LoginError) {
	if ok, known := p.knownPassword(a, password); known {
		if !ok {
			return false, p.badPassword(a)
		}
		return false, nil
	}
	select { // waiting for another login's derivation ends with the login
	case a.unlocking <- struct{}{}:
	case <-ctx.Done():
		return false, loginErr(true, ctx.Err(), "login failed for account %s: timed out waiting for the password check", a.name)
	}
	defer func() { <-a.unlocking }()
	if ok, known := p.knownPassword(a, password); known { // another login got there first
		if !ok {
			return false, p.badPassword(a)
		}
		return false, nil
	}
	cached, probe := p.cachedProbe(a)
	if probe == "" {
		if p.config().Global.EnrolledAccountsOnly {
			return false, loginErr(false, nil, "account %s is not enrolled: run `emailproxy authorise %s` first (enrolled_accounts_only)", a.name, a.name)
		}
		switch first := p.shareFirstLogin(ctx, a); first {
		case firstHere, firstClaimed:
			return first == firstClaimed, nil // any password may try; the first to log in is the account's
		case firstElsewhere:
			// Another proxy of the fleet made the key: its password is the
			// account's.
			cached, probe = p.cachedProbe(a)
		case firstPending:
			return false, loginErr(true, ctx.Err(), "login failed for account %s: another proxy is setting up its token cache; try again", a.name)
		}
	}
	salt, err := base64.StdEncoding.DecodeString(cached["token_salt"])
	if err != nil || len(salt) == 0 {
		p.log.Warn().Str("account", a.name).Msg("token_salt is not valid base64; the cached tokens cannot be used and will be replaced")
		p.forget(a, true)
		return false, nil
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
		return false, loginErr(true, err, "login failed for account %s: the password check did not finish in time", a.name)
	}
	if err != nil {
		if p.config().Global.DeleteAccountTokenOnPasswordError && !a.appOnly() {
			p.log.Warn().Str("account", a.name).Msg("password does not decrypt the cached tokens; deleting them (delete_account_token_on_password_error)")
			p.forget(a, true)
			return false, nil
		}
		return false, p.badPassword(a)
	}
	p.unlock(a, ring, cached, password)
	return false, nil
}

// cachedProbe copies the account's cached keys and picks an encrypted one
// to check a password against ("" if none).
func (p *Provider) cachedProbe(a *account) (cached map[string]string, probe string) {
	a.mu.Lock()
	cached = make(map[string]string, len(a.cached))
	for k, v := range a.cached {
		cached[k] = v
	}
	a.mu.Unlock()
	for _, k := range []string{"access_token", "refresh_token", "client_secret_encrypted"} {
		if cached[k] != "" {
			return cached, cached[k]
		}
	}
	return cached, ""
}

// firstLogin is what shareFirstLogin found.
type firstLogin int

const (
	firstHere      firstLogin = iota // this login's password will make the key
	firstClaimed                     // the same, and this proxy holds the claim (one more login shares it)
	firstElsewhere                   // another proxy's values are now in a.cached
	firstPending                     // another proxy is making the key and ctx ended
)

// shareFirstLogin settles, for an account with nothing cached here, which
// proxy of a fleet makes its key. The account's values in a shared store
// (another proxy logged in since this one started) are taken; else this
// proxy claims the key for its login, so that the others wait for the
// values instead of fetching tokens of their own and accepting another
// password; while another proxy holds the claim, this login waits for its
// values, until ctx ends. Without a shared store, or with one that cannot
// be reached, this proxy decides alone, as a lone one would.
func (p *Provider) shareFirstLogin(ctx context.Context, a *account) firstLogin {
	shared, ok := p.opts.Store.(SharedStore)
	if !ok {
		return firstHere
	}
	for {
		vals, err := shared.LoadAccount(a.name)
		if err != nil {
			return firstHere
		}
		if vals["token_salt"] != "" {
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.cached["token_salt"] != "" || a.password != nil {
				return firstHere // something happened here meanwhile
			}
			for _, k := range CachedKeys {
				if v, ok := vals[k]; ok {
					a.cached[k] = v
				}
			}
			return firstElsewhere
		}
		a.mu.Lock()
		salt := a.claimSalt
		a.mu.Unlock()
		if salt == "" {
			salt = newSalt()
		}
		held, err := shared.Claim(a.name, salt, keyClaimTTL)
		if err != nil {
			return firstHere
		}
		if held == salt { // ours (or already ours: another login here)
			a.mu.Lock()
			a.claimSalt = salt
			a.claimUsers++
			a.mu.Unlock()
			return firstClaimed
		}
		select {
		case <-ctx.Done():
			return firstPending
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// releaseClaim ends a failed login's share in this proxy's claim on the
// account's key; when no login shares it any more and none has succeeded,
// the claim is given up, so that the other proxies need not wait for it.
func (p *Provider) releaseClaim(a *account) {
	a.mu.Lock()
	a.claimUsers = max(a.claimUsers-1, 0)
	salt := ""
	if a.claimUsers == 0 && a.password == nil && a.ring == nil {
		salt, a.claimSalt = a.claimSalt, ""
	}
	a.mu.Unlock()
	if shared, ok := p.opts.Store.(SharedStore); ok && salt != "" {
		shared.Unclaim(a.name, salt)
	}
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
	telemetry.KeyDerivations.Inc()
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
