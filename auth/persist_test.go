package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

func loadCfg(t *testing.T, path string) *config.Config {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// testIterations keeps new keys cheap where the iteration count is not
// what a test is about (PBKDF2 at 1.2M rounds takes seconds under -race).
const testIterations = 2000

func newFileProvider(t *testing.T, path string, opts Options) *Provider {
	if opts.Iterations == 0 {
		opts.Iterations = testIterations
	}
	opts.Store = &FileStore{Path: path}
	opts.StoreIsConfig = true
	return NewProvider(loadCfg(t, path), opts)
}

// Tokens written by one process are used by the next without a call to the
// token endpoint; comments and unknown keys survive the saves.
func TestRestartUsesCachedToken(t *testing.T) {
	t.Parallel()
	ts := newTokenServer(t, 0, 3600)
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	src := "# my notes\n[IMAP-1993]\nserver_address = x\nserver_port = 993\n\n[a@x]\n; the app's account\ntoken_url = " + ts.URL +
		"\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = id\nclient_secret = sec\nmy_own_key = 42\n"
	os.WriteFile(path, []byte(src), 0o600)

	p1 := newFileProvider(t, path, Options{})
	p1.Start()
	tok, err := p1.authorize(context.Background(), "a@x", "pw", "")
	if err != nil {
		t.Fatal(err)
	}
	if !p1.confirm("a@x", "pw") {
		t.Fatal("confirm")
	}
	p1.Close() // waits for the save
	saved, _ := os.ReadFile(path)
	for _, want := range []string{"# my notes", "; the app's account", "my_own_key = 42", "token_salt = ", fmt.Sprintf("token_iterations = %d", testIterations), "access_token = gAAAAA", "access_token_expiry = "} {
		if !strings.Contains(string(saved), want) {
			t.Fatalf("saved file lacks %q:\n%s", want, saved)
		}
	}
	if strings.Contains(string(saved), tok) {
		t.Fatal("token saved in plaintext")
	}
	requests := ts.requests.Load()

	p2 := newFileProvider(t, path, Options{})
	defer p2.Close()
	p2.Start()
	if _, err := p2.authorize(context.Background(), "a@x", "other", ""); !errors.Is(err, ErrBadPassword) {
		t.Fatalf("wrong password after restart: %v", err)
	}
	got, err := p2.authorize(context.Background(), "a@x", "pw", "")
	if err != nil || got != tok {
		t.Fatalf("after restart: %q %v (want the cached %q)", got, err, tok)
	}
	if n := ts.requests.Load(); n != requests {
		t.Fatalf("the restarted proxy called the token endpoint %d times", n-requests)
	}
	// A wrong password never deletes a client_credentials account's tokens.
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "access_token = gAAAAA") {
		t.Fatal("tokens deleted")
	}
}

