package auth

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/emailproxy/emailproxy/config"
)

// Prompt is where an interactive authorisation talks to its user.
type Prompt struct {
	In  *bufio.Reader // the redirected URL is read from here (--external-auth style)
	Out io.Writer     // the URL, device code and instructions go here
	// LocalServer receives the redirect with a one-shot HTTP listener on
	// redirect_listen_address or redirect_uri (--local-server-auth).
	LocalServer bool
}

// Authorise runs the account's flow now, before any client connects, and
// stores the tokens encrypted with password: afterwards the account
// accepts that password only, and the proxy refreshes the tokens itself.
func (p *Provider) Authorise(ctx context.Context, user, password string, pr Prompt) error {
	if password == "" {
		return errors.New("the password may not be empty")
	}
	a, lerr := p.account(user)
	if lerr != nil {
		return lerr
	}
	var tok *oauth2.Token
	var err error
	switch a.flow {
	case "authorization_code":
		tok, err = p.authCodeFlow(ctx, a, pr)
	case "device":
		tok, err = p.deviceFlow(ctx, a, pr)
	default:
		a.mu.Lock()
		if p.config().Global.UseLoginPasswordAsClientCredentialsSecret && a.cfg.Get("client_secret") == "" {
			a.secret = password
		}
		a.mu.Unlock()
		tok, err = p.fetch(ctx, a)
	}
	if err != nil {
		return fmt.Errorf("authorising %s: %s", user, describeTokenError(err))
	}
	if tok.Expiry.IsZero() {
		tok.Expiry = time.Now().Add(defaultTokenLifetime)
	}
	if tok.RefreshToken == "" && !a.unattended() {
		fmt.Fprintf(pr.Out, "Warning: no refresh token was issued for %s; does oauth2_scope allow offline use (offline_access)?\n", user)
	}
	p.enroll(a, password, tok)
	return nil
}

// enroll replaces the account's cached tokens with tok, encrypted with a
// new key from password.
func (p *Provider) enroll(a *account, password string, tok *oauth2.Token) {
	salt := newSalt()
	raw, _ := base64.StdEncoding.DecodeString(salt)
	var k *fernetKey
	p.derive(context.Background(), func() (err error) { k, err = deriveKey(password, raw, p.opts.Iterations); return })
	a.mu.Lock()
	a.ring = keyring{k}
	a.password = p.verify.sum(a.name, password)
	a.tok = tok
	if tok.RefreshToken != "" {
		a.refresh = tok.RefreshToken
	}
	a.cached["token_salt"] = salt
	a.cached["token_iterations"] = strconv.Itoa(p.opts.Iterations)
	a.mu.Unlock()
	p.persist(a, true)
}

func (p *Provider) oauthConfig(a *account) *oauth2.Config {
	secret := a.cfg.Get("client_secret")
	if secret == "" {
		secret = a.secret
	}
	return &oauth2.Config{
		ClientID: a.cfg.Get("client_id"), ClientSecret: secret,
		Endpoint: oauth2.Endpoint{AuthURL: a.cfg.Get("permission_url"), DeviceAuthURL: a.cfg.Get("permission_url"),
			TokenURL: a.cfg.Get("token_url"), AuthStyle: oauth2.AuthStyleInParams},
		RedirectURL: a.cfg.Get("redirect_uri"),
		Scopes:      strings.Fields(a.cfg.Get("oauth2_scope")),
	}
}

// usePKCE reads use_pkce as a boolean. emailproxy.py turns PKCE on for any
// non-empty value, "False" included; here "False" means off, and a value
// that is not a boolean means on (as before).
func usePKCE(a *config.Account) bool {
	v := strings.TrimSpace(a.Get("use_pkce"))
	if v == "" {
		return false
	}
	b, err := config.ParseBool(v)
	return err != nil || b
}

