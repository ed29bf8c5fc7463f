package mock

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Authority is a mock OAuth 2.0 token endpoint for the client_credentials
// grant. It issues random tokens, remembers them, and lets the mail
// servers check them.
type Authority struct {
	ClientID     string
	ClientSecret string
	Scope        string
	Lifetime     time.Duration // expires_in of new tokens (default 1 h)

	mu            sync.Mutex
	tokens        map[string]time.Time // token -> expiry
	refresh       map[string]bool
	codes         map[string]codeGrant
	devices       map[string]*deviceGrant
	lastAuthorize url.Values
	requests      int
	delay         time.Duration
	status        int     // if non-zero, answer every request with this HTTP status
	failRate      float64 // fraction of requests answered 503 at random
	hang          bool    // accept and never answer (until the client gives up)
	hangDone      chan struct{}
}

// NewAuthority returns an endpoint that accepts clientID/secret for scope.
func NewAuthority(clientID, secret, scope string) *Authority {
	return &Authority{ClientID: clientID, ClientSecret: secret, Scope: scope,
		Lifetime: time.Hour, tokens: map[string]time.Time{}, hangDone: make(chan struct{}),
		refresh: map[string]bool{}, codes: map[string]codeGrant{}, devices: map[string]*deviceGrant{}}
}

// Requests is how many token requests were made.
func (a *Authority) Requests() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.requests
}

// SetDelay delays every answer, like a distant identity provider.
func (a *Authority) SetDelay(d time.Duration) { a.mu.Lock(); a.delay = d; a.mu.Unlock() }

// SetStatus makes every answer an error with this HTTP status (0: normal).
func (a *Authority) SetStatus(code int) { a.mu.Lock(); a.status = code; a.mu.Unlock() }

// SetFailRate answers this fraction of requests, at random, with 503.
func (a *Authority) SetFailRate(r float64) { a.mu.Lock(); a.failRate = r; a.mu.Unlock() }

// SetHang makes requests hang until the client gives up (or Release).
func (a *Authority) SetHang(h bool) { a.mu.Lock(); a.hang = h; a.mu.Unlock() }

// Release ends hanging requests; call it before closing the server.
func (a *Authority) Release() {
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-a.hangDone:
	default:
		close(a.hangDone)
	}
}

// RevokeAll makes every issued token invalid, as if the provider had
// revoked them.
func (a *Authority) RevokeAll() {
	a.mu.Lock()
	a.tokens = map[string]time.Time{}
	a.mu.Unlock()
}

// Valid reports whether token was issued here and has not expired.
func (a *Authority) Valid(token string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	exp, ok := a.tokens[token]
	return ok && time.Now().Before(exp)
}

func (a *Authority) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.requests++
	delay, status, hang := a.delay, a.status, a.hang
	if a.failRate > 0 && mrand.Float64() < a.failRate {
		status = http.StatusServiceUnavailable
	}
	a.mu.Unlock()
	if hang {
		select {
		case <-r.Context().Done():
		case <-a.hangDone:
		}
		return
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	fail := func(code int, errCode, desc string) {
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(map[string]string{"error": errCode, "error_description": desc})
	}
	if status != 0 {
		fail(status, "temporarily_unavailable", "the mock token endpoint was told to fail")
		return
	}
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		fail(http.StatusBadRequest, "invalid_request", "POST a form")
		return
	}
	f := r.PostForm
	if f.Get("client_id") != a.ClientID {
		fail(http.StatusUnauthorized, "invalid_client", "unknown client")
		return
	}
	if f.Get("grant_type") != "client_credentials" {
		if !a.interactiveGrant(w, f, fail) {
			fail(http.StatusBadRequest, "unsupported_grant_type", "unknown grant_type")
		}
		return
	}
	switch {
	case f.Get("client_secret") != a.ClientSecret:
		fail(http.StatusUnauthorized, "invalid_client", "unknown client or wrong secret")
	case strings.Join(strings.Fields(f.Get("scope")), " ") != a.Scope:
		fail(http.StatusBadRequest, "invalid_scope", "unexpected scope")
	default:
		b := make([]byte, 24)
		rand.Read(b)
		tok := "mock-" + hex.EncodeToString(b)
		a.record(tok)
		// expires_in as a string, as some providers send it (reference #237).
		json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "Bearer",
			"expires_in": json.Number(itoa(int(a.Lifetime / time.Second)))})
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// record keeps a new token, forgetting the expired ones now and then so
// that a long-running demo does not grow.
func (a *Authority) record(tok string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if len(a.tokens) >= 1024 {
		for t, exp := range a.tokens {
			if now.After(exp) {
				delete(a.tokens, t)
			}
		}
	}
	a.tokens[tok] = now.Add(a.Lifetime)
}