// Tokens emailproxy.py cached (the vectors) are used as they are: the
// access token decrypts with the password, an older iteration count is
// upgraded in the file, and a wrong password deletes the tokens of an
// interactive account when delete_account_token_on_password_error is on.
func TestProviderReadsReferenceCache(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "emailproxy.config")
	vec, _ := os.ReadFile("testdata/token-cache-vectors.config")
	os.WriteFile(path, append(vec, "\n[emailproxy]\ndelete_account_token_on_password_error = True\n"...), 0o600)
	p := newFileProvider(t, path, Options{Iterations: CurrentIterations})
	ctx := context.Background()
	tok, err := p.authorize(ctx, "current@example.com", "app-local-pass-1", "")
	if err != nil || tok != "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.current-access-token.x" {
		t.Fatalf("current: %q %v", tok, err)
	}
	tok, err = p.authorize(ctx, "legacy870k@example.com", `p@ss w0rd "quoted" \ back`, "")
	if err != nil || tok != "legacy-870k-access-token" {
		t.Fatalf("870k: %q %v", tok, err)
	}
	tok, err = p.authorize(ctx, "legacy100k@example.com", "h\u00e9llo-\u00fcn\u00efcode-\u5bc6\u7801", "")
	if err != nil || tok != "legacy-100k-access-token" {
		t.Fatalf("100k: %q %v", tok, err)
	}
	// Once this process knows the password, a wrong one is refused and
	// deletes nothing (no denial of service by a stranger).
	if _, err := p.authorize(ctx, "current@example.com", "nope", ""); !errors.Is(err, ErrBadPassword) {
		t.Fatalf("a known password mismatch must be refused, got %v", err)
	}
	p.Close()

	f, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	get := func(sec, key string) string { v, _ := f.File.Section(sec).Get(key); return v }
	for _, sec := range []string{"legacy870k@example.com", "legacy100k@example.com"} {
		if get(sec, "token_iterations") != "1200000" {
			t.Fatalf("%s not re-encrypted: token_iterations %q", sec, get(sec, "token_iterations"))
		}
	}
	// The re-encrypted value decrypts with the current key only.
	salt, _ := base64.StdEncoding.DecodeString(get("legacy870k@example.com", "token_salt"))
	k, _ := deriveKey(`p@ss w0rd "quoted" \ back`, salt, CurrentIterations)
	if v, err := k.decrypt(get("legacy870k@example.com", "refresh_token")); err != nil || string(v) != "legacy-870k-refresh-token" {
		t.Fatalf("re-encrypted refresh token: %q %v", v, err)
	}
	if get("current@example.com", "access_token") == "" {
		t.Fatal("the verified account lost its tokens")
	}

	// A fresh process, wrong password first on an interactive account.
	p2 := newFileProvider(t, path, Options{})
	if _, err := p2.authorize(ctx, "current@example.com", "wrong", ""); err == nil || errors.Is(err, ErrBadPassword) {
		t.Fatalf("want the tokens deleted and a clear error, got %v", err)
	}
	p2.Close()
	f, _ = config.Load(path)
	if v, _ := f.File.Section("current@example.com").Get("access_token"); v != "" {
		t.Fatal("tokens not deleted after a wrong password")
	}
	if v, _ := f.File.Section("current@example.com").Get("client_id"); v != "vector-client" {
		t.Fatal("other keys touched")
	}
}

