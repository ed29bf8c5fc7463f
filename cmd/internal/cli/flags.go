package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"github.com/rs/zerolog/diode"
	"gopkg.in/natefinch/lumberjack.v2"
)

// version is stamped by scripts/release.sh (-ldflags "-X ...cli.version=").
var version = "0.1.0-dev"

var errHelp = errors.New("help")

type flags struct {
	// The reference's flags.
	noGUI, externalAuth, localServerAuth, debug, version bool
	configFile, cacheStore, logFile                      string
	// Ours.
	demo, checkConfig                           bool
	logFormat                                   string
	eventLoops, maxLine, maxErrors, relayBuffer int
	loginTimeout, dialTimeout, tokenTimeout     time.Duration
	refreshMargin, idleTimeout                  time.Duration
	sendTimeout, imapIdle, pop3Idle, smtpIdle   time.Duration
	parkAfter                                   time.Duration
	drainTimeout                                time.Duration
	pendingLimit                                int
	frontEnd                                    string
	warmConns, mailboxLimit                     int
	warmMaxAge, imapReuse, smtpReuse            time.Duration
	statsAddr, metricsAddr                      string
	pop3IR                                      bool
}

func parseFlags(args []string, stdout, stderr io.Writer) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("emailproxy", flag.ContinueOnError)
	fs.BoolVar(&f.noGUI, "no-gui", false, "run without a GUI (accepted for compatibility: there is no GUI)")
	fs.BoolVar(&f.externalAuth, "external-auth", false, "a login to an account that needs authorising prints the URL; paste the redirected address on this terminal")
	fs.BoolVar(&f.localServerAuth, "local-server-auth", false, "a login to an account that needs authorising prints the URL; the redirect is received on redirect_uri / redirect_listen_address")
	fs.StringVar(&f.configFile, "config-file", defaultConfigFile(), "configuration file")
	fs.StringVar(&f.cacheStore, "cache-store", "", "keep cached tokens in this INI file instead of the configuration file; in Redis, shared by a fleet of proxies: redis://[user:pass@]host:port/db (rediss:// for TLS); or in AWS Secrets Manager: aws:NAME-OR-ARN or aws:PROFILE||NAME-OR-ARN. Always encrypted as in the file")
	fs.StringVar(&f.logFile, "log-file", "", "log to this file, rotated at 32 MiB with 10 backups (default: stderr)")
	fs.BoolVar(&f.debug, "debug", false, "debug logging, with a protocol trace of every line before the relay on both sides (passwords, tokens and SASL data redacted); SIGUSR1 toggles it")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	fs.BoolVar(&f.checkConfig, "check-config", false, "check the configuration file (sections, ports, accounts and flows, certificate and key files), print what it holds, and exit: 0 if it is usable, else 1")
	fs.BoolVar(&f.demo, "demo", false, "start a mock mail provider and a proxy in front of it, and print how to try it")
	fs.StringVar(&f.logFormat, "log-format", "console", "log format: console or json")
	fs.StringVar(&f.frontEnd, "front-end", "", "what serves the plaintext listeners: gnet (an event loop) or goroutines (one per connection) (default: gnet; goroutines on Windows)")
	fs.IntVar(&f.eventLoops, "event-loops", 0, "gnet event loops (default: one per CPU)")
	fs.IntVar(&f.maxLine, "max-line", 8192, "longest command line (and IMAP login literal) a client may send before login, in bytes")
	fs.IntVar(&f.maxErrors, "max-errors", 10, "bad commands before login after which a client is disconnected")
	fs.IntVar(&f.relayBuffer, "relay-buffer", 16<<10, "buffer per direction of an authenticated session, in bytes")
	fs.DurationVar(&f.loginTimeout, "login-timeout", 30*time.Second, "longest time one login may take (token, upstream connection, XOAUTH2)")
	fs.DurationVar(&f.dialTimeout, "dial-timeout", 10*time.Second, "longest time to connect, do TLS and read the greeting upstream")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", 10*time.Minute, "disconnect a client that completes no command for this long before logging in")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM (or a service stop), how long authenticated sessions may go on before they are closed; a second signal stops at once")
	fs.DurationVar(&f.sendTimeout, "send-timeout", 60*time.Second, "end a session whose client (or server) accepts no data for this long, e.g. a client that stops reading mid-download")
	fs.DurationVar(&f.imapIdle, "imap-idle-timeout", 30*time.Minute, "close an authenticated IMAP session with no traffic either way for this long (RFC 9051's minimum: 30m)")
	fs.DurationVar(&f.pop3Idle, "pop3-idle-timeout", 10*time.Minute, "close an authenticated POP3 session with no traffic either way for this long (RFC 1939's minimum: 10m)")
	fs.DurationVar(&f.parkAfter, "park-after", 5*time.Second, "an authenticated session quiet both ways this long gives up its goroutines until data comes, one goroutine watching all such sockets (Linux; 0: never)")
	fs.DurationVar(&f.smtpIdle, "smtp-idle-timeout", 5*time.Minute, "close an authenticated SMTP session with no traffic either way for this long (RFC 5321's minimum per command: 5m)")
	fs.IntVar(&f.pendingLimit, "pending-limit", 64<<10, "bytes a client may have waiting before login: unsent answers (above it, its commands wait) and unread commands (above it, it is disconnected)")
	fs.DurationVar(&f.tokenTimeout, "token-timeout", 15*time.Second, "longest time one token request may take")
	fs.DurationVar(&f.refreshMargin, "token-refresh-margin", 600*time.Second, "refresh access tokens this long before they expire")
	fs.IntVar(&f.warmConns, "warm-connections", 64, "most upstream connections kept connected ahead of logins, per server section (0: none)")
	fs.DurationVar(&f.warmMaxAge, "warm-max-age", 40*time.Second, "replace a warm upstream connection this old (servers drop idle unauthenticated ones: Exchange after 60s)")
	fs.IntVar(&f.mailboxLimit, "mailbox-limit", 16, "most concurrent upstream sessions per mailbox and server; logins over it wait in line (0: no limit)")
	fs.DurationVar(&f.imapReuse, "imap-session-reuse", 0, "keep an IMAP upstream session this long after the client's LOGOUT, for the next login of the same account and password (0: off)")
	fs.DurationVar(&f.smtpReuse, "smtp-session-reuse", 0, "keep an SMTP upstream session this long after the client's QUIT, for the next login of the same account and password (0: off)")
	fs.BoolVar(&f.pop3IR, "pop3-initial-response", false, "send POP3 AUTH XOAUTH2 with the response on the same line, saving a round trip per login (servers must accept RFC 5034 initial responses; Exchange Online documents the two-step form)")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on http://ADDR/metrics, and /healthz and /readyz (e.g. 127.0.0.1:9100; off by default)")
	fs.StringVar(&f.statsAddr, "stats-addr", "", "serve runtime and proxy statistics as JSON on http://ADDR/debug/vars (e.g. 127.0.0.1:9090; off by default)")
	usage := func(w io.Writer) {
		fmt.Fprint(w, `Usage: emailproxy [options]
       emailproxy authorise [options] ACCOUNT
       emailproxy service install|uninstall|start|stop|status [options]   (Windows)

An OAuth 2.0 + TLS proxy for IMAP4, POP3 and SMTP clients that only speak plaintext and
passwords. It reads emailproxy.py's emailproxy.config; a unique prefix of an option names
it (--config for --config-file).

Commands:
  authorise ACCOUNT   authorise an account now and store its tokens (emailproxy authorise --help)
  service ...         run as a Windows service (emailproxy service --help)

Options (emailproxy.py's):
`)
		printFlags(w, fs, func(n string) bool { return referenceFlags[n] })
		fmt.Fprint(w, "\nOptions (tuning and extras):\n")
		printFlags(w, fs, func(n string) bool { return !referenceFlags[n] })
	}
	if err := parseArgs(fs, args, stdout, stderr, usage); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "emailproxy: unexpected argument %q\nRun 'emailproxy --help' for the options.\n", fs.Arg(0))
		return nil, errors.New("unexpected argument")
	}
	for name, v := range map[string]int{"warm-connections": f.warmConns, "mailbox-limit": f.mailboxLimit} {
		if v < 0 {
			fmt.Fprintf(stderr, "emailproxy: --%s must not be negative\n", name)
			return nil, errors.New("negative flag")
		}
	}
	if f.frontEnd != "" && f.frontEnd != "gnet" && f.frontEnd != "goroutines" {
		fmt.Fprintf(stderr, "emailproxy: --front-end must be gnet or goroutines\n")
		return nil, errors.New("bad --front-end")
	}
	if f.logFormat != "console" && f.logFormat != "json" {
		fmt.Fprintf(stderr, "emailproxy: --log-format must be console or json\n")
		return nil, errors.New("bad --log-format")
	}
	return f, nil
}

