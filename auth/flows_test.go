package auth

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// verifyJWS checks an RS256 compact JWS against pub and returns its
// header and claims.
func verifyJWS(t *testing.T, jws string, pub *rsa.PublicKey) (map[string]any, map[string]any) {
	t.Helper()
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %q", jws)
	}
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig); err != nil {
		t.Fatalf("signature: %v", err)
	}
	var h, c map[string]any
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	cb, _ := base64.RawURLEncoding.DecodeString(parts[1])
	json.Unmarshal(hb, &h)
	json.Unmarshal(cb, &c)
	if h["alg"] != "RS256" {
		t.Fatalf("alg %v", h["alg"])
	}
	return h, c
}

// formServer records the last token request and answers with a token.
func formServer(t *testing.T) (*httptest.Server, *atomic.Value) {
	var last atomic.Value
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		last.Store(r.PostForm)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"tok","token_type":"Bearer","expires_in":3600}`)
	}))
	t.Cleanup(ts.Close)
	return ts, &last
}

func providerFor(t *testing.T, src string) *Provider {
	p := NewProvider(parseConfig(t, src), Options{})
	t.Cleanup(p.Close)
	return p
}

func TestPasswordFlowWithResource(t *testing.T) {
	ts, last := formServer(t)
	p := providerFor(t, "[u@x]\ntoken_url = "+ts.URL+"\noauth2_flow = password\noauth2_resource = https://partner.outlook.cn\nclient_id = cid\n")
	if _, err := p.authorize(context.Background(), "u@x", "real password", ""); err != nil {
		t.Fatal(err)
	}
	f := last.Load().(url.Values)
	if f.Get("grant_type") != "password" || f.Get("username") != "u@x" || f.Get("password") != "real password" ||
		f.Get("resource") != "https://partner.outlook.cn" || f.Has("scope") || f.Get("client_id") != "cid" {
		t.Fatalf("ROPC request %v", f)
	}
}

func writeCert(t *testing.T, dir string) (*rsa.PrivateKey, []byte, string, string) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "app"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	return key, der, certPath, keyPath
}

func TestClientCredentialsWithCertificate(t *testing.T) {
	ts, last := formServer(t)
	key, der, certPath, keyPath := writeCert(t, t.TempDir())
	p := providerFor(t, "[u@x]\ntoken_url = "+ts.URL+"\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = cid\n"+
		"jwt_certificate_path = "+certPath+"\njwt_key_path = "+keyPath+"\n")
	if _, err := p.authorize(context.Background(), "u@x", "pw", ""); err != nil {
		t.Fatal(err)
	}
	f := last.Load().(url.Values)
	if f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || f.Has("client_secret") {
		t.Fatalf("request %v", f)
	}
	h, c := verifyJWS(t, f.Get("client_assertion"), &key.PublicKey)
	thumb := sha256.Sum256(der)
	if h["x5t#S256"] != base64.URLEncoding.EncodeToString(thumb[:]) {
		t.Fatalf("x5t#S256 %v", h["x5t#S256"])
	}
	if c["aud"] != ts.URL || c["iss"] != "cid" || c["sub"] != "cid" || c["jti"] == "" || c["exp"].(float64)-c["nbf"].(float64) != 300 {
		t.Fatalf("claims %v", c)
	}
	if _, ok := c["iat"]; ok {
		t.Fatal("iat present (the reference sends none)")
	}
}

func TestServiceAccount(t *testing.T) {
	key, _, _, _ := writeCert(t, t.TempDir())
	var last atomic.Value
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		last.Store(r.PostForm)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"sa-tok","token_type":"Bearer","expires_in":3600}`)
	}))
	defer ts.Close()
	keyJSON, _ := json.Marshal(map[string]string{"type": "service_account", "client_email": "svc@proj.iam.gserviceaccount.com",
		"private_key":    string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})),
		"private_key_id": "kid1", "token_uri": ts.URL})
	keyFile := filepath.Join(t.TempDir(), "sa.json")
	os.WriteFile(keyFile, keyJSON, 0o600)
	p := providerFor(t, "[user@domain.com]\ntoken_url = https://oauth2.googleapis.com/token\noauth2_scope = https://mail.google.com/\n"+
		"oauth2_flow = service_account\nclient_id = file\nclient_secret = "+keyFile+"\n")
	tok, err := p.authorize(context.Background(), "user@domain.com", "pw", "")
	if err != nil || tok != "sa-tok" {
		t.Fatalf("%q %v", tok, err)
	}
	f := last.Load().(url.Values)
	if f.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		t.Fatalf("grant %v", f)
	}
	_, c := verifyJWS(t, f.Get("assertion"), &key.PublicKey)
	if c["sub"] != "user@domain.com" || c["iss"] != "svc@proj.iam.gserviceaccount.com" || c["scope"] != "https://mail.google.com/" || c["aud"] != ts.URL {
		t.Fatalf("claims %v", c)
	}
	bad := providerFor(t, "[u@x]\ntoken_url = t\noauth2_scope = s\noauth2_flow = service_account\nclient_id = other\n")
	if _, err := bad.authorize(context.Background(), "u@x", "pw", ""); err == nil || !strings.Contains(err.Error(), "client_id must be file or key") {
		t.Fatalf("bad client_id: %v", err)
	}
}

// Token requests honour http_proxy / https_proxy, as emailproxy.py does
// (loopback addresses, which the other tests use, never go through it).
func TestTokenRequestsUseTheHTTPProxy(t *testing.T) {
	p := providerFor(t, "[u@x]\ntoken_url = http://login.example.test/tenant/oauth2/v2.0/token\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = c\nclient_secret = s\n")
	before := proxied.Load()
	tok, err := p.authorize(context.Background(), "u@x", "pw", "")
	if err != nil || tok != "via-proxy" || proxied.Load() != before+1 {
		t.Fatalf("%q %v (proxied %d)", tok, err, proxied.Load()-before)
	}
}