// An expired access token with a cached refresh token is refreshed
// (grant_type=refresh_token, no scope), and a rotated refresh token is
// stored encrypted.
func TestRefreshWithCachedRefreshToken(t *testing.T) {
	t.Parallel()
	var got atomic.Value
	var n atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		got.Store(r.PostForm)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"fresh-%d","refresh_token":"rotated-%d","expires_in":3600}`, n.Add(1), n.Load())
	}))
	defer ts.Close()
	salt := []byte("0123456789abcdef")
	k, _ := deriveKey("pw", salt, 1000)
	ring := keyring{k}
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	os.WriteFile(path, []byte(fmt.Sprintf("[r@x]\ntoken_url = %s\noauth2_scope = s offline_access\npermission_url = https://p\nredirect_uri = http://localhost\nclient_id = cid\n"+
		"token_salt = %s\ntoken_iterations = 1000\naccess_token = %s\naccess_token_expiry = %d\nrefresh_token = %s\n",
		ts.URL, base64.StdEncoding.EncodeToString(salt), ring.encrypt([]byte("old")), time.Now().Add(-time.Hour).Unix(), ring.encrypt([]byte("refresh-1")))), 0o600)
	p := newFileProvider(t, path, Options{})
	tok, err := p.authorize(context.Background(), "r@x", "pw", "")
	if err != nil || tok != "fresh-1" {
		t.Fatalf("%q %v", tok, err)
	}
	form := got.Load().(url.Values)
	if form["grant_type"][0] != "refresh_token" || form["refresh_token"][0] != "refresh-1" || form["client_id"][0] != "cid" || form["scope"] != nil {
		t.Fatalf("refresh request %v", form)
	}
	p.Close()
	f, _ := config.Load(path)
	sec := f.File.Section("r@x")
	rt, _ := sec.Get("refresh_token")
	iters, _ := sec.Get("token_iterations")
	saltNow, _ := sec.Get("token_salt")
	raw, _ := base64.StdEncoding.DecodeString(saltNow)
	count, _ := strconv.Atoi(iters)
	k2, _ := deriveKey("pw", raw, count)
	if v, err := k2.decrypt(rt); err != nil || string(v) != "rotated-1" {
		t.Fatalf("rotated refresh token: %q %v (iterations %s)", v, err, iters)
	}
}

// encrypt_client_secret_on_first_use: after the first login the secret is
// stored encrypted with the password and the plaintext is removed; the
// next process needs the password to use it.
func TestEncryptClientSecretOnFirstUse(t *testing.T) {
	t.Parallel()
	ts := newTokenServer(t, 0, 3600)
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	os.WriteFile(path, []byte("[a@x]\ntoken_url = "+ts.URL+"\noauth2_scope = s1 s2\noauth2_flow = client_credentials\nclient_id = id\nclient_secret = sec\n"+
		"redirect_uri = http://localhost\n[emailproxy]\nencrypt_client_secret_on_first_use = True\n"), 0o600)
	p := newFileProvider(t, path, Options{})
	if _, err := p.authorize(context.Background(), "a@x", "pw", ""); err != nil {
		t.Fatal(err)
	}
	p.confirm("a@x", "pw")
	p.Close()
	b, _ := os.ReadFile(path)
	if strings.Contains(string(b), "client_secret = sec") || !strings.Contains(string(b), "client_secret_encrypted = gAAAAA") {
		t.Fatalf("secret not encrypted in place:\n%s", b)
	}
	// Restart with an expired token: the secret is unlocked by the password.
	os.WriteFile(path, regexp.MustCompile(`access_token_expiry = \d+`).ReplaceAll(b, []byte("access_token_expiry = 1")), 0o600)
	p2 := newFileProvider(t, path, Options{})
	defer p2.Close()
	p2.Start() // cannot fetch yet: the secret is encrypted
	before := ts.requests.Load()
	tok, err := p2.authorize(context.Background(), "a@x", "pw", "")
	if err != nil || tok == "" {
		t.Fatalf("after restart: %v", err)
	}
	form := ts.lastForm.Load().(url.Values)
	if ts.requests.Load() != before+1 || form.Get("client_secret") != "sec" {
		t.Fatalf("token request with the decrypted secret: %v", form)
	}
}

// enrolled_accounts_only: no first-password-wins; after `authorise` the
// enrolled password works and only it.
func TestEnrolledAccountsOnly(t *testing.T) {
	t.Parallel()
	ts := newTokenServer(t, 0, 3600)
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	os.WriteFile(path, []byte("[a@x]\ntoken_url = "+ts.URL+"\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = id\nclient_secret = sec\n"+
		"[emailproxy]\nenrolled_accounts_only = True\n"), 0o600)
	p := newFileProvider(t, path, Options{})
	if _, err := p.authorize(context.Background(), "a@x", "first", ""); err == nil || !strings.Contains(err.Error(), "not enrolled") {
		t.Fatalf("unenrolled account: %v", err)
	}
	if err := p.Authorise(context.Background(), "a@x", "enrolled", Prompt{Out: io.Discard}); err != nil {
		t.Fatal(err)
	}
	p.Close()
	p2 := newFileProvider(t, path, Options{})
	defer p2.Close()
	if _, err := p2.authorize(context.Background(), "a@x", "first", ""); !errors.Is(err, ErrBadPassword) {
		t.Fatalf("other password: %v", err)
	}
	if _, err := p2.authorize(context.Background(), "a@x", "enrolled", ""); err != nil {
		t.Fatal(err)
	}
}

// A refresh answered 400 is retried once; a second 400 drops the refresh
// token (and the account then needs authorising); a first 400 followed by
// success keeps everything.
func TestRefresh400Handling(t *testing.T) {
	t.Parallel()
	var fails atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if fails.Add(-1) >= 0 {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error":"invalid_grant","error_description":"AADSTS70043: sign-in frequency"}`)
			return
		}
		fmt.Fprint(w, `{"access_token":"fresh","expires_in":3600}`)
	}))
	defer ts.Close()
	for _, c := range []struct {
		fails int32
		ok    bool
	}{{1, true}, {2, false}} {
		salt := []byte("0123456789abcdef")
		k, _ := deriveKey("pw", salt, 1000)
		path := filepath.Join(t.TempDir(), "emailproxy.config")
		os.WriteFile(path, []byte(fmt.Sprintf("[r@x]\ntoken_url = %s\noauth2_scope = s\npermission_url = https://p\nredirect_uri = http://localhost\nclient_id = cid\n"+
			"token_salt = %s\ntoken_iterations = 1000\nrefresh_token = %s\n", ts.URL, base64.StdEncoding.EncodeToString(salt), keyring{k}.encrypt([]byte("rt")))), 0o600)
		fails.Store(c.fails)
		p := newFileProvider(t, path, Options{})
		tok, err := p.authorize(context.Background(), "r@x", "pw", "")
		p.Close()
		b, _ := os.ReadFile(path)
		if c.ok && (err != nil || tok != "fresh" || !strings.Contains(string(b), "refresh_token = ")) {
			t.Fatalf("one 400: %q %v\n%s", tok, err, b)
		}
		if !c.ok && (err == nil || !strings.Contains(err.Error(), "needs authorising") || strings.Contains(string(b), "refresh_token")) {
			t.Fatalf("two 400s: %v\n%s", err, b)
		}
	}
}

