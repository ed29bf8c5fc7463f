package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

// The upstream subcommand writes a config and a CA, and its servers
// answer over TLS trusted through that CA, with the simulated RTT.
func TestUpstreamCommand(t *testing.T) {
	dir := t.TempDir()
	cfgPath, caPath := filepath.Join(dir, "bench.config"), filepath.Join(dir, "ca.pem")
	stop := make(chan struct{})
	done := make(chan int, 1)
	var out bytes.Buffer
	go func() {
		done <- run([]string{"upstream", "--rtt", "30ms", "--mailboxes", "3", "--big-size", "1000",
			"--config-out", cfgPath, "--ca-out", caPath}, &out, &out, stop)
	}()
	var cfg *config.Config
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := config.Load(cfgPath); err == nil && len(c.Servers) == 3 {
			cfg = c
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no config written; output:\n%s", out.String())
		}
	}
	if _, err := cfg.Account("box003@bench.example"); err != nil {
		t.Fatal(err)
	}
	pem, _ := os.ReadFile(caPath)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no CA written")
	}
	srv := cfg.Servers[1] // POP
	start := time.Now()
	c, err := tls.Dial("tcp", srv.UpstreamAddr(), &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	g, _ := br.ReadString('\n')
	if !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting %q", g)
	}
	fmt.Fprint(c, "CAPA\r\n")
	if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("CAPA %q", l)
	}
	// Handshake and CAPA each cost at least one simulated round trip.
	if time.Since(start) < 60*time.Millisecond {
		t.Fatalf("RTT not simulated: %v", time.Since(start))
	}
	close(stop)
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	if code := run(nil, &out, &out, nil); code != 2 {
		t.Fatal("no subcommand accepted")
	}
}
