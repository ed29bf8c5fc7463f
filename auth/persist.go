package auth

import "strconv"

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
