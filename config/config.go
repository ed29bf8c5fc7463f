package config

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// Protocol is the kind of a server section.
type Protocol string

const (
	IMAP Protocol = "IMAP"
	POP  Protocol = "POP"
	SMTP Protocol = "SMTP"
)

// Server is one [IMAP-port], [POP-port] or [SMTP-port] section: a local
// listener and the upstream server it relays to.
type Server struct {
	Section        string
	Protocol       Protocol
	LocalPort      int
	LocalAddress   string // default "::" (dual stack), as the reference
	ServerAddress  string // upstream host; also TLS SNI and the verified name
	ServerPort     int
	ServerStartTLS bool
	LocalStartTLS  bool
	// ProxyProtocol: clients come through a TCP balancer that sends a
	// PROXY protocol header first (proxy_protocol), accepted only from
	// ProxyFrom (proxy_protocol_from: addresses or networks, comma
	// separated; default the loopback ones).
	ProxyProtocol bool
	ProxyFrom     string
	// AllowedClients (allowed_clients: addresses or networks, comma
	// separated; "": every address, as emailproxy.py) are the clients the
	// section serves; any other is closed without a greeting. Behind a
	// PROXY protocol balancer, the address the header names is checked.
	AllowedClients string
	LocalCertPath  string
	LocalKeyPath   string
	// LocalTLSMin is the oldest TLS version the client side takes
	// (local_tls_min_version; default TLS 1.2): 1.0 only for legacy apps
	// that can offer nothing newer.
	LocalTLSMin uint16
}

// ListenAddr is the host:port the local listener binds.
func (s *Server) ListenAddr() string {
	return joinHostPort(s.LocalAddress, s.LocalPort)
}

// UpstreamAddr is the host:port of the real mail server.
func (s *Server) UpstreamAddr() string {
	return joinHostPort(s.ServerAddress, s.ServerPort)
}

func joinHostPort(host string, port int) string {
	if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(port)
}

// Global holds the [emailproxy] options.
type Global struct {
	DeleteAccountTokenOnPasswordError         bool
	EncryptClientSecretOnFirstUse             bool
	UseLoginPasswordAsClientCredentialsSecret bool
	AllowCatchAllAccounts                     bool
	// EnrolledAccountsOnly refuses logins to accounts that hold no tokens
	// encrypted with their password (see `emailproxy authorise`), so the
	// first password tried never becomes the account's password. Ours.
	EnrolledAccountsOnly bool
}

// Config is the typed view of an emailproxy.config file.
type Config struct {
	Path    string
	File    *File
	Servers []*Server
	Global  Global
}

// GlobalSection is the section that holds the proxy-wide options.
const GlobalSection = "emailproxy"

var serverSectionRE = regexp.MustCompile(`^(IMAP|POP|SMTP)-(\d+)$`)

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("unable to load configuration file: %w", err)
	}
	defer fh.Close()
	f, err := Parse(fh)
	if err != nil {
		return nil, fmt.Errorf("unable to load configuration file %s: %w", path, err)
	}
	cfg, err := FromFile(f)
	if err != nil {
		return nil, fmt.Errorf("configuration file %s: %w", path, err)
	}
	cfg.Path = path
	return cfg, nil
}

// FromFile builds the typed configuration and validates every server
// section. Account sections are checked at login, as the reference does.
func FromFile(f *File) (*Config, error) {
	cfg := &Config{File: f}
	ports := map[int]string{}
	for _, s := range f.Sections {
		m := serverSectionRE.FindStringSubmatch(s.Name)
		if m == nil {
			continue
		}
		srv, err := parseServer(f, s.Name, Protocol(m[1]), m[2])
		if err != nil {
			return nil, err
		}
		if other, dup := ports[srv.LocalPort]; dup {
			return nil, fmt.Errorf("[%s]: local port %d is already used by [%s]", s.Name, srv.LocalPort, other)
		}
		ports[srv.LocalPort] = s.Name
		cfg.Servers = append(cfg.Servers, srv)
	}
	var err error
	g := &cfg.Global
	if g.DeleteAccountTokenOnPasswordError, err = boolKey(f, GlobalSection, "delete_account_token_on_password_error", true); err != nil {
		return nil, err
	}
	if g.EncryptClientSecretOnFirstUse, err = boolKey(f, GlobalSection, "encrypt_client_secret_on_first_use", false); err != nil {
		return nil, err
	}
	if g.UseLoginPasswordAsClientCredentialsSecret, err = boolKey(f, GlobalSection, "use_login_password_as_client_credentials_secret", false); err != nil {
		return nil, err
	}
	if g.AllowCatchAllAccounts, err = boolKey(f, GlobalSection, "allow_catch_all_accounts", false); err != nil {
		return nil, err
	}
	if g.EnrolledAccountsOnly, err = boolKey(f, GlobalSection, "enrolled_accounts_only", false); err != nil {
		return nil, err
	}
	return cfg, nil
}

