package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/config"
)

// tokenServer answers client_credentials requests with a delay and counts
// them; fail makes it answer 401 invalid_client.
type tokenServer struct {
	*httptest.Server
	requests atomic.Int32
	delay    time.Duration
	fail     atomic.Bool
	lifetime int
	lastForm atomic.Value
}

func newTokenServer(t *testing.T, delay time.Duration, lifetime int) *tokenServer {
	ts := &tokenServer{delay: delay, lifetime: lifetime}
	ts.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := ts.requests.Add(1)
		r.ParseForm()
		ts.lastForm.Store(r.PostForm)
		select {
		case <-time.After(ts.delay):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if ts.fail.Load() {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x"}`)
			return
		}
		fmt.Fprintf(w, `{"access_token":"tok-%d","token_type":"Bearer","expires_in":"%d"}`, n, ts.lifetime)
	}))
	t.Cleanup(ts.Close)
	return ts
}

func testConfig(t *testing.T, tokenURL, extra string) *config.Config {
	t.Helper()
	return parseConfig(t, fmt.Sprintf("[IMAP-1993]\nserver_address = x\nserver_port = 993\n[a@x]\ntoken_url = %s\noauth2_scope = s1 s2\noauth2_flow = client_credentials\nclient_id = id\nclient_secret = sec\nredirect_uri = http://localhost\n%s", tokenURL, extra))
}

// parseConfig reads a configuration from text, failing the test on error.
func parseConfig(t *testing.T, text string) *config.Config {
	t.Helper()
	f, err := config.Parse(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.FromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestConcurrentLoginsShareOneFetch(t *testing.T) {
	ts := newTokenServer(t, 100*time.Millisecond, 3600)
	p := NewProvider(testConfig(t, ts.URL, ""), Options{})
	defer p.Close()
	var wg sync.WaitGroup
	tokens := make([]string, 50)
	errs := make([]error, 50)
	for i := range tokens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tokens[i], errs[i] = p.authorize(context.Background(), "a@x", "pw", "")
		}()
	}
	wg.Wait()
	for i := range tokens {
		if errs[i] != nil || tokens[i] != "tok-1" {
			t.Fatalf("login %d: %q %v", i, tokens[i], errs[i])
		}
	}
	if n := ts.requests.Load(); n != 1 {
		t.Fatalf("%d token requests for 50 concurrent logins", n)
	}
	form := ts.lastForm.Load().(url.Values)
	if form["grant_type"][0] != "client_credentials" || form["scope"][0] != "s1 s2" || form["client_secret"][0] != "sec" || form["redirect_uri"][0] != "http://localhost" {
		t.Fatalf("request form %v", form)
	}
}

func TestPrefetchAndBackgroundRefresh(t *testing.T) {
	// A 40 s token with a 39 s margin is refreshed after about 1 s.
	ts := newTokenServer(t, 0, 40)
	p := NewProvider(testConfig(t, ts.URL, ""), Options{RefreshMargin: 39 * time.Second})
	defer p.Close()
	p.Start()
	deadline := time.Now().Add(10 * time.Second)
	for ts.requests.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := ts.requests.Load(); n < 2 {
		t.Fatalf("no background refresh: %d requests", n)
	}
	before := ts.requests.Load()
	tok, err := p.authorize(context.Background(), "a@x", "pw", "")
	if err != nil || !strings.HasPrefix(tok, "tok-") {
		t.Fatal(tok, err)
	}
	if ts.requests.Load() != before {
		t.Fatal("a login waited for a fetch although a fresh token was cached")
	}
}

