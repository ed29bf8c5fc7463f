package auth

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/internal/redistest"
	"github.com/emailproxy/emailproxy/telemetry"
)

func startRedis(t *testing.T) string { return redistest.Start(t) }

func startRedisOn(t *testing.T, port int) (string, func()) { return redistest.StartOn(t, port) }

// Tokens cached in Redis are encrypted as in the file, and a new process
// (a restart, or another instance) uses them without a token request.
func TestRedisStore(t *testing.T) {
	url := startRedis(t)
	ts := newTokenServer(t, 0, 3600)
	cfg := testConfig(t, ts.URL, "")
	store, err := NewRedisStore(url)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	p := NewProvider(cfg, Options{Store: store, Iterations: testIterations})
	tok, err := p.authorize(context.Background(), "a@x", "pw", "")
	if err != nil {
		t.Fatal(err)
	}
	p.confirm("a@x", "pw")
	p.Close() // waits for the save
	cached, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	v := cached["a@x"]
	if !strings.HasPrefix(v["access_token"], "gAAAAA") || v["token_salt"] == "" || strings.Contains(fmt.Sprint(cached), tok) {
		t.Fatalf("what Redis holds: %v", cached)
	}
	n := ts.requests.Load()
	p2 := NewProvider(cfg, Options{Store: store, Iterations: testIterations})
	defer p2.Close()
	again, err := p2.authorize(context.Background(), "a@x", "pw", "")
	if err != nil || again != tok || ts.requests.Load() != n {
		t.Fatalf("second instance: %q %v, %d token requests (want the cached token, none)", again, err, ts.requests.Load()-n)
	}
	if _, err := p2.authorize(context.Background(), "a@x", "wrong", ""); err == nil {
		t.Fatal("the second instance took a wrong password")
	}
}

