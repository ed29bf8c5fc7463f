// Command emailproxy is an OAuth 2.0 + TLS proxy for IMAP4, POP3 and SMTP that
// reads emailproxy.py's emailproxy.config and command line.
package main

import (
	"os"

	"github.com/emailproxy/emailproxy/cmd/internal/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:], os.Stdout, os.Stderr, nil))
}
