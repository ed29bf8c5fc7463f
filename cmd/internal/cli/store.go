package cli

import (
	"context"
	"strings"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/auth"
)

// cacheStore is the opened --cache-store.
type cacheStore struct {
	auth.Store
	isConfig bool             // the configuration file itself
	redis    *auth.RedisStore // set for redis:// and rediss://
}

// storeIsFile reports whether a --cache-store value names a file (as
// opposed to Redis or AWS), to be made absolute where that matters.
func storeIsFile(spec string) bool {
	return spec != "" && !strings.HasPrefix(spec, "aws:") && !strings.HasPrefix(spec, "redis://") && !strings.HasPrefix(spec, "rediss://")
}

// openStore opens the token cache that --cache-store names: "" is the
// configuration file (as emailproxy.py does), redis://, rediss:// and
// aws:... are shared stores, anything else an INI file. close releases it.
func openStore(spec, configPath string, log zerolog.Logger) (st cacheStore, close func(), err error) {
	switch {
	case spec == "":
		return cacheStore{Store: &auth.FileStore{Path: configPath}, isConfig: true}, func() {}, nil
	case strings.HasPrefix(spec, "aws:"):
		s, err := auth.NewAWSStore(context.Background(), strings.TrimPrefix(spec, "aws:"))
		if err != nil {
			return cacheStore{}, nil, err
		}
		return cacheStore{Store: s}, func() {}, nil
	case !storeIsFile(spec):
		s, err := auth.NewRedisStore(spec)
		if err != nil {
			return cacheStore{}, nil, err
		}
		s.Logger = log
		return cacheStore{Store: s, redis: s}, func() { s.Close() }, nil
	default:
		return cacheStore{Store: &auth.FileStore{Path: spec}}, func() {}, nil
	}
}