// A Redis that is down costs a login no more than the store's short
// timeout: the provider goes on from memory, and the error names Redis
// without its password.
func TestRedisDown(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	store, err := NewRedisStore(fmt.Sprintf("redis://user:s3cret@127.0.0.1:%d/0", freeTCPPort(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	_, lerr := store.Load()
	if lerr == nil || strings.Contains(lerr.Error(), "s3cret") || !strings.Contains(lerr.Error(), "Redis at redis://user:xxxxx@127.0.0.1") {
		t.Fatalf("load from a Redis that is down: %v", lerr)
	}
	p := NewProvider(testConfig(t, ts.URL, ""), Options{Store: store, Iterations: testIterations})
	defer p.Close()
	if _, err := p.authorize(context.Background(), "a@x", "pw", ""); err != nil {
		t.Fatalf("login without Redis: %v", err)
	}
	p.confirm("a@x", "pw")
}

// sharedPair is two proxies (each with its own Redis connection, as two
// processes would have) that have both unlocked account a@x, whose token
// tok-1 one of them fetched and saved.
func sharedPair(t *testing.T, ts *tokenServer, opts Options) (p1, p2 *Provider, stores []*RedisStore) {
	t.Helper()
	url := startRedis(t)
	cfg := testConfig(t, ts.URL, "")
	open := func() *RedisStore {
		s, err := NewRedisStore(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		stores = append(stores, s)
		return s
	}
	opts.Iterations = testIterations
	first := open()
	opts.Store = first
	p0 := NewProvider(cfg, opts)
	if _, err := p0.authorize(context.Background(), "a@x", "pw", ""); err != nil {
		t.Fatal(err)
	}
	p0.confirm("a@x", "pw")
	p0.Close()
	for _, p := range []**Provider{&p1, &p2} {
		opts.Store = open()
		*p = NewProvider(cfg, opts)
		t.Cleanup((*p).Close)
		if tok, err := (*p).authorize(context.Background(), "a@x", "pw", ""); err != nil || tok != "tok-1" {
			t.Fatalf("login on a second proxy: %q %v", tok, err)
		}
	}
	return p1, p2, stores
}

// refuseAndWait reports tok refused by the upstream (which starts a
// fetch) and waits for that fetch.
func refuseAndWait(t *testing.T, p *Provider, tok string) string {
	t.Helper()
	p.reject("a@x", tok)
	a, _ := p.account("a@x")
	a.mu.Lock()
	call := a.inflight
	a.mu.Unlock()
	if call != nil {
		select {
		case <-call.done:
		case <-time.After(10 * time.Second):
			t.Fatal("the fetch did not end")
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tok == nil {
		t.Fatal("no token after the fetch")
	}
	return a.tok.AccessToken
}

// Two proxies sharing Redis whose token the server refuses at once: one
// asks the identity provider, the other takes its token from Redis.
func TestSharedStoreOneFetchForAllProxies(t *testing.T) {
	ts := newTokenServer(t, 200*time.Millisecond, 3600)
	p1, p2, _ := sharedPair(t, ts, Options{})
	n := ts.requests.Load()
	got := make(chan string, 2)
	for _, p := range []*Provider{p1, p2} {
		go func() { got <- refuseAndWait(t, p, "tok-1") }()
	}
	a, b := <-got, <-got
	if extra := ts.requests.Load() - n; extra != 1 || a != b || a == "tok-1" {
		t.Fatalf("%d token requests for two proxies (want 1); tokens %q and %q (want the same new one)", extra, a, b)
	}
	if tok, err := p2.authorize(context.Background(), "a@x", "pw", ""); err != nil || tok != a {
		t.Fatalf("login after the shared fetch: %q %v", tok, err)
	}
}

// A lock left by a proxy that died holding it delays a fetch by the token
// timeout at most: the proxy then fetches on its own.
func TestSharedStoreStaleLock(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	p1, _, stores := sharedPair(t, ts, Options{TokenTimeout: 300 * time.Millisecond})
	if err := stores[0].client.Set(context.Background(), "emailproxy:fetch-lock:a@x", "dead", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	n := ts.requests.Load()
	degraded := telemetry.Set.GetOrCreateCounter(`emailproxy_shared_store_degraded_total{op="fetch_lock"}`)
	before := degraded.Get()
	if tok := refuseAndWait(t, p1, "tok-1"); tok == "tok-1" || ts.requests.Load() != n+1 {
		t.Fatalf("token %q after %d requests, with the lock held elsewhere", tok, ts.requests.Load()-n)
	}
	if degraded.Get() != before+1 {
		t.Fatalf("the fetch without the lock was not counted (%d -> %d)", before, degraded.Get())
	}
}

// A refresh token another proxy rotated is taken even when the access
// token in Redis is too old to use; one encrypted with another key is not.
func TestSharedStoreRotatedRefreshToken(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	p1, _, stores := sharedPair(t, ts, Options{})
	a, _ := p1.account("a@x")
	a.mu.Lock()
	ring := a.ring
	a.mu.Unlock()
	other, err := deriveKey("another password", []byte("another salt 16b"), testIterations)
	if err != nil {
		t.Fatal(err)
	}
	old := strconv.FormatInt(time.Now().Add(time.Minute).Unix(), 10) // inside the refresh margin
	for _, c := range []struct {
		refresh string
		want    string
	}{
		{ring.encrypt([]byte("rotated-elsewhere")), "rotated-elsewhere"},
		{keyring{other}.encrypt([]byte("not ours")), "rotated-elsewhere"},
	} {
		if err := stores[0].Save("a@x", map[string]string{"refresh_token": c.refresh, "access_token_expiry": old}, nil); err != nil {
			t.Fatal(err)
		}
		if tok := p1.adoptShared(a); tok != nil {
			t.Fatalf("took an access token that expires within the margin: %v", tok.Expiry)
		}
		a.mu.Lock()
		got := a.refresh
		a.mu.Unlock()
		if got != c.want {
			t.Fatalf("refresh token %q, want %q", got, c.want)
		}
	}
}

// Redis killed mid-run: logins go on from memory, the store reports
// itself down (and logs it once), and it is back in use as soon as Redis
// answers again on the same address.
func TestRedisKilledMidRun(t *testing.T) {
	port := freeTCPPort(t)
	url, kill := startRedisOn(t, port)
	ts := newTokenServer(t, 0, 3600)
	store, err := NewRedisStore(url)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var logged strings.Builder
	store.Logger = zerolog.New(zerolog.SyncWriter(&logged))
	p := NewProvider(testConfig(t, ts.URL, ""), Options{Store: store, Iterations: testIterations})
	defer p.Close()
	login := func() string {
		t.Helper()
		tok, err := p.authorize(context.Background(), "a@x", "pw", "")
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		return tok
	}
	first := login()
	p.confirm("a@x", "pw")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		// The key is derived and the token saved in the background.
		if c, _ := store.LoadAccount("a@x"); c["access_token"] != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the token was not saved to Redis")
		}
	}
	if !store.Up() {
		t.Fatal("store down with Redis running")
	}
	kill()
	a, _ := p.account("a@x")
	if tok := refuseAndWait(t, p, first); tok == first || login() != tok {
		t.Fatalf("no fresh token from memory with Redis down: %q", tok)
	}
	if store.Up() {
		t.Fatal("store up with Redis killed")
	}
	startRedisOn(t, port)
	p.persist(a, false) // the next save reaches the new Redis
	if !store.Up() {
		t.Fatal("store still down with Redis back")
	}
	cached, err := store.Load()
	if err != nil || cached["a@x"]["access_token"] == "" {
		t.Fatalf("nothing saved after Redis came back: %v %v", cached, err)
	}
	out := logged.String()
	if strings.Count(out, "Redis unavailable") != 1 || strings.Count(out, "Redis is back") != 1 {
		t.Fatalf("state changes logged: %s", out)
	}
}

// A wait for the fetch lock that ends is not Redis failing: the store
// stays up.
func TestRedisLockWaitEndingIsNotAnOutage(t *testing.T) {
	store, err := NewRedisStore(startRedis(t))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := store.LockFetch(ctx, "a@x", time.Minute); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("lock with an ended wait: %v", err)
	}
	if !store.Up() {
		t.Fatal("an ended wait marked Redis down")
	}
	unlock, err := store.LockFetch(context.Background(), "a@x", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	if !store.Up() {
		t.Fatal("store down after a lock and unlock")
	}
}

// twoProxies is two providers sharing the Redis at url, each with its own
// connection, both started before anything is cached.
func twoProxies(t *testing.T, url string, cfgTokenURL string, iterations ...int) (p1, p2 *Provider, s1 *RedisStore) {
	t.Helper()
	cfg := testConfig(t, cfgTokenURL, "")
	var ps [2]*Provider
	var stores [2]*RedisStore
	for i := range ps {
		s, err := NewRedisStore(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		stores[i] = s
		n := testIterations
		if i < len(iterations) {
			n = iterations[i]
		}
		ps[i] = NewProvider(cfg, Options{Store: s, Iterations: n})
		t.Cleanup(ps[i].Close)
	}
	return ps[0], ps[1], stores[0]
}

// waitSalt waits until Redis holds the account's salt, and returns it.
func waitSalt(t *testing.T, s *RedisStore) string {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if v, err := s.LoadAccount("a@x"); err == nil && v["token_salt"] != "" && v["access_token"] != "" {
			return v["token_salt"]
		}
	}
	t.Fatal("the first login's key never reached Redis")
	return ""
}

// The password model stays one per account across proxies: a proxy
// started before the account's first login (on another proxy) checks its
// logins against the password that login set, and uses its token.
func TestSharedPasswordAcrossProxies(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	p1, p2, s1 := twoProxies(t, startRedis(t), ts.URL)
	tok, err := p1.authorize(context.Background(), "a@x", "pw", "")
	if err != nil {
		t.Fatal(err)
	}
	p1.confirm("a@x", "pw")
	waitSalt(t, s1)
	n := ts.requests.Load()
	if _, err := p2.authorize(context.Background(), "a@x", "wrong", ""); !errors.Is(err, ErrBadPassword) {
		t.Fatalf("another password on the second proxy: %v, want it refused", err)
	}
	got, err := p2.authorize(context.Background(), "a@x", "pw", "")
	if err != nil || got != tok || ts.requests.Load() != n {
		t.Fatalf("the account's password on the second proxy: %q %v, %d token requests (want the shared token, none)", got, err, ts.requests.Load()-n)
	}
}

// Two proxies whose first logins of an account come at the same time:
// the first to check its password claims the key, and the other waits
// for its values (here: until its login times out, with a temporary
// error). A proxy that accepted a password without the claim (Redis was
// unreachable then) finds another salt in Redis when it saves: it gives
// its own key up, keeps Redis's values and, from then on, takes only the
// winner's password.
func TestSharedPasswordRace(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	p1, p2, s1 := twoProxies(t, startRedis(t), ts.URL)
	if _, err := p1.authorize(context.Background(), "a@x", "first", ""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := p2.authorize(ctx, "a@x", "second", "")
	var lerr *LoginError
	if !errors.As(err, &lerr) || !lerr.Temporary || !strings.Contains(lerr.Message, "another proxy") {
		t.Fatalf("a first login on the second proxy while the first one's is under way: %v", err)
	}
	p1.confirm("a@x", "first")
	salt := waitSalt(t, s1)
	if !p2.confirm("a@x", "second") {
		t.Fatal("the second proxy knew nothing yet; it should have let its login in")
	}
	a, _ := p2.account("a@x")
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		a.mu.Lock()
		yielded := a.password == nil && a.ring == nil && a.cached["token_salt"] == salt
		a.mu.Unlock()
		if yielded {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the second proxy never gave way to the first one's password")
		}
	}
	if v, _ := s1.LoadAccount("a@x"); v["token_salt"] != salt {
		t.Fatal("the second proxy overwrote the shared salt")
	}
	if _, err := p2.authorize(context.Background(), "a@x", "second", ""); !errors.Is(err, ErrBadPassword) {
		t.Fatalf("the losing password: %v, want it refused", err)
	}
	if _, err := p2.authorize(context.Background(), "a@x", "first", ""); err != nil {
		t.Fatalf("the winning password on the second proxy: %v", err)
	}
}

// A first login that fails after claiming the key (the server was down)
// gives the claim up: another proxy's first login goes ahead at once.
func TestSharedClaimReleasedOnFailure(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	p1, p2, _ := twoProxies(t, startRedis(t), ts.URL)
	g, err := p1.Login(context.Background(), "a@x", "pw", "")
	if err != nil {
		t.Fatal(err)
	}
	g.Failed()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	g2, err := p2.Login(ctx, "a@x", "pw2", "")
	if err != nil {
		t.Fatalf("the second proxy's first login after the first one's failed: %v", err)
	}
	if lerr := g2.Accepted(); lerr != nil {
		t.Fatal(lerr)
	}
}

// A login on a second proxy while the first is still deriving the key of
// the account's first password waits for that key's values (the first
// proxy claimed it) and uses the token fetched there: one token request.
func TestSharedKeyClaimIsWaitedFor(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	p1, p2, s1 := twoProxies(t, startRedis(t), ts.URL, 300_000) // about a second under -race
	tok, err := p1.authorize(context.Background(), "a@x", "pw", "")
	if err != nil {
		t.Fatal(err)
	}
	p1.confirm("a@x", "pw")
	if v, _ := s1.LoadAccount("a@x"); v["token_salt"] != "" {
		t.Fatal("the key was already saved: this test needs the derivation to be slower")
	}
	n := ts.requests.Load()
	got, err := p2.authorize(context.Background(), "a@x", "pw", "")
	if err != nil || got != tok || ts.requests.Load() != n {
		t.Fatalf("login on the second proxy during the derivation: %q %v, %d token requests (want the first proxy's token, none)", got, err, ts.requests.Load()-n)
	}
	if _, err := p2.authorize(context.Background(), "a@x", "other", ""); !errors.Is(err, ErrBadPassword) {
		t.Fatalf("another password: %v, want it refused", err)
	}
}

// Proxies sharing a store each save the last_activity they saw: an older
// one never replaces a newer one.
func TestRedisKeepsNewestActivity(t *testing.T) {
	store, err := NewRedisStore(startRedis(t))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for _, tc := range []struct{ save, want string }{
		{"1900000100", "1900000100"},
		{"1900000000", "1900000100"}, // another proxy's older note
		{"1900000200", "1900000200"},
	} {
		if err := store.Save("a@x", map[string]string{"last_activity": tc.save}, nil); err != nil {
			t.Fatal(err)
		}
		vals, err := store.LoadAccount("a@x")
		if err != nil {
			t.Fatal(err)
		}
		if vals["last_activity"] != tc.want {
			t.Fatalf("after saving %s: %s, want %s", tc.save, vals["last_activity"], tc.want)
		}
	}
}
