package cli

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"

	"github.com/emailproxy/emailproxy/auth"
	"github.com/emailproxy/emailproxy/config"
)

// authorise is `emailproxy authorise ACCOUNT`: run the account's OAuth 2.0
// flow now, headless, and store its tokens encrypted with the password the
// mail app will use. Afterwards that password, and only it, logs in.
func authorise(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("emailproxy authorise", flag.ContinueOnError)
	configFile := fs.String("config-file", defaultConfigFile(), "configuration file")
	cacheStore := fs.String("cache-store", "", "where the proxy keeps its tokens, if not in the configuration file: a file, redis://..., or aws:...")
	localServer := fs.Bool("local-server-auth", false, "receive the browser's redirect on redirect_uri (or redirect_listen_address) instead of pasting it")
	fs.Bool("external-auth", true, "paste the redirected address into the terminal (the default)")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to wait for the authorisation")
	usage := func(w io.Writer) {
		fmt.Fprint(w, "Usage: emailproxy authorise [options] ACCOUNT\n\n"+
			"Authorises ACCOUNT now and stores its tokens encrypted with the password you enter\n"+
			"(the one the mail app will use). The password is read from the terminal, or from the\n"+
			"first line of standard input.\n\nOptions:\n")
		printFlags(w, fs, func(string) bool { return true })
	}
	// Flags may come before or after the account.
	var account string
	rest := args
	for {
		if err := parseArgs(fs, rest, stdout, stderr, usage); err != nil {
			if err == errHelp {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		if account != "" {
			fmt.Fprintf(stderr, "emailproxy authorise: one account at a time (%q and %q)\n", account, fs.Arg(0))
			return 2
		}
		account, rest = fs.Arg(0), fs.Args()[1:]
	}
	if account == "" {
		fmt.Fprintln(stderr, "emailproxy authorise: which account? Run 'emailproxy authorise --help' for the options.")
		return 2
	}
	cfg, err := config.Load(*configFile)
	if err != nil {
		fmt.Fprintln(stderr, "emailproxy:", err)
		return 1
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, NoColor: true}).Level(zerolog.WarnLevel)
	store, closeStore, err := openStore(*cacheStore, cfg.Path, log)
	if err != nil {
		fmt.Fprintln(stderr, "emailproxy:", err)
		return 1
	}
	defer closeStore()
	p := auth.NewProvider(cfg, auth.Options{Store: store.Store, StoreIsConfig: store.isConfig, Logger: log, TokenTimeout: time.Minute})
	defer p.Close()

	in := bufio.NewReader(stdin)
	password, err := readPassword(account, stdin, in, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "emailproxy:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := p.Authorise(ctx, account, password, auth.Prompt{In: in, Out: stdout, LocalServer: *localServer}); err != nil {
		fmt.Fprintln(stderr, "emailproxy:", err)
		return 1
	}
	where := cfg.Path
	if *cacheStore != "" {
		where = auth.RedactStoreURL(*cacheStore)
	}
	fmt.Fprintf(stdout, "Account %s is authorised; its tokens are stored encrypted in %s.\n", account, where)
	return 0
}

func readPassword(account string, stdin io.Reader, in *bufio.Reader, out io.Writer) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprintf(out, "Password for %s (the one your mail app will use): ", account)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(out)
		if err != nil {
			return "", err
		}
		return string(b), nil
	}
	line, err := in.ReadString('\n')
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("no password on standard input: %v", err)
	}
	return line, nil
}
