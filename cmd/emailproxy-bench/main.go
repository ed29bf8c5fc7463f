// Command emailproxy-bench is the bench harness.
//
//	emailproxy-bench run [flags]
//
// starts a mock provider (TLS IMAP, POP3, SMTP and a token endpoint, with
// a simulated round-trip time), starts the proxy under test as a separate
// process, runs fleets of polling clients against the provider directly
// and through the proxy, and reports both side by side.
//
//	emailproxy-bench upstream --rtt 20ms --token-delay 150ms --config-out bench.config --ca-out bench-ca.pem
//
// runs only the mock provider, for pointing any proxy at it by hand (with
// SSL_CERT_FILE=bench-ca.pem and --config-file bench.config).
//
//	emailproxy-bench proxy [emailproxy flags]
//
// is the emailproxy command itself; `run` starts it this way by default so
// that the harness always measures the proxy built with it.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/cmd/internal/cli"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, nil))
}

func run(args []string, stdout, stderr io.Writer, stop <-chan struct{}) int {
	if len(args) > 0 {
		switch args[0] {
		case "run":
			return runBench(args[1:], stdout, stderr)
		case "upstream":
			return upstream(args[1:], stdout, stderr, stop)
		case "proxy":
			return cli.Run(args[1:], stdout, stderr, stop)
		}
	}
	fmt.Fprintln(stderr, "usage: emailproxy-bench run|upstream|proxy [flags]   (-h after a subcommand lists its flags)")
	return 2
}

// mockFlags shape the mock provider.
type mockFlags struct {
	rtt, tokenDelay, tokenLifetime         time.Duration
	mailboxes, messages, bigSize, bigBoxes int
	mailboxLimit                           int
	classical                              bool
	tokenFailRate, dropRate                float64
	preAuthTimeout                         time.Duration
}

func (m *mockFlags) register(fs *flag.FlagSet, mailboxes int) {
	fs.DurationVar(&m.rtt, "rtt", 20*time.Millisecond, "simulated round-trip time of every exchange with the mail servers")
	fs.DurationVar(&m.tokenDelay, "token-delay", 150*time.Millisecond, "delay of every token endpoint answer")
	fs.DurationVar(&m.tokenLifetime, "token-lifetime", time.Hour, "lifetime of issued access tokens")
	fs.IntVar(&m.mailboxes, "mailboxes", mailboxes, "number of mailboxes (accounts), box001@bench.example ...")
	fs.IntVar(&m.messages, "messages", 5, "small messages per mailbox")
	fs.IntVar(&m.bigSize, "big-size", 10<<20, "size of the large message, in bytes (0: none)")
	fs.IntVar(&m.bigBoxes, "big-mailboxes", 4, "how many mailboxes (the first ones) hold the large message")
	fs.Float64Var(&m.tokenFailRate, "fault-token-rate", 0, "fault: answer this fraction of token requests with 503, at random")
	fs.Float64Var(&m.dropRate, "fault-drop-rate", 0, "fault: close this fraction of new mail server connections at once, at random")
	fs.DurationVar(&m.preAuthTimeout, "pre-auth-timeout", 60*time.Second, "POP3 servers say -ERR and close a connection not authenticated this long, like Exchange Online (0: never)")
	fs.BoolVar(&m.classical, "classical-tls", false, "the provider's TLS chooses classical key exchanges only (X25519, P-256), like servers without post-quantum support (default: Go's, X25519MLKEM768 first)")
	fs.IntVar(&m.mailboxLimit, "mailbox-limit", 16, "the provider refuses a mailbox's IMAP or POP3 sessions beyond this many at once, like Exchange Online (0: no limit)")
}

// start runs the mock provider.
func (m *mockFlags) start() (*mock.Upstream, error) {
	boxes := map[string][]mock.Message{}
	big := bigMessage(m.bigSize)
	for i := 1; i <= m.mailboxes; i++ {
		var msgs []mock.Message
		for j := 1; j <= m.messages; j++ {
			msgs = append(msgs, mock.Message{UID: fmt.Sprintf("m%d", j),
				Body: []byte(fmt.Sprintf("Subject: message %d\r\n\r\nHello %d.\r\n", j, j))})
		}
		if big != nil && i <= m.bigBoxes {
			msgs = append(msgs, mock.Message{UID: "big", Body: big})
		}
		boxes[fmt.Sprintf("box%03d@bench.example", i)] = msgs
	}
	up, err := mock.Start(mock.Options{ClientID: benchClientID, ClientSecret: benchSecret, Scope: benchScope,
		Mailboxes: boxes, RTT: m.rtt, MailboxLimit: m.mailboxLimit, DropRate: m.dropRate, PreAuthTimeout: m.preAuthTimeout,
		ClassicalKeyExchange: m.classical})
	if err != nil {
		return nil, err
	}
	up.Authority.SetDelay(m.tokenDelay)
	up.Authority.SetFailRate(m.tokenFailRate)
	up.Authority.Lifetime = m.tokenLifetime
	return up, nil
}

