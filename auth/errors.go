// Package auth decides who may log in and supplies the OAuth 2.0 access
// tokens the proxy presents upstream: per-account token state with
// single-flight fetches and background refresh, and the local password
// check. Nothing here runs on the event loop.
package auth

import (
	"errors"
	"fmt"
)

// LoginError is a failure whose Message is safe to show the client and to
// log: it never holds a password, token or client secret.
type LoginError struct {
	Message string
	// Temporary marks failures that are not the client's fault (token
	// endpoint or upstream trouble): the client may retry unchanged.
	Temporary bool
	cause     error
}

func (e *LoginError) Error() string { return e.Message }
func (e *LoginError) Unwrap() error { return e.cause }

func loginErr(temporary bool, cause error, format string, args ...any) *LoginError {
	return &LoginError{Message: fmt.Sprintf(format, args...), Temporary: temporary, cause: cause}
}

// ErrBadPassword is the cause of a login refused for a wrong local password.
var ErrBadPassword = errors.New("wrong password")

// ErrUnknownAccount and ErrLockedOut are kinds of ErrBadPassword (the
// client is told the same), told apart for the operator's metrics.
var (
	ErrUnknownAccount = fmt.Errorf("unknown account: %w", ErrBadPassword)
	ErrLockedOut      = fmt.Errorf("locked out: %w", ErrBadPassword)
)

// ErrTokenRefused is the cause of a login the upstream server refused
// the token of.
var ErrTokenRefused = errors.New("the server refused the token")

// AsLoginError converts any error into a LoginError, hiding details that
// were not written for the client.
func AsLoginError(err error) *LoginError {
	var le *LoginError
	if errors.As(err, &le) {
		return le
	}
	return loginErr(true, err, "login failed, please retry")
}

// Unavailable is a temporary failure outside auth (the upstream server),
// whose message is safe to show the client; errors.As finds err in it.
func Unavailable(err error) *LoginError { return loginErr(true, err, "%s", err.Error()) }