func parseServer(f *File, name string, proto Protocol, portText string) (*Server, error) {
	srv := &Server{Section: name, Protocol: proto}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("[%s]: local port must be between 1 and 65535", name)
	}
	srv.LocalPort = port
	srv.LocalAddress = "::"
	if v, ok := f.Lookup(name, "local_address"); ok && v != "" {
		srv.LocalAddress = v
	}
	v, ok := f.Lookup(name, "server_address")
	if !ok || v == "" {
		return nil, fmt.Errorf("[%s]: server_address is missing", name)
	}
	srv.ServerAddress = v
	v, ok = f.Lookup(name, "server_port")
	if !ok || v == "" {
		return nil, fmt.Errorf("[%s]: server_port is missing", name)
	}
	if srv.ServerPort, err = strconv.Atoi(v); err != nil || srv.ServerPort < 1 || srv.ServerPort > 65535 {
		return nil, fmt.Errorf("[%s]: server_port %q must be a number between 1 and 65535", name, v)
	}
	legacy, err := boolKey(f, name, "starttls", false)
	if err != nil {
		return nil, err
	}
	if srv.ServerStartTLS, err = boolKey(f, name, "server_starttls", legacy); err != nil {
		return nil, err
	}
	if srv.LocalStartTLS, err = boolKey(f, name, "local_starttls", false); err != nil {
		return nil, err
	}
	if srv.ProxyProtocol, err = boolKey(f, name, "proxy_protocol", false); err != nil {
		return nil, err
	}
	srv.ProxyFrom = "127.0.0.0/8, ::1/128"
	if v, ok := f.Lookup(name, "proxy_protocol_from"); ok && strings.TrimSpace(v) != "" {
		srv.ProxyFrom = v
	}
	if _, err := srv.ProxySources(); err != nil {
		return nil, fmt.Errorf("[%s]: proxy_protocol_from: %w", name, err)
	}
	srv.AllowedClients, _ = f.Lookup(name, "allowed_clients")
	srv.AllowedClients = strings.TrimSpace(srv.AllowedClients)
	if nets, err := srv.ClientNetworks(); err != nil {
		return nil, fmt.Errorf("[%s]: allowed_clients: %w", name, err)
	} else if len(nets) == 0 && srv.AllowedClients != "" {
		return nil, fmt.Errorf("[%s]: allowed_clients %q names no address or network", name, srv.AllowedClients)
	}
	srv.LocalCertPath, _ = f.Lookup(name, "local_certificate_path")
	srv.LocalKeyPath, _ = f.Lookup(name, "local_key_path")
	if srv.LocalStartTLS && (srv.LocalCertPath == "" || srv.LocalKeyPath == "") {
		return nil, fmt.Errorf("[%s]: local_starttls needs both local_certificate_path and local_key_path", name)
	}
	srv.LocalTLSMin = tls.VersionTLS12
	if v, ok := f.Lookup(name, "local_tls_min_version"); ok && strings.TrimSpace(v) != "" {
		if srv.LocalTLSMin, ok = tlsVersions[strings.TrimSpace(v)]; !ok {
			return nil, fmt.Errorf("[%s]: local_tls_min_version %q must be 1.0, 1.1, 1.2 or 1.3", name, v)
		}
		if srv.LocalCertPath == "" || srv.LocalKeyPath == "" {
			return nil, fmt.Errorf("[%s]: local_tls_min_version needs both local_certificate_path and local_key_path", name)
		}
	}
	return srv, nil
}

// tlsVersions are local_tls_min_version's values.
var tlsVersions = map[string]uint16{"1.0": tls.VersionTLS10, "1.1": tls.VersionTLS11, "1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}

// ParseBool accepts configparser's boolean words.
func ParseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "yes", "true", "on":
		return true, nil
	case "0", "no", "false", "off":
		return false, nil
	}
	return false, fmt.Errorf("not a boolean: %q (use true/false, yes/no, on/off or 1/0)", v)
}

func boolKey(f *File, section, key string, def bool) (bool, error) {
	v, ok := f.Lookup(section, key)
	if !ok {
		return def, nil
	}
	b, err := ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("[%s] %s: %w", section, key, err)
	}
	return b, nil
}

// ProxySources are the networks a PROXY protocol header is accepted from.
func (s *Server) ProxySources() ([]netip.Prefix, error) { return networks(s.ProxyFrom) }

// ClientNetworks are the networks of allowed_clients (nil: every address).
func (s *Server) ClientNetworks() ([]netip.Prefix, error) { return networks(s.AllowedClients) }

// LoopbackClientsOnly reports whether allowed_clients admits this
// machine only: then a plaintext section on every interface still takes
// no password from the network.
func (s *Server) LoopbackClientsOnly() bool {
	nets, err := s.ClientNetworks()
	if err != nil || len(nets) == 0 {
		return false
	}
	for _, n := range nets {
		if !loopbackNetwork(n) {
			return false
		}
	}
	return true
}

// loopbackNetwork: n lies within 127.0.0.0/8 (written as IPv4 or
// IPv4-mapped IPv6) or is ::1.
func loopbackNetwork(n netip.Prefix) bool {
	a, bits := n.Addr(), n.Bits()
	switch {
	case a.Is4():
		return a.IsLoopback() && bits >= 8
	case a.Is4In6():
		return a.Unmap().IsLoopback() && bits >= 96+8
	default:
		return a.IsLoopback() && bits == 128
	}
}

// InNetworks reports whether addr is in one of nets.
func InNetworks(nets []netip.Prefix, addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, n := range nets {
		if n.Contains(addr) {
			return true
		}
	}
	return false
}

// networks parses a comma-separated list of addresses and networks.
func networks(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, part := range strings.Split(list, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if !strings.Contains(part, "/") {
			a, err := netip.ParseAddr(part)
			if err != nil {
				return nil, fmt.Errorf("%q is neither an address nor a network", part)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an address nor a network", part)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
