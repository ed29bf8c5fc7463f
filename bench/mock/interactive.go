package mock

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// The interactive grants of the mock authority: an authorisation endpoint
// that "logs the user in" at once and redirects back with a code, the
// authorization_code grant (with PKCE checked), refresh tokens that rotate,
// and the device grant (RFC 8628), which answers authorization_pending once
// and slow_down once before it succeeds.

type codeGrant struct {
	redirect, challenge, scope string
}

type deviceGrant struct {
	polls int
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// serveAuthorize plays the browser part: GET /authorize?... redirects to
// redirect_uri with a code and the state.
func (a *Authority) serveAuthorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != a.ClientID || q.Get("response_type") != "code" || q.Get("redirect_uri") == "" {
		http.Error(w, "bad authorisation request", http.StatusBadRequest)
		return
	}
	if q.Get("code_challenge") != "" && q.Get("code_challenge_method") != "S256" {
		http.Error(w, "only S256", http.StatusBadRequest)
		return
	}
	code := "code-" + randomHex(12)
	a.mu.Lock()
	a.codes[code] = codeGrant{redirect: q.Get("redirect_uri"), challenge: q.Get("code_challenge"), scope: q.Get("scope")}
	a.lastAuthorize = q
	a.mu.Unlock()
	to, _ := url.Parse(q.Get("redirect_uri"))
	back := to.Query()
	back.Set("code", code)
	back.Set("state", q.Get("state"))
	to.RawQuery = back.Encode()
	http.Redirect(w, r, to.String(), http.StatusFound)
}

// LastAuthorize is the query of the last authorisation request.
func (a *Authority) LastAuthorize() url.Values {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastAuthorize
}

// serveDeviceCode starts a device authorisation (RFC 8628 §3.1, POST).
func (a *Authority) serveDeviceCode(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.ParseForm() != nil || r.PostForm.Get("client_id") != a.ClientID {
		http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
		return
	}
	dc := "device-" + randomHex(12)
	a.mu.Lock()
	a.devices[dc] = &deviceGrant{}
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	// Google's spelling, verification_url, which clients must accept too.
	json.NewEncoder(w).Encode(map[string]any{"device_code": dc, "user_code": "MOCK-CODE",
		"verification_url": "https://mock.example/device", "expires_in": 60, "interval": 1})
}

// issue writes a token response, with a refresh token for interactive grants.
func (a *Authority) issue(w http.ResponseWriter, withRefresh bool) {
	tok := "mock-" + randomHex(24)
	resp := map[string]any{"access_token": tok, "token_type": "Bearer",
		"expires_in": json.Number(itoa(int(a.Lifetime / time.Second)))}
	a.mu.Lock()
	a.tokens[tok] = time.Now().Add(a.Lifetime)
	if withRefresh {
		rt := "refresh-" + randomHex(12)
		a.refresh[rt] = true
		resp["refresh_token"] = rt
	}
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

// interactiveGrant handles the grant types other than client_credentials;
// it reports false for a grant type it does not know.
func (a *Authority) interactiveGrant(w http.ResponseWriter, f url.Values, fail func(int, string, string)) bool {
	switch f.Get("grant_type") {
	case "authorization_code":
		a.mu.Lock()
		g, ok := a.codes[f.Get("code")]
		delete(a.codes, f.Get("code")) // a code is redeemed once
		a.mu.Unlock()
		switch {
		case !ok:
			fail(http.StatusBadRequest, "invalid_grant", "AADSTS54005: OAuth2 Authorization code was already redeemed")
		case f.Get("redirect_uri") != g.redirect:
			fail(http.StatusBadRequest, "invalid_grant", "redirect_uri does not match")
		case g.challenge != "" && s256(f.Get("code_verifier")) != g.challenge:
			fail(http.StatusBadRequest, "invalid_grant", "PKCE verification failed")
		default:
			a.issue(w, true)
		}
	case "refresh_token":
		a.mu.Lock()
		ok := a.refresh[f.Get("refresh_token")]
		delete(a.refresh, f.Get("refresh_token")) // rotation
		a.mu.Unlock()
		if !ok {
			fail(http.StatusBadRequest, "invalid_grant", "AADSTS70008: The refresh token has expired or is invalid")
			return true
		}
		a.issue(w, true)
	case "urn:ietf:params:oauth:grant-type:device_code":
		a.mu.Lock()
		d := a.devices[f.Get("device_code")]
		if d != nil {
			d.polls++
		}
		a.mu.Unlock()
		switch {
		case d == nil:
			fail(http.StatusBadRequest, "expired_token", "unknown device code")
		case d.polls == 1:
			fail(http.StatusBadRequest, "authorization_pending", "the user has not signed in yet")
		case d.polls == 2:
			fail(http.StatusBadRequest, "slow_down", "polling too fast")
		default:
			a.issue(w, true)
		}
	default:
		return false
	}
	return true
}

func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