// Catch-all accounts: [@domain] serves any mailbox of the domain; the first
// login creates the mailbox's own section with its cached tokens.
func TestCatchAllAccountPersists(t *testing.T) {
	t.Parallel()
	ts := newTokenServer(t, 0, 3600)
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	os.WriteFile(path, []byte("[@x]\ntoken_url = "+ts.URL+"\noauth2_scope = s1 s2\noauth2_flow = client_credentials\nclient_id = id\nclient_secret = sec\n"+
		"redirect_uri = http://localhost\n[emailproxy]\nallow_catch_all_accounts = True\n"), 0o600)
	p := newFileProvider(t, path, Options{})
	if _, err := p.authorize(context.Background(), "anyone@x", "pw", ""); err != nil {
		t.Fatal(err)
	}
	p.confirm("anyone@x", "pw")
	if _, err := p.authorize(context.Background(), "someone@y", "pw", ""); err == nil {
		t.Fatal("another domain matched")
	}
	p.Close()
	f := loadCfg(t, path)
	if v, _ := f.File.Section("anyone@x").Get("access_token"); !strings.HasPrefix(v, "gAAAAA") {
		t.Fatalf("no [anyone@x] section with tokens")
	}
	if v, _ := f.File.Section("@x").Get("access_token"); v != "" {
		t.Fatal("tokens written to the catch-all section")
	}
}

// A token fetched at start, before any login gave the key, is saved as
// soon as the first login unlocks the cache: a restart then finds it, not
// the expired one, even if the identity provider is down by then.
func TestTokenFetchedBeforeUnlockIsSaved(t *testing.T) {
	t.Parallel()
	ts := newTokenServer(t, 0, 3600)
	salt := []byte("0123456789abcdef")
	k, _ := deriveKey("pw", salt, testIterations)
	ring := keyring{k}
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	os.WriteFile(path, []byte(fmt.Sprintf("[a@x]\ntoken_url = %s\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = id\nclient_secret = sec\n"+
		"token_salt = %s\ntoken_iterations = %d\naccess_token = %s\naccess_token_expiry = %d\n",
		ts.URL, base64.StdEncoding.EncodeToString(salt), testIterations, ring.encrypt([]byte("expired")), time.Now().Add(-time.Hour).Unix())), 0o600)
	p := newFileProvider(t, path, Options{})
	p.Start() // fetches a token; the key is not known yet
	a, _ := p.account("a@x")
	held := func() bool { a.mu.Lock(); defer a.mu.Unlock(); return a.tok != nil }
	for deadline := time.Now().Add(5 * time.Second); !held(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no token fetched at start")
		}
	}
	tok, err := p.authorize(context.Background(), "a@x", "pw", "")
	if err != nil || tok == "expired" {
		t.Fatalf("%q %v", tok, err)
	}
	p.Close()

	ts.Close() // the identity provider is gone
	p2 := newFileProvider(t, path, Options{})
	defer p2.Close()
	again, err := p2.authorize(context.Background(), "a@x", "pw", "")
	if err != nil || again != tok {
		t.Fatalf("after a restart: %q %v, want the token fetched before the first login", again, err)
	}
}

// No more key derivations run at once than MaxDerivations, and a login
// waiting for one gives up with its context.
func TestKeyDerivationsAreCapped(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	p := NewProvider(testConfig(t, ts.URL, ""), Options{MaxDerivations: 2})
	defer p.Close()
	var running, most atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.derive(context.Background(), func() error {
				n := running.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(10 * time.Millisecond)
				running.Add(-1)
				return nil
			})
		}()
	}
	wg.Wait()
	if most.Load() != 2 {
		t.Fatalf("%d derivations ran at once, want 2", most.Load())
	}
	hold := make(chan struct{})
	for range 2 {
		go p.derive(context.Background(), func() error { <-hold; return nil })
	}
	defer close(hold)
	for len(p.kdf) < 2 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.derive(ctx, func() error { t.Error("ran without a free slot"); return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting derivation: %v", err)
	}
}
