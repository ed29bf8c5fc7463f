package auth

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emailproxy/emailproxy/internal/awstest"
)

// emailproxy.py's AWS store: the secret is created at the first save
// (by name), holds JSON of encrypted values, is updated in place after
// that, and a new proxy reading it uses the token without a request.
func TestAWSStore(t *testing.T) {
	sm := awstest.New()
	awstest.Env(t, sm)
	ts := newTokenServer(t, 0, 3600)
	cfg := testConfig(t, ts.URL, "")
	store, err := NewAWSStore(context.Background(), "emailproxy-cache")
	if err != nil {
		t.Fatal(err)
	}
	p := NewProvider(cfg, Options{Store: store, Iterations: testIterations})
	tok, err := p.authorize(context.Background(), "a@x", "pw", "")
	if err != nil {
		t.Fatal(err)
	}
	p.confirm("a@x", "pw")
	p.Close()
	if got := sm.Log(); !strings.HasPrefix(got, "GetSecretValue emailproxy-cache; GetSecretValue emailproxy-cache; CreateSecret emailproxy-cache") {
		t.Fatalf("calls: %s", got)
	}
	var saved map[string]map[string]string
	if err := json.Unmarshal([]byte(sm.Secret("emailproxy-cache")), &saved); err != nil {
		t.Fatalf("the secret is not the cache's JSON: %v", err)
	}
	if v := saved["a@x"]; !strings.HasPrefix(v["access_token"], "gAAAAA") || v["token_salt"] == "" || strings.Contains(sm.Secret("emailproxy-cache"), tok) {
		t.Fatalf("what the secret holds: %v", saved)
	}
	for _, a := range sm.Authorizations() {
		if !strings.HasPrefix(a, "AWS4-HMAC-SHA256 Credential=AKIDENV/") || strings.Contains(a, "env-secret-key") {
			t.Fatalf("request not signed with the environment's key: %q", a)
		}
	}
	// Another account saved by another proxy is kept by the next save.
	sm.SetSecret("emailproxy-cache", strings.Replace(sm.Secret("emailproxy-cache"), "{", `{"other@x":{"access_token":"kept"},`, 1))
	requests := ts.requests.Load()
	p2 := NewProvider(cfg, Options{Store: store, Iterations: testIterations})
	defer p2.Close()
	if again, err := p2.authorize(context.Background(), "a@x", "pw", ""); err != nil || again != tok || ts.requests.Load() != requests {
		t.Fatalf("a new proxy: %q %v, %d token requests (want the cached token, none)", again, err, ts.requests.Load()-requests)
	}
	if err := store.Save("a@x", map[string]string{"access_token_expiry": "1"}, []string{"refresh_token"}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(sm.Log(), "PutSecretValue emailproxy-cache") || !strings.Contains(sm.Secret("emailproxy-cache"), `"other@x":{"access_token":"kept"}`) {
		t.Fatalf("calls %s; secret %s", sm.Log(), sm.Secret("emailproxy-cache"))
	}
}

// aws:PROFILE||ARN: the profile's region and keys are used; a secret
// given by ARN is never created; a refusal names the permission needed;
// no error shows the secret's content or a key.
func TestAWSStoreProfileARNAndErrors(t *testing.T) {
	sm := awstest.New()
	awstest.Env(t, sm)
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	os.WriteFile(os.Getenv("AWS_CONFIG_FILE"), []byte("[profile mail]\nregion = eu-west-1\n"), 0o600)
	os.WriteFile(os.Getenv("AWS_SHARED_CREDENTIALS_FILE"), []byte("[mail]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret-key\n"), 0o600)
	arn := "arn:aws:secretsmanager:eu-west-1:123456789012:secret:fleet-cache"
	store, err := NewAWSStore(context.Background(), "mail||"+arn)
	if err != nil {
		t.Fatal(err)
	}
	err = store.Save("a@x", map[string]string{"access_token": "gAAAAAsecret"}, nil)
	if err == nil || !strings.Contains(err.Error(), "cannot be created") || strings.Contains(sm.Log(), "CreateSecret") {
		t.Fatalf("save to a missing ARN: %v (calls: %s)", err, sm.Log())
	}
	if a := sm.Authorizations()[0]; !strings.HasPrefix(a, "AWS4-HMAC-SHA256 Credential=AKIDPROFILE/") || !strings.Contains(a, "/eu-west-1/secretsmanager/") {
		t.Fatalf("request not signed with the profile: %q", a)
	}
	sm.SetSecret("fleet-cache", `not json gAAAAAsecret`)
	if _, err := store.Load(); err == nil || strings.Contains(err.Error(), "gAAAAAsecret") {
		t.Fatalf("a secret that is not JSON: %v", err)
	}
	sm.Deny()
	_, err = store.Load()
	if err == nil || !strings.Contains(err.Error(), "secretsmanager:GetSecretValue permission") || strings.Contains(err.Error(), "profile-secret-key") {
		t.Fatalf("access denied: %v", err)
	}
	if _, err := NewAWSStore(context.Background(), "mail||"); err == nil {
		t.Fatal("an empty secret name was accepted")
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	if _, err := NewAWSStore(context.Background(), "name"); err == nil || !strings.Contains(err.Error(), "region") {
		t.Fatalf("no region: %v", err)
	}
}