func newLogger(f *flags, stderr io.Writer) (zerolog.Logger, func(), error) {
	var out io.Writer = stderr
	closer := func() {}
	if f.logFile != "" {
		// Fail now rather than lose every line later: the rotating writer
		// would create missing folders and drop what it cannot write.
		fh, err := os.OpenFile(f.logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return zerolog.Logger{}, nil, fmt.Errorf("cannot write the log file: %w", err)
		}
		fh.Close()
		lj := &lumberjack.Logger{Filename: f.logFile, MaxSize: 32, MaxBackups: 10}
		out, closer = lj, func() { lj.Close() }
	}
	if f.logFormat == "console" {
		color := false
		if fh, ok := stderr.(*os.File); ok && f.logFile == "" {
			color = isatty.IsTerminal(fh.Fd())
		}
		if color {
			out = zerolog.ConsoleWriter{Out: out, TimeFormat: consoleTimeFormat}
		} else {
			out = newConsoleWriter(out) // the same lines, ten times cheaper
		}
	}
	zerolog.DurationFieldUnit = time.Millisecond
	// Log writes go through a lock-free ring buffer drained by one
	// goroutine, so an event loop never waits on a terminal, a pipe or a disk.
	// When the ring is full, messages are dropped and counted rather than
	// stalling the proxy. The drainer sleeps until a message comes (no
	// polling interval), so an idle proxy uses no CPU.
	dw := diode.NewWriter(out, 1<<14, 0, func(missed int) {
		fmt.Fprintf(stderr, "emailproxy: %d log messages dropped (log output too slow)\n", missed)
	})
	out = dw
	inner := closer
	closer = func() { dw.Close(); inner() }
	zerolog.SetGlobalLevel(zerolog.InfoLevel)
	if f.debug {
		zerolog.SetGlobalLevel(zerolog.DebugLevel)
	}
	return zerolog.New(out).With().Timestamp().Logger(), closer, nil
}
