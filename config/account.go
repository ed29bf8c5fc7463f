package config

import (
	"errors"
	"fmt"
	"slices"
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

// Placeholders returns the keys whose value is still the sample
// configuration's "*** your client id here ***" text.
func (a *Account) Placeholders() []string {
	var keys []string
	for _, k := range []string{"client_id", "client_secret"} {
		if strings.Contains(a.Get(k), "*** your") {
			keys = append(keys, k)
		}
	}
	return keys
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

// Flows are the oauth2_flow values this proxy supports.
var Flows = []string{"client_credentials", "authorization_code", "device", "password", "service_account"}

// Validate reports what keeps the account from logging in: missing keys,
// or a flow that is missing or not supported (naming the valid ones).
func (a *Account) Validate() error {
	var missing []string
	for _, k := range []string{"token_url", "oauth2_scope", "client_id"} {
		if a.Get(k) == "" && !(k == "oauth2_scope" && a.Flow() == "password" && a.Get("oauth2_resource") != "") {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("incomplete config file entry for account %s: set %s", a.Username, strings.Join(missing, ", "))
	}
	switch flow := a.Flow(); {
	case flow == "":
		return fmt.Errorf("incomplete config file entry for account %s: set oauth2_flow (or permission_url for an interactive flow)", a.Username)
	case !slices.Contains(Flows, flow):
		return fmt.Errorf("account %s: oauth2_flow %q is not supported; use one of %s", a.Username, flow, strings.Join(Flows, ", "))
	}
	return nil
}
