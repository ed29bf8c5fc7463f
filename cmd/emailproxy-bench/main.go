// Command emailproxy-bench is the bench harness. Its first part is the mock
// provider as a process of its own, which any proxy (ours, emailproxy.py,
// another) can be pointed at:
//
//	emailproxy-bench upstream --rtt 20ms --token-delay 150ms --config-out bench.config --ca-out bench-ca.pem
//
// then run the proxy with SSL_CERT_FILE=bench-ca.pem and --config-file bench.config.
// (The load generator and the report are still to come.)
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/emailproxy/emailproxy/bench/mock"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, nil))
}

func run(args []string, stdout, stderr io.Writer, stop <-chan struct{}) int {
	if len(args) == 0 || args[0] != "upstream" {
		fmt.Fprintln(stderr, "usage: emailproxy-bench upstream [flags]   (run with -h for the flags)")
		return 2
	}
	return upstream(args[1:], stdout, stderr, stop)
}

const (
	benchClientID = "bench-client"
	benchSecret   = "bench-secret"
	benchScope    = "https://outlook.office365.com/.default"
)

func upstream(args []string, stdout, stderr io.Writer, stop <-chan struct{}) int {
	fs := flag.NewFlagSet("emailproxy-bench upstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rtt := fs.Duration("rtt", 20*time.Millisecond, "simulated round-trip time of every exchange with the mail servers")
	tokenDelay := fs.Duration("token-delay", 150*time.Millisecond, "delay of every token endpoint answer")
	tokenLifetime := fs.Duration("token-lifetime", time.Hour, "lifetime of issued access tokens")
	mailboxes := fs.Int("mailboxes", 10, "number of mailboxes, box001@bench.example ...")
	messages := fs.Int("messages", 5, "small messages per mailbox")
	bigSize := fs.Int("big-size", 10<<20, "size of the one large message per mailbox, in bytes (0: none)")
	configOut := fs.String("config-out", "bench.config", "write an emailproxy.config for this provider here")
	caOut := fs.String("ca-out", "bench-ca.pem", "write the provider's CA certificate here (use it as SSL_CERT_FILE)")
	proxyPort := fs.Int("proxy-port-base", 19930, "local ports of the generated config: base (IMAP), +1 (POP3), +2 (SMTP)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	boxes := map[string][]mock.Message{}
	big := bigMessage(*bigSize)
	for i := 1; i <= *mailboxes; i++ {
		var msgs []mock.Message
		for j := 1; j <= *messages; j++ {
			msgs = append(msgs, mock.Message{UID: fmt.Sprintf("m%d", j),
				Body: []byte(fmt.Sprintf("Subject: message %d\r\n\r\nHello %d.\r\n", j, j))})
		}
		if big != nil {
			msgs = append(msgs, mock.Message{UID: "big", Body: big})
		}
		boxes[fmt.Sprintf("box%03d@bench.example", i)] = msgs
	}
	up, err := mock.Start(mock.Options{ClientID: benchClientID, ClientSecret: benchSecret, Scope: benchScope, Mailboxes: boxes, RTT: *rtt})
	if err != nil {
		fmt.Fprintln(stderr, "emailproxy-bench:", err)
		return 1
	}
	defer up.Close()
	up.Authority.SetDelay(*tokenDelay)
	up.Authority.Lifetime = *tokenLifetime
	if err := os.WriteFile(*caOut, up.CA.PEM, 0o644); err != nil {
		fmt.Fprintln(stderr, "emailproxy-bench:", err)
		return 1
	}
	if err := os.WriteFile(*configOut, benchConfig(up, *mailboxes, *proxyPort), 0o600); err != nil {
		fmt.Fprintln(stderr, "emailproxy-bench:", err)
		return 1
	}
	fmt.Fprintf(stdout, "mock provider: token %s, IMAP %s, POP3 %s, SMTP %s (TLS; RTT %v, token delay %v)\n"+
		"config: %s   CA: %s\nrun a proxy with: SSL_CERT_FILE=%s emailproxy --no-gui --config-file %s\n",
		up.TokenURL, up.IMAPAddr, up.POPAddr, up.SMTPAddr, *rtt, *tokenDelay, *configOut, *caOut, *caOut, *configOut)
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
// client_credentials shape, one account per mailbox.
func benchConfig(up *mock.Upstream, mailboxes, port int) []byte {
	var b bytes.Buffer
	section := func(kind string, p int, addr string) {
		_, up, _ := net.SplitHostPort(addr)
		fmt.Fprintf(&b, "[%s-%d]\nserver_address = localhost\nserver_port = %s\nlocal_address = 127.0.0.1\n\n", kind, p, up)
	}
	section("IMAP", port, up.IMAPAddr)
	section("POP", port+1, up.POPAddr)
	section("SMTP", port+2, up.SMTPAddr)
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
