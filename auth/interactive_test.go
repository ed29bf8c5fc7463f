package auth

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/bench/mock"
)

func startAuthority(t *testing.T) *mock.Upstream {
	t.Helper()
	up, err := mock.Start(mock.Options{ClientID: "app-id", ClientSecret: "app-secret", Scope: "s"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	return up
}

// authoriseAsync runs Authorise with piped terminal input and output.
type session struct {
	in    *io.PipeWriter
	out   *bufio.Reader
	done  chan error
	drain sync.Once
}

// discardRest stops reading the prompt's output (so it never blocks).
func (s *session) discardRest() {
	s.drain.Do(func() { go io.Copy(io.Discard, s.out) })
}

func authoriseAsync(p *Provider, user, pass string, local bool) *session {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &session{in: inW, out: bufio.NewReader(outR), done: make(chan error, 1)}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := p.Authorise(ctx, user, pass, Prompt{In: bufio.NewReader(inR), Out: outW, LocalServer: local})
		outW.Close()
		s.done <- err
	}()
	return s
}

// lineMatching reads printed lines until one matches re.
func (s *session) lineMatching(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	for {
		l, err := s.out.ReadString('\n')
		if m := re.FindStringSubmatch(l); m != nil {
			return m
		}
		if err != nil {
			t.Fatalf("no line matching %v", re)
		}
	}
}

func (s *session) finish(t *testing.T) {
	t.Helper()
	s.discardRest()
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("authorisation did not finish")
	}
}

var urlLine = regexp.MustCompile(`^(http\S+)`)

func interactiveConfig(t *testing.T, up *mock.Upstream, extra string) string {
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	os.WriteFile(path, []byte(fmt.Sprintf("[u@x]\npermission_url = %s\ntoken_url = %s\noauth2_scope = s offline_access\nclient_id = app-id\nclient_secret = app-secret\n%s\n",
		up.AuthorizeURL, up.TokenURL, extra)), 0o600)
	return path
}

// The test plays the browser: it follows the printed URL to the mock
// authorisation server and pastes the address it is redirected to.
func TestAuthoriseAuthCodePasted(t *testing.T) {
	t.Parallel()
	up := startAuthority(t)
	path := interactiveConfig(t, up, "redirect_uri = http://localhost\nuse_pkce = True\n[emailproxy]\ndelete_account_token_on_password_error = False")
	p := newFileProvider(t, path, Options{})
	s := authoriseAsync(p, "u@x", "app-pass", false)
	authURL := s.lineMatching(t, urlLine)[1]
	s.discardRest()
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	redirected := resp.Header.Get("Location")
	if !strings.HasPrefix(redirected, "http://localhost?") && !strings.HasPrefix(redirected, "http://localhost/?") {
		t.Fatalf("redirect %q", redirected)
	}
	fmt.Fprintln(s.in, redirected)
	s.finish(t)
	q := up.Authority.LastAuthorize()
	if q.Get("code_challenge") == "" || q.Get("code_challenge_method") != "S256" || q.Get("login_hint") != "u@x" || q.Get("access_type") != "offline" {
		t.Fatalf("authorisation request %v", q)
	}
	p.Close()

	// A new process uses the stored tokens: the right password gets the
	// token without a token request, and a stranger's password is refused.
	before := up.Authority.Requests()
	p2 := newFileProvider(t, path, Options{})
	defer p2.Close()
	if _, err := p2.authorize(context.Background(), "u@x", "intruder", ""); err == nil {
		t.Fatal("another password was accepted")
	}
	tok, err := p2.authorize(context.Background(), "u@x", "app-pass", "")
	if err != nil || !up.Authority.Valid(tok) {
		t.Fatalf("%q %v", tok, err)
	}
	if up.Authority.Requests() != before {
		t.Fatal("a token request was made although tokens were cached")
	}
	// When the upstream refuses the token, the refresh token gets a new
	// one (and rotates).
	p2.reject("u@x", tok)
	tok2, err := p2.authorize(context.Background(), "u@x", "app-pass", "")
	if err != nil || tok2 == tok || !up.Authority.Valid(tok2) {
		t.Fatalf("refresh: %q %v", tok2, err)
	}
}