const (
	benchClientID = "bench-client"
	benchSecret   = "bench-secret"
	benchScope    = "https://outlook.office365.com/.default"
)

func upstream(args []string, stdout, stderr io.Writer, stop <-chan struct{}) int {
	fs := flag.NewFlagSet("emailproxy-bench upstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var mf mockFlags
	mf.register(fs, 10)
	// Outside the working directory by default: a run from the repository
	// must not leave files in it.
	tmp := filepath.Join(os.TempDir(), "emailproxy-bench")
	configOut := fs.String("config-out", filepath.Join(tmp, "bench.config"), "write an emailproxy.config for this provider here")
	caOut := fs.String("ca-out", filepath.Join(tmp, "bench-ca.pem"), "write the provider's CA certificate here (use it as SSL_CERT_FILE)")
	proxyPort := fs.Int("proxy-port-base", 19930, "local ports of the generated config: base (IMAP), +1 (POP3), +2 (SMTP)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for _, p := range []string{*configOut, *caOut} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			fmt.Fprintln(stderr, "emailproxy-bench:", err)
			return 1
		}
	}
	up, err := mf.start()
	if err != nil {
		fmt.Fprintln(stderr, "emailproxy-bench:", err)
		return 1
	}
	defer up.Close()
	if err := os.WriteFile(*caOut, up.CA.PEM, 0o644); err != nil {
		fmt.Fprintln(stderr, "emailproxy-bench:", err)
		return 1
	}
	if err := os.WriteFile(*configOut, benchConfig(up, mf.mailboxes, [3]int{*proxyPort, *proxyPort + 1, *proxyPort + 2}), 0o600); err != nil {
		fmt.Fprintln(stderr, "emailproxy-bench:", err)
		return 1
	}
	fmt.Fprintf(stdout, "mock provider: token %s, IMAP %s, POP3 %s, SMTP %s (TLS; RTT %v, token delay %v)\n"+
		"config: %s   CA: %s\nrun a proxy with: SSL_CERT_FILE=%s emailproxy --no-gui --config-file %s\n",
		up.TokenURL, up.IMAPAddr, up.POPAddr, up.SMTPAddr, mf.rtt, mf.tokenDelay, *configOut, *caOut, *caOut, *configOut)
	if stop == nil {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		ch := make(chan struct{})
		go func() { <-sig; close(ch) }()
		stop = ch
	}
	<-stop
	return 0
}

// benchConfig is an emailproxy.config in the Exchange Online
// client_credentials shape, one account per mailbox, with local ports
// for IMAP, POP3 and SMTP.
func benchConfig(up *mock.Upstream, mailboxes int, ports [3]int) []byte {
	var b bytes.Buffer
	section := func(kind string, p int, addr string) {
		_, up, _ := net.SplitHostPort(addr)
		fmt.Fprintf(&b, "[%s-%d]\nserver_address = localhost\nserver_port = %s\nlocal_address = 127.0.0.1\n\n", kind, p, up)
	}
	section("IMAP", ports[0], up.IMAPAddr)
	section("POP", ports[1], up.POPAddr)
	section("SMTP", ports[2], up.SMTPAddr)
	for i := 1; i <= mailboxes; i++ {
		fmt.Fprintf(&b, "[box%03d@bench.example]\ntoken_url = %s\noauth2_scope = %s\noauth2_flow = client_credentials\nclient_id = %s\nclient_secret = %s\n\n",
			i, up.TokenURL, benchScope, benchClientID, benchSecret)
	}
	return b.Bytes()
}

// bigMessage is a message of about size bytes with lines that start with
// dots, to exercise dot-stuffing.
func bigMessage(size int) []byte {
	if size <= 0 {
		return nil
	}
	var b bytes.Buffer
	b.WriteString("Subject: large\r\n\r\n")
	line := strings.Repeat("0123456789", 7) + "\r\n"
	for i := 0; b.Len() < size; i++ {
		if i%10 == 0 {
			b.WriteString(".dot line\r\n")
			continue
		}
		b.WriteString(line)
	}
	return b.Bytes()
}