func TestFailureBackoffAndRecovery(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	ts.fail.Store(true)
	logs := &strings.Builder{}
	var mu sync.Mutex
	logger := zerolog.New(zerolog.SyncWriter(writerFunc(func(b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(b)
	})))
	p := NewProvider(testConfig(t, ts.URL, ""), Options{ConfigErrorBackoff: 300 * time.Millisecond, Logger: logger})
	defer p.Close()
	_, err := p.authorize(context.Background(), "a@x", "pw", "")
	var le *LoginError
	// invalid_client is a configuration error: not temporary, and it says
	// which keys to check.
	if !errors.As(err, &le) || le.Temporary || !strings.Contains(le.Message, "HTTP 401: invalid_client: AADSTS7000215") ||
		!strings.Contains(le.Message, "check client_id, client_secret") {
		t.Fatalf("error %v", err)
	}
	if strings.Contains(le.Message, "Trace ID") {
		t.Fatal("multi-line provider text not trimmed")
	}
	// During the backoff a login fails at once, without a new request.
	n := ts.requests.Load()
	if _, err := p.authorize(context.Background(), "a@x", "pw", ""); err == nil || ts.requests.Load() != n {
		t.Fatalf("login during backoff: %v, requests %d -> %d", err, n, ts.requests.Load())
	}
	ts.fail.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if tok, err := p.authorize(context.Background(), "a@x", "pw", ""); err == nil {
			if !strings.HasPrefix(tok, "tok-") {
				t.Fatal(tok)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never recovered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "token request failed") || strings.Contains(logs.String(), "sec\"") {
		t.Fatalf("log: %s", logs.String())
	}
}

func TestRefreshDelay(t *testing.T) {
	for _, c := range []struct{ life, margin, want time.Duration }{
		{time.Hour, 10 * time.Minute, 50 * time.Minute},
		{5 * time.Minute, 10 * time.Minute, 150 * time.Second},
		{time.Second, 10 * time.Minute, time.Second},
		// A short-lived token with a small margin is still refreshed while
		// it has twice what a login needs (a quarter of its lifetime).
		{time.Minute, 5 * time.Second, 30 * time.Second},
		{30 * time.Second, 5 * time.Second, 15 * time.Second},
	} {
		if got := refreshDelay(c.life, c.margin); got != c.want {
			t.Errorf("refreshDelay(%v, %v) = %v, want %v", c.life, c.margin, got, c.want)
		}
		// Whatever the lifetime, the refresh comes before logins stop
		// taking the token.
		if left := c.life - refreshDelay(c.life, c.margin); c.life >= 4*time.Second && left < usableFor(c.life) {
			t.Errorf("%v token refreshed with %v left, logins need %v", c.life, left, usableFor(c.life))
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func TestTokenTimeout(t *testing.T) {
	ts := newTokenServer(t, time.Hour, 3600)
	p := NewProvider(testConfig(t, ts.URL, ""), Options{TokenTimeout: 200 * time.Millisecond})
	defer p.Close()
	start := time.Now()
	_, err := p.authorize(context.Background(), "a@x", "pw", "")
	if err == nil || !strings.Contains(err.Error(), "no answer from the token endpoint in time") {
		t.Fatalf("err %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("token timeout not applied")
	}
	// A login's own deadline also ends the wait.
	ts2 := newTokenServer(t, time.Hour, 3600)
	p2 := NewProvider(testConfig(t, ts2.URL, ""), Options{TokenTimeout: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := p2.authorize(ctx, "a@x", "pw", ""); err == nil || !strings.Contains(err.Error(), "timed out waiting") {
		t.Fatalf("err %v", err)
	}
	ts2.CloseClientConnections()
	p2.Close()
}

func TestPasswordRules(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	p := NewProvider(testConfig(t, ts.URL, "[b@x]\ntoken_url = "+ts.URL+"\nclient_id = c\noauth2_scope = s\noauth2_flow = device\n"), Options{})
	defer p.Close()
	ctx := context.Background()
	if _, err := p.authorize(ctx, "a@x", "", ""); err == nil || !strings.Contains(err.Error(), "no password") {
		t.Fatalf("empty password: %v", err)
	}
	if _, err := p.authorize(ctx, "nobody@x", "pw", ""); !errors.Is(err, ErrBadPassword) || strings.Contains(err.Error(), "config") {
		t.Fatalf("unknown account: %v", err)
	}
	if _, err := p.authorize(ctx, "b@x", "pw", ""); err == nil || !strings.Contains(err.Error(), "needs authorising: run `emailproxy authorise b@x`") {
		t.Fatalf("unsupported flow: %v", err)
	}
	// Before any success, any password may try; the first success wins.
	if _, err := p.authorize(ctx, "a@x", "first", ""); err != nil {
		t.Fatal(err)
	}
	if !p.confirm("a@x", "first") {
		t.Fatal("first password not accepted")
	}
	if p.confirm("a@x", "second") {
		t.Fatal("a second password was accepted")
	}
	_, err := p.authorize(ctx, "a@x", "second", "")
	if !errors.Is(err, ErrBadPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	if strings.Contains(err.Error(), "second") {
		t.Fatal("password in the error text")
	}
	if _, err := p.authorize(ctx, "a@x", "first", ""); err != nil {
		t.Fatal(err)
	}
}

func TestRejectForcesFreshToken(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	p := NewProvider(testConfig(t, ts.URL, ""), Options{})
	defer p.Close()
	ctx := context.Background()
	tok, _ := p.authorize(ctx, "a@x", "pw", "")
	p.reject("a@x", "some-older-token") // not current: ignored
	if again, _ := p.authorize(ctx, "a@x", "pw", ""); again != tok {
		t.Fatal("an unrelated reject dropped the token")
	}
	if n := p.reject("a@x", tok); n != 1 {
		t.Fatalf("first refusal counted as %d", n)
	}
	// The fresh token is fetched at once, not at the next login.
	for deadline := time.Now().Add(5 * time.Second); ts.requests.Load() < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no fetch after the refusal")
		}
	}
	fresh, err := p.authorize(ctx, "a@x", "pw", "")
	if err != nil || fresh == tok {
		t.Fatalf("fresh %q err %v", fresh, err)
	}
	if n := p.reject("a@x", fresh); n != 2 {
		t.Fatalf("second refusal in a row counted as %d", n)
	}
	p.confirm("a@x", "pw") // a success ends the streak
	if n := p.reject("a@x", "not-current"); n != 1 {
		t.Fatalf("after a success: %d", n)
	}
}

func BenchmarkAuthorizeWarm(b *testing.B) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"t","token_type":"Bearer","expires_in":3600}`)
	}))
	defer ts.Close()
	f, _ := config.Parse(strings.NewReader("[a@x]\ntoken_url = " + ts.URL + "\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = id\n"))
	cfg, _ := config.FromFile(f)
	p := NewProvider(cfg, Options{})
	defer p.Close()
	ctx := context.Background()
	p.authorize(ctx, "a@x", "pw", "")
	p.confirm("a@x", "pw")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := p.authorize(ctx, "a@x", "pw", ""); err != nil {
			b.Fatal(err)
		}
	}
}

// Wrong passwords are limited per (account, client address): the
// refusal is immediate and says when to retry, and the lock-out doubles.
func TestWrongPasswordLockout(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	p := NewProvider(testConfig(t, ts.URL, ""), Options{LockoutBase: 200 * time.Millisecond})
	defer p.Close()
	ctx := context.Background()
	if _, err := p.authorize(ctx, "a@x", "right", "10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	p.confirm("a@x", "right")
	for i := 0; i < 5; i++ {
		if _, err := p.authorize(ctx, "a@x", "wrong", "10.0.0.2"); !errors.Is(err, ErrBadPassword) {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	_, err := p.authorize(ctx, "a@x", "right", "10.0.0.2")
	if err == nil || !strings.Contains(err.Error(), "too many wrong passwords") {
		t.Fatalf("locked pair: %v", err)
	}
	time.Sleep(250 * time.Millisecond)
	if _, err := p.authorize(ctx, "a@x", "right", "10.0.0.2"); err != nil {
		t.Fatalf("after the lock-out: %v", err)
	}
	// Five failures are free; then the lock-out starts and doubles.
	l := newLimiter(time.Minute)
	now := time.Now()
	for i := 0; i < 4; i++ {
		l.fail("u", "x", now)
	}
	if d, _ := l.blocked("u", "x", now); d != 0 {
		t.Fatal("blocked before the free failures were used")
	}
	l.fail("u", "x", now)
	if d, _ := l.blocked("u", "x", now); d != time.Minute {
		t.Fatalf("lock-out %v", d)
	}
	l.fail("u", "x", now)
	if d, _ := l.blocked("u", "x", now); d != 2*time.Minute {
		t.Fatalf("doubled lock-out %v", d)
	}
	if d, _ := l.blocked("u", "y", now); d != 0 {
		t.Fatalf("another address is locked out too: %v", d)
	}
	// Failures an hour old are forgiven.
	later := now.Add(2 * time.Hour)
	l.fail("u", "x", later)
	if d, _ := l.blocked("u", "x", later); d != 0 {
		t.Fatalf("old failures still count: %v", d)
	}
}

// A password spray from other addresses never locks the app out, and the
// app's successful logins give the attackers no fresh guesses.
func TestPasswordSprayDoesNotLockOutTheApp(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	p := NewProvider(testConfig(t, ts.URL, ""), Options{LockoutBase: time.Minute})
	defer p.Close()
	ctx := context.Background()
	const app = "10.0.0.1"
	if _, err := p.authorize(ctx, "a@x", "right", app); err != nil {
		t.Fatal(err)
	}
	p.confirm("a@x", "right")
	for round := 0; round < 34; round++ {
		for a := 0; a < 8; a++ {
			p.authorize(ctx, "a@x", fmt.Sprintf("guess-%d", round), fmt.Sprintf("192.0.2.%d", a))
		}
		if _, err := p.authorize(ctx, "a@x", "right", app); err != nil {
			t.Fatalf("the app's login %d failed during the spray: %v", round, err)
		}
	}
	// Each attacker had five guesses in all, whatever the app did.
	for a := 0; a < 8; a++ {
		_, err := p.authorize(ctx, "a@x", "right", fmt.Sprintf("192.0.2.%d", a))
		if err == nil || !strings.Contains(err.Error(), "too many wrong passwords") {
			t.Fatalf("attacker %d is not held back: %v", a, err)
		}
	}
}

// An IPv6 client is counted by its /64 too: rotating through its
// addresses buys no guesses, at one account or across accounts, while an
// app of the same network that logged in is not held back, and another
// network is not touched. An IPv4 address written as IPv6 is the IPv4
// address.
func TestIPv6NetworkCountsAsOneAddress(t *testing.T) {
	now := time.Now()
	l := newLimiter(time.Minute)
	const app = "2001:db8:1:2::100"
	l.succeed("a@x", app, now)
	for i := 1; i <= 5; i++ {
		addr := fmt.Sprintf("2001:db8:1:2:%x::1", i)
		if d, _ := l.blocked("a@x", addr, now); d != 0 {
			t.Fatalf("guess %d held back already", i)
		}
		l.fail("a@x", addr, now)
	}
	if d, wide := l.blocked("a@x", "2001:db8:1:2:ffff::1", now); d != time.Minute || wide {
		t.Fatalf("a sixth address of the network: held back %v (address-wide %v), want the pair's minute", d, wide)
	}
	if d, _ := l.blocked("a@x", "2001:db8:1:3::1", now); d != 0 {
		t.Fatalf("another network is held back: %v", d)
	}
	if d, _ := l.blocked("a@x", app, now); d != 0 {
		t.Fatalf("the network's app that logged in is held back: %v", d)
	}
	// Ten accounts tried in vain from addresses of one network: an
	// eleventh account is held back network-wide.
	for i := 0; i < 10; i++ {
		l.fail(fmt.Sprintf("u%d@x", i), fmt.Sprintf("2001:db8:9:9::%x", i+1), now)
	}
	if d, wide := l.blocked("u99@x", "2001:db8:9:9::abcd", now); d != time.Minute || !wide {
		t.Fatalf("a spray across accounts from one network: held back %v (address-wide %v)", d, wide)
	}
	// ::ffff:192.0.2.7 and 192.0.2.7 are one address, with no network.
	for i := 0; i < 5; i++ {
		l.fail("a@x", "::ffff:192.0.2.7", now)
	}
	if d, _ := l.blocked("a@x", "192.0.2.7", now); d != time.Minute {
		t.Fatalf("IPv4 written as IPv6 counted apart: %v", d)
	}
	if d, _ := l.blocked("a@x", "192.0.2.8", now); d != 0 {
		t.Fatalf("a neighbouring IPv4 address is held back: %v", d)
	}
}

// An unknown account is answered exactly like a wrong password (the hint
// to add a section goes to the log only) and is counted like one; an
// address that tries many accounts is slowed down, but not for the
// accounts it has logged in to.
func TestUnknownAccountsLookLikeWrongPasswords(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	var mu sync.Mutex
	var logs strings.Builder
	p := NewProvider(testConfig(t, ts.URL, ""), Options{LockoutBase: time.Minute, Logger: zerolog.New(zerolog.SyncWriter(writerFunc(func(b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(b)
	})))})
	defer p.Close()
	ctx := context.Background()
	if _, err := p.authorize(ctx, "a@x", "right", "10.0.0.9"); err != nil {
		t.Fatal(err)
	}
	p.confirm("a@x", "right")
	_, wrong := p.authorize(ctx, "a@x", "wrong", "10.0.0.8")
	_, unknown := p.authorize(ctx, "nobody@x", "wrong", "10.0.0.8")
	if wrong == nil || unknown == nil {
		t.Fatal("accepted")
	}
	if w, u := strings.ReplaceAll(wrong.Error(), "a@x", "NAME"), strings.ReplaceAll(unknown.Error(), "nobody@x", "NAME"); w != u {
		t.Fatalf("unknown account answered %q, wrong password %q", u, w)
	}
	if strings.Contains(unknown.Error(), "section") || !errors.Is(unknown, ErrBadPassword) {
		t.Fatalf("the reply hints at the configuration: %q", unknown)
	}
	mu.Lock()
	logged := logs.String()
	mu.Unlock()
	if !strings.Contains(logged, "add a [nobody@x] section") {
		t.Fatalf("the log lacks the operator's hint")
	}
	for i := 0; i < 4; i++ {
		p.authorize(ctx, "nobody@x", "wrong", "10.0.0.8")
	}
	if _, err := p.authorize(ctx, "nobody@x", "wrong", "10.0.0.8"); err == nil || !strings.Contains(err.Error(), "too many") {
		t.Fatalf("unknown account not counted: %v", err)
	}
	// 10.0.0.9 tries ten other accounts in vain: the eleventh is held
	// back, a@x (where it logged in) is not.
	for i := 0; i < 10; i++ {
		p.authorize(ctx, fmt.Sprintf("u%d@x", i), "pw", "10.0.0.9")
	}
	if _, err := p.authorize(ctx, "u99@x", "pw", "10.0.0.9"); err == nil || !strings.Contains(err.Error(), "too many failed logins from this address") {
		t.Fatalf("a spray across accounts is not slowed down: %v", err)
	}
	if _, err := p.authorize(ctx, "a@x", "right", "10.0.0.9"); err != nil {
		t.Fatalf("the address's own account: %v", err)
	}
}

// A reload keeps the tokens of unchanged accounts, drops those of changed
// ones (fetched again), forgets removed ones and fetches added ones.
func TestReload(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	section := func(name, scope string) string {
		return fmt.Sprintf("[%s]\ntoken_url = %s\noauth2_scope = %s\noauth2_flow = client_credentials\nclient_id = id\nclient_secret = sec\n", name, ts.URL, scope)
	}
	p := NewProvider(parseConfig(t, section("keep@x", "s")+section("change@x", "s")+section("drop@x", "s")), Options{})
	defer p.Close()
	ctx := context.Background()
	kept, _ := p.authorize(ctx, "keep@x", "pw", "")
	changed, _ := p.authorize(ctx, "change@x", "pw", "")
	if _, err := p.authorize(ctx, "drop@x", "pw", ""); err != nil {
		t.Fatal(err)
	}
	before := ts.requests.Load()
	p.Reload(parseConfig(t, section("keep@x", "s")+section("change@x", "s2")+section("new@x", "s")))
	for deadline := time.Now().Add(5 * time.Second); ts.requests.Load() < before+1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the added account was not fetched at the reload")
		}
	}
	if tok, err := p.authorize(ctx, "keep@x", "pw", ""); err != nil || tok != kept {
		t.Fatalf("unchanged account: %q %v (had %q)", tok, err, kept)
	}
	if tok, err := p.authorize(ctx, "change@x", "pw", ""); err != nil || tok == changed {
		t.Fatalf("changed account kept its token: %q %v", tok, err)
	}
	if _, err := p.authorize(ctx, "drop@x", "pw", ""); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("removed account: %v", err)
	}
	if _, err := p.authorize(ctx, "new@x", "pw", ""); err != nil {
		t.Fatalf("added account: %v", err)
	}
}

// What the guess limiter adds to a login (its check and its success), for
// an IPv4 client and for an IPv6 one, counted by its /64 too.
func BenchmarkLimiterLogin(b *testing.B) {
	for _, addr := range []string{"192.0.2.10", "2001:db8:1:2::10"} {
		b.Run(addr, func(b *testing.B) {
			l := newLimiter(time.Second)
			now := time.Now()
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				l.blocked("a@x", addr, now)
				l.succeed("a@x", addr, now)
			}
		})
	}
}