func TestAuthoriseAuthCodeLocalServer(t *testing.T) {
	t.Parallel()
	up := startAuthority(t)
	port := freeTCPPort(t)
	path := interactiveConfig(t, up, fmt.Sprintf("redirect_uri = http://127.0.0.1:%d/callback", port))
	p := newFileProvider(t, path, Options{})
	defer p.Close()
	s := authoriseAsync(p, "u@x", "pw", true)
	authURL := s.lineMatching(t, urlLine)[1]
	s.lineMatching(t, regexp.MustCompile(`Waiting for the redirect`))
	resp, err := http.Get(authURL) // follows the redirect to the proxy's receiver
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "Authentication completed") {
		t.Fatalf("receiver answered %q", body)
	}
	s.finish(t)
	if q := up.Authority.LastAuthorize(); q.Get("code_challenge") != "" {
		t.Fatal("PKCE sent although use_pkce is not set")
	}
}

func TestAuthoriseDeviceFlow(t *testing.T) {
	t.Parallel()
	up := startAuthority(t)
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	os.WriteFile(path, []byte(fmt.Sprintf("[d@x]\npermission_url = %s\noauth2_flow = device\ntoken_url = %s\noauth2_scope = s\nclient_id = app-id\n",
		up.DeviceCodeURL, up.TokenURL)), 0o600)
	p := newFileProvider(t, path, Options{})
	defer p.Close()
	s := authoriseAsync(p, "d@x", "pw", false)
	m := s.lineMatching(t, regexp.MustCompile(`visit (\S+) and enter the code (\S+)`))
	if m[1] != "https://mock.example/device" || m[2] != "MOCK-CODE" {
		t.Fatalf("device prompt %q", m)
	}
	s.finish(t) // authorization_pending, slow_down (+5 s), then the token
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), "refresh_token = gAAAAA") {
		t.Fatalf("tokens not stored:\n%s", b)
	}
}

func TestCodeFromRedirect(t *testing.T) {
	for _, c := range []struct{ got, err string }{
		{"http://localhost/?code=abc&state=S", ""},
		{"https://localhost:80?code=abc&state=S", ""},
		{"http://localhost:8080/?code=abc&state=S", "does not match"},
		{"http://localhost/?code=abc&state=X", "state does not match"},
		{"http://localhost/?error=access_denied&error_description=no", "refused: access_denied; no"},
		{"http://localhost/?state=S", "no authorisation code"},
		{"not a url", "is not the address"},
	} {
		code, err := codeFromRedirect(c.got, "http://localhost", "S")
		if c.err == "" && (err != nil || code != "abc") {
			t.Errorf("%q: %q %v", c.got, code, err)
		}
		if c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%q: %v, want %q", c.got, err, c.err)
		}
	}
}

func freeTCPPort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// --local-server-auth in a running proxy: a login to an unauthorised
// account starts the authorisation in the background and is told to come
// back; once the browser has been through, the next login works.
func TestLoginStartsInteractiveAuthorisation(t *testing.T) {
	t.Parallel()
	up := startAuthority(t)
	port := freeTCPPort(t)
	path := interactiveConfig(t, up, fmt.Sprintf("redirect_uri = http://127.0.0.1:%d/cb", port))
	outR, outW := io.Pipe()
	p := newFileProvider(t, path, Options{Interactive: &Prompt{Out: outW, LocalServer: true}})
	defer p.Close()
	defer outW.Close()
	_, err := p.authorize(context.Background(), "u@x", "pw", "")
	if err == nil || !strings.Contains(err.Error(), "is being authorised") {
		t.Fatalf("first login: %v", err)
	}
	// A second login meanwhile does not start a second authorisation.
	if _, err := p.authorize(context.Background(), "u@x", "pw", ""); err == nil {
		t.Fatal("second login succeeded before the authorisation")
	}
	s := &session{out: bufio.NewReader(outR)}
	authURL := s.lineMatching(t, urlLine)[1]
	s.lineMatching(t, regexp.MustCompile(`Waiting for the redirect`))
	go io.Copy(io.Discard, s.out)
	resp, err := http.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		tok, err := p.authorize(context.Background(), "u@x", "pw", "")
		if err == nil {
			if !up.Authority.Valid(tok) {
				t.Fatal("invalid token")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never authorised: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
