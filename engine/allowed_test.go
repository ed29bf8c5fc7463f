package engine

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/telemetry"
)

// A section with allowed_clients serves those addresses only (behind a
// PROXY protocol balancer: the address its header names), and a PROXY
// protocol section takes headers from proxy_protocol_from only; any other
// connection is closed without a greeting, counted, and logged once a
// minute.
func TestAllowedClients(t *testing.T) {
	eachFrontEnd(t, func(t *testing.T, fe string) {
		pop := func(up *mock.Upstream) string { return up.POPAddr }
		env := startEnv(t, envOptions{engine: Options{FrontEnd: fe}, servers: []serverSpec{
			{name: "office", proto: "POP", upstream: pop, keys: "allowed_clients = 10.0.0.0/8, 192.0.2.1"},
			{name: "here", proto: "POP", upstream: pop, keys: "allowed_clients = 127.0.0.1"},
			{name: "pp", proto: "POP", upstream: pop, keys: "proxy_protocol = True\nallowed_clients = 203.0.113.0/24"},
			{name: "elsewhere", proto: "POP", upstream: pop, keys: "proxy_protocol = True\nproxy_protocol_from = 10.0.0.0/8"}}})
		refused := func(name, reason string) uint64 {
			section := env.listenerFor(env.addrs[name]).srv.Section
			return telemetry.Set.GetOrCreateCounter(fmt.Sprintf(`emailproxy_clients_refused_total{server=%q,reason=%q}`, section, reason)).Get()
		}

		for i := range 3 {
			if _, g := proxyClient(t, env.addrs["office"], nil); g != "" {
				t.Fatalf("a client from outside allowed_clients (%d): greeted %q", i, g)
			}
		}
		p, g := proxyClient(t, env.addrs["here"], nil)
		if !strings.HasPrefix(g, "+OK") {
			t.Fatalf("a client from allowed_clients: greeting %q", g)
		}
		p.ok("USER %s", testAccount)
		p.ok("PASS pw")
		p.ok("QUIT")

		v1 := func(src string) []byte { return []byte("PROXY TCP4 " + src + " 127.0.0.1 40000 995\r\n") }
		if p, g := proxyClient(t, env.addrs["pp"], v1("203.0.113.7")); !strings.HasPrefix(g, "+OK") {
			t.Fatalf("a balanced client from allowed_clients: greeting %q", g)
		} else {
			p.ok("QUIT")
		}
		if _, g := proxyClient(t, env.addrs["pp"], v1("198.51.100.9")); g != "" {
			t.Fatalf("a balanced client from outside allowed_clients: greeted %q", g)
		}

		// A balancer outside proxy_protocol_from is refused as it connects.
		for range 2 {
			if _, g := proxyClient(t, env.addrs["elsewhere"], v1("203.0.113.7")); g != "" {
				t.Fatalf("a header from outside proxy_protocol_from: greeted %q", g)
			}
		}

		for _, c := range []struct {
			name, reason string
			want         uint64
		}{{"office", "allowed_clients", 3}, {"pp", "allowed_clients", 1}, {"here", "allowed_clients", 0},
			{"elsewhere", "proxy_protocol_from", 2}, {"pp", "proxy_protocol_from", 0}} {
			if n := refused(c.name, c.reason); n != c.want {
				t.Errorf("%s: refused for %s: %d, want %d", c.name, c.reason, n, c.want)
			}
		}
		var warned []string
		for _, l := range strings.Split(env.logs.String(), "\n") {
			if strings.Contains(l, "refused") && strings.Contains(l, `"level":"warn"`) {
				warned = append(warned, l)
			}
		}
		if len(warned) != 3 || !strings.Contains(strings.Join(warned, "\n"), `"peer":"198.51.100.9:40000"`) {
			t.Fatalf("want one warning a section, the balanced one naming the header's client; got:\n%s", strings.Join(warned, "\n"))
		}

		// A reload (SIGHUP) that adds this machine to the list serves it
		// from the next connection, and one that takes it away refuses it;
		// a session that began before goes on.
		p, _ = proxyClient(t, env.addrs["here"], nil)
		p.ok("USER %s", testAccount)
		p.ok("PASS pw")
		text, err := os.ReadFile(env.cfg.Path)
		if err != nil {
			t.Fatal(err)
		}
		swapped := strings.NewReplacer("allowed_clients = 10.0.0.0/8, 192.0.2.1", "allowed_clients = 10.0.0.0/8, 127.0.0.1",
			"allowed_clients = 127.0.0.1\n", "allowed_clients = 192.0.2.1\n").Replace(string(text))
		env.reloadWith(swapped)
		if _, g := proxyClient(t, env.addrs["office"], nil); !strings.HasPrefix(g, "+OK") {
			t.Fatalf("a client the reload allowed: greeting %q", g)
		}
		if _, g := proxyClient(t, env.addrs["here"], nil); g != "" {
			t.Fatalf("a client the reload took away: greeted %q", g)
		}
		p.ok("STAT")
		p.ok("QUIT")
	})
}
