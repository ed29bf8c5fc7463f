package auth

import (
	"context"
	"strconv"
	"time"

	"golang.org/x/oauth2"

	"github.com/emailproxy/emailproxy/telemetry"
)

// lockShared takes the account's fetch lock when the store is shared by
// several proxies, waiting at most the token timeout. A lock that cannot
// be had (the store is down, or another proxy holds it too long) does not
// stop the fetch: the proxy then fetches on its own, as a lone proxy
// would, and counts it. The returned func releases the lock.
func (p *Provider) lockShared(a *account) func() {
	shared, ok := p.opts.Store.(SharedStore)
	if !ok {
		return func() {}
	}
	ctx, cancel := context.WithTimeout(p.ctx, p.opts.TokenTimeout)
	defer cancel()
	unlock, err := shared.LockFetch(ctx, a.name, p.opts.TokenTimeout+10*time.Second)
	if err != nil {
		telemetry.SharedStoreDegraded("fetch_lock")
		p.log.Warn().Str("account", a.name).Str("error", err.Error()).
			Msg("token fetch without the shared lock; other proxies may fetch too")
		return func() {}
	}
	return unlock
}

// adoptShared reads the account's keys from a shared store and returns
// the access token found there when another proxy has fetched one that
// is still good for longer than the refresh margin. A refresh token
// rotated by another proxy is taken even when the access token is not,
// since the one held here may no longer work. Values encrypted with
// another key (another salt) are left alone.
func (p *Provider) adoptShared(a *account) *oauth2.Token {
	shared, ok := p.opts.Store.(SharedStore)
	if !ok {
		return nil
	}
	vals, err := shared.LoadAccount(a.name)
	if err != nil {
		telemetry.SharedStoreDegraded("load")
		p.log.Warn().Str("account", a.name).Str("error", err.Error()).Msg("cannot read the shared token cache; fetching")
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ring == nil || vals["token_salt"] == "" || vals["token_salt"] != a.cached["token_salt"] {
		return nil
	}
	if refresh, _, err := a.ring.decrypt(vals["refresh_token"]); err == nil && len(refresh) > 0 {
		a.refresh = string(refresh)
		a.cached["refresh_token"] = vals["refresh_token"]
	}
	access, _, err := a.ring.decrypt(vals["access_token"])
	exp, perr := strconv.ParseInt(vals["access_token_expiry"], 10, 64)
	if err != nil || perr != nil || len(access) == 0 || string(access) == a.refusedToken ||
		time.Until(time.Unix(exp, 0)) <= p.opts.RefreshMargin {
		return nil
	}
	a.cached["access_token"], a.cached["access_token_expiry"] = vals["access_token"], vals["access_token_expiry"]
	return &oauth2.Token{AccessToken: string(access), TokenType: "Bearer", Expiry: time.Unix(exp, 0)}
}
