package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/jwt"

	"github.com/emailproxy/emailproxy/config"
)

// serviceAccountToken is Google's service account flow with domain-wide
// delegation: a JWT-bearer grant signed with the key, for the login user
// as subject. client_id = file: client_secret is the key file's path;
// client_id = key: client_secret is the pasted key JSON.
func serviceAccountToken(ctx context.Context, acct *config.Account, user string) (*oauth2.Token, error) {
	var raw []byte
	switch kind := acct.Get("client_id"); kind {
	case "file":
		b, err := os.ReadFile(acct.Get("client_secret"))
		if err != nil {
			return nil, loginErr(false, err, "account %s: cannot read the service account key file: %v", user, err)
		}
		raw = b
	case "key":
		raw = []byte(acct.Get("client_secret"))
	default:
		return nil, loginErr(false, nil, "account %s: for service_account, client_id must be file or key (got %q)", user, kind)
	}
	var key struct {
		ClientEmail  string `json:"client_email"`
		PrivateKey   string `json:"private_key"`
		PrivateKeyID string `json:"private_key_id"`
		TokenURI     string `json:"token_uri"`
	}
	if err := json.Unmarshal(raw, &key); err != nil || key.ClientEmail == "" || key.PrivateKey == "" || key.TokenURI == "" {
		return nil, loginErr(false, err, "account %s: the service account key is not valid JSON with client_email, private_key and token_uri", user)
	}
	conf := &jwt.Config{
		Email: key.ClientEmail, PrivateKey: []byte(key.PrivateKey), PrivateKeyID: key.PrivateKeyID,
		TokenURL: key.TokenURI, Scopes: strings.Fields(acct.Get("oauth2_scope")), Subject: user,
	}
	tok, err := conf.TokenSource(ctx).Token()
	if err != nil {
		return nil, fmt.Errorf("service account token: %w", err)
	}
	return tok, nil
}
