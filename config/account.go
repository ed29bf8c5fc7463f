package config

import (
	"errors"
	"fmt"
	"strings"
)

// Account is the resolved settings of one login name: its own section, then
// [@domain] and [@] when catch-all accounts are allowed, then [DEFAULT].
type Account struct {
	Username string
	// Section is the account's own section name, or the catch-all section
	// that matched when the account has none of its own yet.
	Section string
	chain   []*Section
	file    *File
}

// ErrNoAccount: no section of the file matches a login name.
var ErrNoAccount = errors.New("no config file entry found")

// Account resolves a login username to its configuration, or returns a
// clear error when there is none. Matching is case-sensitive, as in the
// reference.
func (c *Config) Account(username string) (*Account, error) {
	if username == "" {
		return nil, fmt.Errorf("no username given")
	}
	var chain []*Section
	if s := c.File.Section(username); s != nil {
		chain = append(chain, s)
	}
	if c.Global.AllowCatchAllAccounts {
		if at := strings.LastIndex(username, "@"); at >= 0 {
			if s := c.File.Section(username[at:]); s != nil && username[at:] != username {
				chain = append(chain, s)
			}
		}
		if s := c.File.Section("@"); s != nil && username != "@" {
			chain = append(chain, s)
		}
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w for account %s - add a [%s] section with token_url, oauth2_scope, client_id and the keys its oauth2_flow needs", ErrNoAccount, username, username)
	}
	return &Account{Username: username, Section: chain[0].Name, chain: chain, file: c.File}, nil
}

// Get returns the first value of key along the account's fallback chain.
func (a *Account) Get(key string) string {
	v, _ := a.Lookup(key)
	return v
}

// Lookup is Get that also says whether the key was set anywhere.
func (a *Account) Lookup(key string) (string, bool) {
	for _, s := range a.chain {
		if v, ok := s.Get(key); ok {
			return v, true
		}
	}
	return a.file.Default.Get(key)
}

// Flow returns the OAuth 2.0 flow the account uses, applying the
// reference's rule that a permission_url forces authorization_code unless
// the flow is device.
func (a *Account) Flow() string {
	flow := strings.TrimSpace(a.Get("oauth2_flow"))
	if a.Get("permission_url") != "" && flow != "device" {
		return "authorization_code"
	}
	return flow
}
