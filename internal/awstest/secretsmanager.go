// Package awstest is an in-memory AWS Secrets Manager speaking the JSON
// API (GetSecretValue, PutSecretValue, CreateSecret) for tests: no AWS
// account is reachable from them.
package awstest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// SecretsManager speaks the part of the AWS Secrets Manager JSON API the
// store uses (GetSecretValue, PutSecretValue, CreateSecret), keeping
// secrets in memory, and records every call.
type SecretsManager struct {
	mu      sync.Mutex
	secrets map[string]string // name -> SecretString
	calls   []string          // "Target name"
	auth    []string          // Authorization headers
	deny    bool              // answer AccessDeniedException
}

// New is an empty Secrets Manager.
func New() *SecretsManager { return &SecretsManager{secrets: map[string]string{}} }

// Secret is the string of secret name ("" if none).
func (m *SecretsManager) Secret(name string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.secrets[name]
}

// SetSecret sets the string of secret name.
func (m *SecretsManager) SetSecret(name, value string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.secrets[name] = value
}

// Deny makes every call fail with AccessDeniedException.
func (m *SecretsManager) Deny() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.deny = true
}

// Authorizations are the Authorization headers of the calls so far.
func (m *SecretsManager) Authorizations() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.auth...)
}

func (m *SecretsManager) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var in struct{ SecretId, Name, SecretString string }
	body, _ := io.ReadAll(r.Body)
	json.Unmarshal(body, &in)
	target := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "secretsmanager.")
	id := in.SecretId + in.Name
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, target+" "+id)
	m.auth = append(m.auth, r.Header.Get("Authorization"))
	fail := func(kind, msg string) {
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.Header().Set("X-Amzn-ErrorType", kind)
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"__type":%q,"message":%q}`, kind, msg)
	}
	if m.deny {
		fail("AccessDeniedException", "User is not authorized to perform secretsmanager:"+target)
		return
	}
	name := strings.TrimPrefix(id, "arn:aws:secretsmanager:eu-west-1:123456789012:secret:")
	reply := map[string]any{"ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:" + name, "Name": name, "VersionId": "v1"}
	switch target {
	case "GetSecretValue":
		v, ok := m.secrets[name]
		if !ok {
			fail("ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
			return
		}
		reply["SecretString"] = v
	case "PutSecretValue":
		if _, ok := m.secrets[name]; !ok {
			fail("ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
			return
		}
		m.secrets[name] = in.SecretString
	case "CreateSecret":
		if _, ok := m.secrets[name]; ok {
			fail("ResourceExistsException", "exists")
			return
		}
		m.secrets[name] = in.SecretString
	default:
		fail("InvalidRequestException", "unknown operation "+target)
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(reply)
}

// Log lists the calls so far: "Operation secret; ...".
func (m *SecretsManager) Log() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return strings.Join(m.calls, "; ")
}

// Env serves sm on 127.0.0.1 and points the AWS SDK at it through its
// usual environment variables (region eu-west-1, access key AKIDENV, and
// empty shared config and credentials files), as a user's settings would.
func Env(t *testing.T, sm *SecretsManager) {
	srv := httptest.NewServer(sm)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	t.Setenv("AWS_ENDPOINT_URL", srv.URL)
	t.Setenv("AWS_REGION", "eu-west-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "env-secret-key")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
}
