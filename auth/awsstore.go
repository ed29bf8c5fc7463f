package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	smtypes "github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"
)

// AWSStore keeps the cached keys in one AWS Secrets Manager secret, as
// emailproxy.py's `--cache-store aws:NAME` does: the secret's string is
// JSON, {"account": {"access_token": "...", ...}, ...}, with the values
// encrypted exactly as in the file. Region and credentials come from the
// usual AWS places (environment, shared config and credentials files, an
// instance role); `aws:PROFILE||NAME` picks a named profile. A secret
// given by name is created at the first save if it does not exist; one
// given by ARN must exist. Every save reads the secret again and changes
// only its account, so proxies sharing a secret keep each other's
// accounts (the last write of one account wins; there is no fetch lock:
// use Redis for a fleet).
type AWSStore struct {
	client  *secretsmanager.Client
	secret  string // name or ARN
	timeout time.Duration
	mu      sync.Mutex // one read-modify-write at a time
}

// NewAWSStore reads the AWS configuration for spec (what follows "aws:"
// in --cache-store). It makes no call to AWS.
func NewAWSStore(ctx context.Context, spec string) (*AWSStore, error) {
	profile, secret := "", spec
	if i := strings.Index(spec, "||"); i >= 0 {
		profile, secret = spec[:i], spec[i+2:]
	}
	if secret == "" {
		return nil, errors.New("--cache-store aws: needs a secret name or ARN (aws:NAME, aws:PROFILE||NAME)")
	}
	var opts []func(*awsconfig.LoadOptions) error
	if profile != "" {
		opts = append(opts, awsconfig.WithSharedConfigProfile(profile))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("--cache-store aws: cannot read the AWS configuration: %v", err)
	}
	if cfg.Region == "" {
		return nil, errors.New("--cache-store aws: no AWS region: set AWS_REGION, or region in the profile")
	}
	return &AWSStore{client: secretsmanager.NewFromConfig(cfg), secret: secret, timeout: 15 * time.Second}, nil
}

// Load reads every account's cached keys; a secret that does not exist
// yet is an empty cache.
func (s *AWSStore) Load() (map[string]map[string]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	all, _, err := s.read()
	return all, err
}

// Save changes one account's keys in the secret, creating the secret if
// it does not exist (by name only).
func (s *AWSStore) Save(account string, set map[string]string, del []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	all, exists, err := s.read()
	if err != nil {
		return err
	}
	vals := all[account]
	if vals == nil {
		vals = map[string]string{}
	}
	for k, v := range set {
		vals[k] = v
	}
	for _, k := range del {
		delete(vals, k)
	}
	if len(vals) == 0 {
		delete(all, account)
	} else {
		all[account] = vals
	}
	body, err := json.Marshal(all)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	switch {
	case exists:
		_, err = s.client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String(s.secret), SecretString: aws.String(string(body))})
		return s.explain("PutSecretValue", err)
	case strings.HasPrefix(s.secret, "arn:"):
		return fmt.Errorf("AWS secret %s does not exist, and a secret given by ARN cannot be created: create it, or give a name", s.secret)
	default:
		_, err = s.client.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String(s.secret), SecretString: aws.String(string(body)),
			Description: aws.String("Email OAuth 2.0 Proxy token cache (values encrypted with each account's password)")})
		return s.explain("CreateSecret", err)
	}
}

// read returns the secret's accounts and whether it exists.
func (s *AWSStore) read() (map[string]map[string]string, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	out, err := s.client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(s.secret)})
	var missing *smtypes.ResourceNotFoundException
	if errors.As(err, &missing) {
		return map[string]map[string]string{}, false, nil
	}
	if err != nil {
		return nil, false, s.explain("GetSecretValue", err)
	}
	all := map[string]map[string]string{}
	if out.SecretString == nil || *out.SecretString == "" {
		return all, true, nil
	}
	var raw map[string]map[string]any
	if err := json.Unmarshal([]byte(*out.SecretString), &raw); err != nil {
		// The value is not shown: it is a secret, whatever it holds.
		return nil, true, fmt.Errorf("AWS secret %s does not hold the token cache's JSON ({\"account\": {\"key\": \"value\"}})", s.secret)
	}
	for account, vals := range raw {
		kept := map[string]string{}
		for _, k := range CachedKeys {
			if v, ok := vals[k].(string); ok {
				kept[k] = v
			}
		}
		all[account] = kept
	}
	return all, true, nil
}

// explain names the call and, for a refusal, the permission it needs.
func (s *AWSStore) explain(call string, err error) error {
	if err == nil {
		return nil
	}
	var api smithy.APIError
	if errors.As(err, &api) && api.ErrorCode() == "AccessDeniedException" {
		return fmt.Errorf("AWS Secrets Manager refused %s on %s: the credentials need the secretsmanager:%s permission on it", call, s.secret, call)
	}
	return fmt.Errorf("AWS Secrets Manager %s on %s: %v", call, s.secret, err)
}
