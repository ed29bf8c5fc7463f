// Package load is the bench harness's load generator: fleets of simulated
// polling clients (POP3, IMAP, SMTP, bulk downloads, idle sessions) run
// either directly against a provider, doing TLS and XOAUTH2 themselves as
// an app would if it could, or through a proxy with a plaintext password
// login. Both modes run the same cycles with the same client code, so
// their figures compare.
package load

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2/clientcredentials"

	"github.com/emailproxy/emailproxy/config"
)

// Mode says how clients reach the provider.
type Mode string

const (
	Direct Mode = "direct" // TLS + XOAUTH2 straight to the provider
	Proxy  Mode = "proxy"  // plaintext + password to the proxy
)

// Target is everything the clients need, read from an emailproxy.config
// (the one `emailproxy-bench upstream` writes): the provider's servers
// and token endpoint for direct mode, the proxy's local ports for proxy
// mode, and the accounts.
type Target struct {
	ProxyHost string // host of the proxy's listeners (default 127.0.0.1)
	Password  string // password clients give the proxy
	Accounts  []Account
	servers   map[config.Protocol]server
	tls       *tls.Config

	mu     sync.Mutex
	tokens map[string]string
}

type server struct {
	upstream  string // host:port, implicit TLS
	localPort int
}

// Account is one mailbox and the OAuth 2.0 client that may read it.
type Account struct {
	Address                                 string
	TokenURL, ClientID, ClientSecret, Scope string
}

// NewTarget reads cfg's server sections (the first of each protocol) and
// its client_credentials accounts. roots verifies the provider.
func NewTarget(cfg *config.Config, roots *x509.CertPool, proxyHost, password string) (*Target, error) {
	t := &Target{ProxyHost: proxyHost, Password: password, servers: map[config.Protocol]server{}, tokens: map[string]string{}}
	if t.ProxyHost == "" {
		t.ProxyHost = "127.0.0.1"
	}
	for _, s := range cfg.Servers {
		if _, seen := t.servers[s.Protocol]; seen {
			continue
		}
		if s.ServerStartTLS {
			return nil, fmt.Errorf("[%s]: the load generator's direct mode speaks implicit TLS only", s.Section)
		}
		t.servers[s.Protocol] = server{upstream: s.UpstreamAddr(), localPort: s.LocalPort}
		if t.tls == nil {
			t.tls = &tls.Config{ServerName: s.ServerAddress, RootCAs: roots, ClientSessionCache: tls.NewLRUClientSessionCache(1024)}
		}
	}
	for _, sec := range cfg.File.Sections {
		// Account sections are the ones named like an address.
		if at := strings.Index(sec.Name, "@"); at <= 0 || at == len(sec.Name)-1 {
			continue
		}
		a, err := cfg.Account(sec.Name)
		if err != nil {
			return nil, err
		}
		if a.Flow() != "client_credentials" {
			return nil, fmt.Errorf("[%s]: the load generator's direct mode needs client_credentials accounts", sec.Name)
		}
		t.Accounts = append(t.Accounts, Account{Address: sec.Name, TokenURL: a.Get("token_url"), ClientID: a.Get("client_id"),
			ClientSecret: a.Get("client_secret"), Scope: a.Get("oauth2_scope")})
	}
	sort.Slice(t.Accounts, func(i, j int) bool { return t.Accounts[i].Address < t.Accounts[j].Address })
	if len(t.Accounts) == 0 {
		return nil, fmt.Errorf("%s has no accounts", cfg.Path)
	}
	return t, nil
}

// Has reports whether the target has a server for proto.
func (t *Target) Has(proto config.Protocol) bool { _, ok := t.servers[proto]; return ok }

// dial connects for mode: plaintext to the proxy, or TLS to the provider.
func (t *Target) dial(ctx context.Context, mode Mode, proto config.Protocol) (net.Conn, error) {
	s, ok := t.servers[proto]
	if !ok {
		return nil, fmt.Errorf("no %s server in the configuration", proto)
	}
	d := &net.Dialer{Timeout: 30 * time.Second}
	if mode == Proxy {
		return d.DialContext(ctx, "tcp", net.JoinHostPort(t.ProxyHost, strconv.Itoa(s.localPort)))
	}
	td := &tls.Dialer{NetDialer: d, Config: t.tls}
	return td.DialContext(ctx, "tcp", s.upstream)
}

// Token returns an access token for a, fetched once per run as an app
// would cache it (client credentials).
func (t *Target) Token(ctx context.Context, a Account) (string, error) {
	t.mu.Lock()
	tok, ok := t.tokens[a.Address]
	t.mu.Unlock()
	if ok {
		return tok, nil
	}
	cc := clientcredentials.Config{ClientID: a.ClientID, ClientSecret: a.ClientSecret, TokenURL: a.TokenURL}
	if a.Scope != "" {
		cc.Scopes = strings.Fields(a.Scope)
	}
	got, err := cc.Token(ctx)
	if err != nil {
		return "", fmt.Errorf("token for %s: %w", a.Address, err)
	}
	t.mu.Lock()
	t.tokens[a.Address] = got.AccessToken
	t.mu.Unlock()
	return got.AccessToken, nil
}
