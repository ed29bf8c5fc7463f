package auth

import (
	"errors"
	"strconv"
)

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
	case plainSecret != "" && p.config().Global.EncryptClientSecretOnFirstUse && a.unattended():
		set["client_secret_encrypted"] = a.ring.encrypt([]byte(plainSecret))
		a.secret = plainSecret
		if _, own := p.config().File.Section(a.name).Get("client_secret"); own && p.opts.StoreIsConfig {
			// encrypt_client_secret_on_first_use: the plaintext leaves the
			// account's own section (an inherited one stays; see README).
			del = append(del, "client_secret")
		}
	}
	if withKeys || len(set) > 0 { // what is encrypted names its salt (a shared store checks it)
		set["token_salt"] = a.cached["token_salt"]
		set["token_iterations"] = strconv.Itoa(a.ring[0].iterations)
	}
	if v, newer := a.activityToSaveLocked(); newer { // not encrypted: names no salt
		set["last_activity"] = v
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
	err := p.opts.Store.Save(account, set, del)
	if errors.Is(err, ErrSaltConflict) {
		p.yieldToShared(account)
		return
	}
	if err != nil {
		p.log.Error().Str("account", account).Err(err).Msg("cannot save the token cache")
	}
}

// yieldToShared gives up this proxy's key and password for an account
// whose shared cache another proxy encrypted under another password (it
// accepted its first login before this one did). The shared values are
// taken instead; the next login here checks its password against them,
// so every proxy ends with the one password per account. The token held
// in memory stays usable meanwhile.
func (p *Provider) yieldToShared(account string) {
	a, lerr := p.account(account)
	shared, ok := p.opts.Store.(SharedStore)
	if lerr != nil || !ok {
		return
	}
	vals, err := shared.LoadAccount(account)
	if err != nil {
		p.log.Error().Str("account", account).Err(err).Msg("cannot read the shared token cache")
		return
	}
	a.mu.Lock()
	a.ring, a.password = nil, nil
	a.cached = map[string]string{}
	for _, k := range CachedKeys {
		if v, ok := vals[k]; ok {
			a.cached[k] = v
		}
	}
	a.mu.Unlock()
	p.log.Warn().Str("account", account).
		Msg("another proxy accepted a different password for this account first; logins here must now use that one")
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