func (p *Provider) authCodeFlow(ctx context.Context, a *account, pr Prompt) (*oauth2.Token, error) {
	conf := p.oauthConfig(a)
	if conf.RedirectURL == "" {
		return nil, fmt.Errorf("account %s: set redirect_uri (for example http://localhost:8080) for the authorization_code flow", a.name)
	}
	state := randomState()
	opts := []oauth2.AuthCodeOption{oauth2.AccessTypeOffline, oauth2.SetAuthURLParam("login_hint", a.name)}
	var verifier string
	if usePKCE(a.cfg) {
		verifier = oauth2.GenerateVerifier()
		opts = append(opts, oauth2.S256ChallengeOption(verifier))
	}
	authURL := conf.AuthCodeURL(state, opts...)
	fmt.Fprintf(pr.Out, "Please visit the following URL to authorise account %s:\n%s\n", a.name, authURL)
	var redirected string
	var err error
	if pr.LocalServer {
		redirected, err = p.receiveRedirect(ctx, a, pr.Out)
	} else {
		fmt.Fprintf(pr.Out, "Then paste the full address your browser was sent to (it starts with %s):\n", conf.RedirectURL)
		redirected, err = pr.In.ReadString('\n')
		if err != nil && redirected == "" {
			return nil, fmt.Errorf("no redirected URL was entered: %w", err)
		}
	}
	if err != nil {
		return nil, err
	}
	code, err := codeFromRedirect(strings.TrimSpace(redirected), conf.RedirectURL, state)
	if err != nil {
		return nil, err
	}
	ctx = context.WithValue(ctx, oauth2.HTTPClient, p.opts.HTTPClient)
	if verifier != "" {
		return conf.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	}
	return conf.Exchange(ctx, code)
}

// codeFromRedirect checks that the address is the redirect (host, port
// and path; the scheme is ignored, as emailproxy.py does) and carries our
// state, and returns its code.
func codeFromRedirect(got, want, state string) (string, error) {
	g, err := url.Parse(got)
	if err != nil || g.Host == "" {
		return "", fmt.Errorf("%q is not the address the browser was redirected to", got)
	}
	w, _ := url.Parse(want)
	if !strings.EqualFold(hostPort(g), hostPort(w)) || strings.TrimSuffix(g.Path, "/") != strings.TrimSuffix(w.Path, "/") {
		return "", fmt.Errorf("the redirected address does not match redirect_uri %s", want)
	}
	q := g.Query()
	if e := q.Get("error"); e != "" {
		return "", fmt.Errorf("the authorisation server refused: %s; %s", e, q.Get("error_description"))
	}
	if q.Get("state") != state {
		return "", errors.New("the redirected address is for another authorisation request (state does not match)")
	}
	if q.Get("code") == "" {
		return "", errors.New("the redirected address holds no authorisation code")
	}
	return q.Get("code"), nil
}

func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// receiveRedirect serves one request on the redirect address and returns
// the full redirected URL.
func (p *Provider) receiveRedirect(ctx context.Context, a *account, out io.Writer) (string, error) {
	listen := a.cfg.Get("redirect_listen_address")
	if listen == "" {
		listen = a.cfg.Get("redirect_uri")
	}
	lu, err := url.Parse(listen)
	if err != nil {
		return "", fmt.Errorf("redirect_listen_address %q: %w", listen, err)
	}
	ln, err := net.Listen("tcp", hostPort(lu))
	if err != nil {
		return "", fmt.Errorf("cannot listen for the redirect on %s: %w", hostPort(lu), err)
	}
	fmt.Fprintf(out, "Waiting for the redirect on %s ...\n", ln.Addr())
	got := make(chan string, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		base, _ := url.Parse(a.cfg.Get("redirect_uri"))
		full := *base
		full.Path, full.RawQuery = r.URL.Path, r.URL.RawQuery
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, "<html><body><p>Authentication completed. You can close this window.</p></body></html>")
		select {
		case got <- full.String():
		default:
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	select {
	case u := <-got:
		return u, nil
	case <-ctx.Done():
		return "", errors.New("no redirect arrived in time")
	}
}

func (p *Provider) deviceFlow(ctx context.Context, a *account, pr Prompt) (*oauth2.Token, error) {
	conf := p.oauthConfig(a)
	ctx = context.WithValue(ctx, oauth2.HTTPClient, p.opts.HTTPClient)
	var opts []oauth2.AuthCodeOption
	if conf.ClientSecret != "" {
		opts = append(opts, oauth2.SetAuthURLParam("client_secret", conf.ClientSecret))
	}
	da, err := conf.DeviceAuth(ctx, opts...)
	if err != nil {
		return nil, err
	}
	where := da.VerificationURIComplete
	if where == "" {
		where = da.VerificationURI
	}
	fmt.Fprintf(pr.Out, "To authorise account %s, visit %s and enter the code %s\n", a.name, where, da.UserCode)
	return conf.DeviceAccessToken(ctx, da, opts...)
}

func randomState() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
