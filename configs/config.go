// Package configs holds creditgate's configuration: one YAML file mapped
// onto typed structs with defaults, validated as a whole. Every key is
// documented in creditgate.example.yaml beside this file.
package configs

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/creditgate/creditgate/rating"
	"github.com/shopspring/decimal"
	"gopkg.in/yaml.v3"
)

// Config is the whole configuration.
type Config struct {
	DataDir string  `yaml:"data_dir"`
	SIP     SIP     `yaml:"sip"`
	HTTP    HTTP    `yaml:"http"`
	Funding Funding `yaml:"funding"`
	// Payments is how auto-recharge pays; without an API key purchases
	// are not started (auto-recharge cannot be enabled).
	Payments Payments `yaml:"payments"`
	// Notify is how notifications reach orgs' contacts.
	Notify Notify `yaml:"notify"`
	Rating Rating `yaml:"rating"`
	Fraud  Fraud  `yaml:"fraud"`
	// Catalog is the plan catalogue (minute pools, zone A, inbound
	// toll-free rates); keys given replace the built-in ones.
	Catalog rating.Catalog `yaml:"catalog"`
	Log     Log            `yaml:"log"`
	// Cluster is cluster mode (several nodes on etcd); off by default.
	Cluster Cluster `yaml:"cluster"`
}

// SIP is the gateway's SIP side.
type SIP struct {
	Listen          string        `yaml:"listen"`
	RingTimeout     time.Duration `yaml:"ring_timeout"`
	ByeTimeout      time.Duration `yaml:"bye_timeout"`
	MaxCalls        int           `yaml:"max_calls"`
	MaxPending      int           `yaml:"max_pending"`
	FailoverTimeout time.Duration `yaml:"failover_timeout"`
	DrainTimeout    time.Duration `yaml:"drain_timeout"`
	// TransactionLinger is how long a finished transaction is kept to
	// absorb retransmissions: RFC 3261's 64×T1 (32 s) for answered INVITEs
	// and BYEs is what sipgo does by default; Kamailio's tm keeps them 5 s
	// (wt_timer). At thousands of calls/s it is most of the gateway's memory.
	TransactionLinger time.Duration `yaml:"transaction_linger"`
	// SIP over TLS: off unless tls_listen is set, which then needs a
	// certificate and key (PEM files). tls_ca (PEM) replaces the system
	// roots for verifying carriers reached with transport=tls.
	TLSListen string `yaml:"tls_listen"`
	TLSCert   string `yaml:"tls_cert"`
	TLSKey    string `yaml:"tls_key"`
	TLSCA     string `yaml:"tls_ca"`
	// RatePerSource limits new calls per source IP address (calls a
	// second; 0: no limit), with BurstPerSource at once.
	RatePerSource  float64 `yaml:"rate_per_source"`
	BurstPerSource int     `yaml:"burst_per_source"`
	// TrustedProxies are the SIP front proxies (CIDRs, IPs or IP:ports,
	// as trunk addresses) whose SourceHeader — the address they received
	// the request from — stands for the packet's source in trunk matching
	// and the per-source rate (gateway/front.go). Empty: none trusted.
	TrustedProxies []string `yaml:"trusted_proxies"`
	SourceHeader   string   `yaml:"source_header"`
	// SIP TCP/TLS connections (counted together) accepted at once, in all
	// and per source IP address; past either, a new connection is closed
	// as soon as accepted. ReservedFDs lowers MaxConnections to the
	// process's NOFILE limit minus that many, so the admin API and the
	// store always have descriptors. A connection that has sent nothing
	// for ConnectionIdleTimeout and carries no call up is closed.
	MaxConnections          int           `yaml:"max_connections"`
	MaxConnectionsPerSource int           `yaml:"max_connections_per_source"`
	ReservedFDs             int           `yaml:"reserved_fds"`
	ConnectionIdleTimeout   time.Duration `yaml:"connection_idle_timeout"`
	// Liveness (README, No customer pays for a call nobody is on):
	// RFC 4028 session interval and the smallest one a caller may ask
	// for; in-dialog OPTIONS keepalive every KeepaliveInterval, a leg
	// lost when one is not answered within KeepaliveTimeout; calls end
	// at MaxCallDuration (0: no limit).
	SessionExpires    time.Duration `yaml:"session_expires"`
	MinSE             time.Duration `yaml:"min_se"`
	KeepaliveInterval time.Duration `yaml:"keepalive_interval"`
	KeepaliveTimeout  time.Duration `yaml:"keepalive_timeout"`
	MaxCallDuration   time.Duration `yaml:"max_call_duration"`
}

// HTTP is the admin API.
type HTTP struct {
	Listen     string `yaml:"listen"`
	AdminToken string `yaml:"admin_token"`
	// TLSCert and TLSKey (PEM files), when set, serve the admin API over
	// HTTPS only.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// Limits for slow, stalled and idle clients (see api.Limits).
	ReadTimeout   time.Duration `yaml:"read_timeout"`
	WriteTimeout  time.Duration `yaml:"write_timeout"`
	IdleTimeout   time.Duration `yaml:"idle_timeout"`
	MaxConns      int           `yaml:"max_conns"`
	MaxConnsPerIP int           `yaml:"max_conns_per_ip"`
	MaxExports    int           `yaml:"max_exports"`
	// Console is the web console under /console/ (package console).
	Console Console `yaml:"console"`
}

// Console is the web console on the admin listener.
type Console struct {
	Enabled bool `yaml:"enabled"`
	// SessionTTL is how long a sign-in lasts; sessions are in memory, so
	// a restart signs everyone out sooner.
	SessionTTL time.Duration `yaml:"session_ttl"`
	// MaxSessions bounds the sessions kept at once.
	MaxSessions int `yaml:"max_sessions"`
	// SecureCookie marks the session cookie Secure even on plain HTTP
	// (behind a TLS-terminating proxy); with http.tls_cert it is Secure
	// anyway.
	SecureCookie bool `yaml:"secure_cookie"`
}

// Funding rules.
type Funding struct {
	Minimum string `yaml:"minimum"`
}

// Payments configures the payment provider (Stripe).
type Payments struct {
	// StripeAPIKey is the secret key; StripeAPIKeyFile a file holding it,
	// and CREDITGATE_STRIPE_API_KEY the environment variable, both kinder
	// to secrets than the config file.
	StripeAPIKey     string        `yaml:"stripe_api_key"`
	StripeAPIKeyFile string        `yaml:"stripe_api_key_file"`
	StripeBaseURL    string        `yaml:"stripe_base_url"`
	RetryBackoff     time.Duration `yaml:"retry_backoff"`
	MaxBackoff       time.Duration `yaml:"max_backoff"`
	MaxAttempts      int           `yaml:"max_attempts"`
}

// Notify configures notification delivery.
type Notify struct {
	SMTP         SMTP          `yaml:"smtp"`
	RetryBackoff time.Duration `yaml:"retry_backoff"`
	MaxBackoff   time.Duration `yaml:"max_backoff"`
	// LowBalanceHorizon: warn an org (without working auto-recharge) whose
	// forecast reaches zero within it; at most once per LowBalanceEvery.
	LowBalanceHorizon time.Duration `yaml:"low_balance_horizon"`
	LowBalanceEvery   time.Duration `yaml:"low_balance_every"`
}

// SMTP is the mail relay; no host means no email (webhooks still go).
type SMTP struct {
	Host     string `yaml:"host"`
	Port     int    `yaml:"port"`
	Username string `yaml:"username"`
	// Password, or PasswordFile, or CREDITGATE_SMTP_PASSWORD.
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	From         string `yaml:"from"`
	TLS          string `yaml:"tls"` // starttls (default), tls, none
}

// Fraud is the fraud guard's gateway-wide part; per-org limits are set
// through the admin API.
type Fraud struct {
	// HighRiskPrefixes are destinations (E.164 digits, no +) known for
	// international revenue share fraud; orgs call them only when their
	// fraud guard allows high-risk destinations.
	HighRiskPrefixes []string `yaml:"high_risk_prefixes"`
}

// DefaultHighRisk are ranges that carriers' fraud desks list again and again
// for revenue-share fraud: small island and satellite networks with high
// termination rates, and countries whose ranges are resold. A starting
// point; an operator keeps it current from its carriers' fraud feeds.
var DefaultHighRisk = []string{
	"53",  // Cuba
	"216", // Tunisia
	"224", // Guinea
	"231", // Liberia
	"232", // Sierra Leone
	"235", // Chad
	"239", // São Tomé and Príncipe
	"245", // Guinea-Bissau
	"246", // Diego Garcia
	"252", // Somalia
	"269", // Comoros
	"290", // Saint Helena
	"370", // Lithuania
	"371", // Latvia
	"500", // Falkland Islands
	"674", // Nauru
	"675", // Papua New Guinea
	"677", // Solomon Islands
	"678", // Vanuatu
	"682", // Cook Islands
	"683", // Niue
	"686", // Kiribati
	"688", // Tuvalu
	"690", // Tokelau
	"691", // Micronesia
	"692", // Marshall Islands
	"870", // Inmarsat
	"881", // global mobile satellite systems
	"882", // international networks
	"883", // international networks
	"960", // Maldives
	"979", // international premium rate
}

// Rating settings.
type Rating struct {
	DeckFile string `yaml:"deck_file"`
}

// Log settings.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// Default is the configuration creditgate runs on with no file and no flags.
func Default() Config {
	return Config{
		DataDir: "./creditgate-data",
		SIP: SIP{Listen: "127.0.0.1:5060", TransactionLinger: 5 * time.Second, RingTimeout: 120 * time.Second, ByeTimeout: 5 * time.Second, MaxCalls: 10000,
			MaxPending: 1000, DrainTimeout: 60 * time.Second, FailoverTimeout: 3 * time.Second,
			TrustedProxies: []string{}, SourceHeader: "X-AUTH-IP",
			MaxConnections: 2048, MaxConnectionsPerSource: 128, ReservedFDs: 256, ConnectionIdleTimeout: 120 * time.Second,
			SessionExpires: 1800 * time.Second, MinSE: 90 * time.Second, KeepaliveInterval: 30 * time.Second,
			KeepaliveTimeout: 8 * time.Second, MaxCallDuration: 4 * time.Hour},
		HTTP: HTTP{Listen: "127.0.0.1:8080", ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
			IdleTimeout: 60 * time.Second, MaxConns: 1024, MaxConnsPerIP: 256, MaxExports: 16,
			Console: Console{Enabled: true, SessionTTL: 8 * time.Hour, MaxSessions: 1000}},
		Funding: Funding{Minimum: "50.00"},
		Fraud:   Fraud{HighRiskPrefixes: slices.Clone(DefaultHighRisk)},
		Payments: Payments{StripeBaseURL: "https://api.stripe.com", RetryBackoff: 2 * time.Second,
			MaxBackoff: 10 * time.Minute, MaxAttempts: 12},
		Notify: Notify{SMTP: SMTP{TLS: "starttls"}, RetryBackoff: 5 * time.Second, MaxBackoff: 15 * time.Minute,
			LowBalanceHorizon: 72 * time.Hour, LowBalanceEvery: 24 * time.Hour},
		Catalog: rating.DefaultCatalog(),
		Log:     Log{Level: "info", Format: "text"},
		Cluster: Cluster{Prefix: "/creditgate/", LeaseTTL: 5 * time.Second, LeaseMargin: time.Second,
			KeepaliveEvery: time.Second, OpTimeout: 2 * time.Second, PeerTimeout: 2 * time.Second},
	}
}

// Example is the documented example file, every key with its default.
//
//go:embed creditgate.example.yaml
var Example []byte

// MaxFileSize bounds the config file.
const MaxFileSize = 1 << 20

// Load reads path over the defaults. Unknown keys are errors, so a typo is
// caught at start rather than silently ignored.
func Load(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	if len(b) > MaxFileSize {
		return Config{}, fmt.Errorf("config %s: larger than %d bytes", path, MaxFileSize)
	}
	c, err := Parse(b)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse reads YAML over the defaults and validates the result.
func Parse(b []byte) (Config, error) {
	c := Default()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, err
	}
	return c, c.Validate()
}

// Validate names the first bad key. It is long on purpose: one check per
// key, in the example file's order, is the list an operator reads to learn
// the ranges; split into helpers it would be the same checks, harder to
// scan.
func (c Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...))
	}
	if c.DataDir == "" {
		return bad("data_dir", "must not be empty")
	}
	if _, _, err := net.SplitHostPort(c.SIP.Listen); err != nil {
		return bad("sip.listen", "%q is not host:port", c.SIP.Listen)
	}
	if c.SIP.RingTimeout < time.Second || c.SIP.RingTimeout > 10*time.Minute {
		return bad("sip.ring_timeout", "want 1s to 10m, got %s", c.SIP.RingTimeout)
	}
	if c.SIP.ByeTimeout < 100*time.Millisecond || c.SIP.ByeTimeout > time.Minute {
		return bad("sip.bye_timeout", "want 100ms to 1m, got %s", c.SIP.ByeTimeout)
	}
	if c.SIP.MaxCalls < 1 || c.SIP.MaxCalls > 1_000_000 {
		return bad("sip.max_calls", "want 1 to 1000000, got %d", c.SIP.MaxCalls)
	}
	if c.SIP.MaxPending < 1 || c.SIP.MaxPending > 1_000_000 {
		return bad("sip.max_pending", "want 1 to 1000000, got %d", c.SIP.MaxPending)
	}
	if c.SIP.FailoverTimeout < 100*time.Millisecond || c.SIP.FailoverTimeout > time.Minute {
		return bad("sip.failover_timeout", "want 100ms to 1m, got %s", c.SIP.FailoverTimeout)
	}
	if c.SIP.TLSListen != "" {
		if _, _, err := net.SplitHostPort(c.SIP.TLSListen); err != nil {
			return bad("sip.tls_listen", "%q is not host:port", c.SIP.TLSListen)
		}
		if c.SIP.TLSCert == "" || c.SIP.TLSKey == "" {
			return bad("sip.tls_cert", "tls_listen needs tls_cert and tls_key (PEM files)")
		}
	}
	if c.SIP.TransactionLinger < time.Second || c.SIP.TransactionLinger > 32*time.Second {
		return bad("sip.transaction_linger", "want 1s to 32s, got %s", c.SIP.TransactionLinger)
	}
	if c.SIP.RatePerSource < 0 || c.SIP.RatePerSource > 1e6 {
		return bad("sip.rate_per_source", "want 0 (no limit) to 1000000 calls a second, got %v", c.SIP.RatePerSource)
	}
	if c.SIP.BurstPerSource < 0 || c.SIP.BurstPerSource > 1e6 {
		return bad("sip.burst_per_source", "want 0 (the rate) to 1000000, got %d", c.SIP.BurstPerSource)
	}
	if len(c.SIP.TrustedProxies) > maxTrustedProxies {
		return bad("sip.trusted_proxies", "at most %d entries, got %d", maxTrustedProxies, len(c.SIP.TrustedProxies))
	}
	for i, a := range c.SIP.TrustedProxies {
		if !isAddressOrCIDR(a) {
			return bad(fmt.Sprintf("sip.trusted_proxies[%d]", i), "%q: want a CIDR (10.0.0.0/24), an IP, or IP:port", a)
		}
	}
	if !isHeaderName(c.SIP.SourceHeader) {
		return bad("sip.source_header", "%q is not a SIP header name (an RFC 3261 token, at most 64 characters)", c.SIP.SourceHeader)
	}
	if c.SIP.DrainTimeout < 0 || c.SIP.DrainTimeout > 24*time.Hour {
		return bad("sip.drain_timeout", "want 0s to 24h, got %s", c.SIP.DrainTimeout)
	}
	if c.SIP.MaxConnections < 1 || c.SIP.MaxConnections > 1_000_000 {
		return bad("sip.max_connections", "want 1 to 1000000, got %d", c.SIP.MaxConnections)
	}
	if c.SIP.MaxConnectionsPerSource < 1 || c.SIP.MaxConnectionsPerSource > c.SIP.MaxConnections {
		return bad("sip.max_connections_per_source", "want 1 to sip.max_connections (%d), got %d", c.SIP.MaxConnections, c.SIP.MaxConnectionsPerSource)
	}
	if c.SIP.ReservedFDs < 16 || c.SIP.ReservedFDs > 1_000_000 {
		return bad("sip.reserved_fds", "want 16 to 1000000, got %d", c.SIP.ReservedFDs)
	}
	if c.SIP.MinSE < 90*time.Second || c.SIP.MinSE > c.SIP.SessionExpires || c.SIP.SessionExpires > 24*time.Hour {
		return bad("sip.session_expires", "want sip.min_se ≥ 90s (RFC 4028) and min_se ≤ session_expires ≤ 24h, got %s and %s", c.SIP.MinSE, c.SIP.SessionExpires)
	}
	if c.SIP.KeepaliveInterval < time.Second || c.SIP.KeepaliveInterval > time.Hour {
		return bad("sip.keepalive_interval", "want 1s to 1h, got %s", c.SIP.KeepaliveInterval)
	}
	if c.SIP.KeepaliveTimeout < 100*time.Millisecond || c.SIP.KeepaliveTimeout > c.SIP.KeepaliveInterval {
		return bad("sip.keepalive_timeout", "want 100ms to sip.keepalive_interval, got %s", c.SIP.KeepaliveTimeout)
	}
	if c.SIP.MaxCallDuration < 0 || c.SIP.MaxCallDuration > 7*24*time.Hour {
		return bad("sip.max_call_duration", "want 0 (no limit) to 168h, got %s", c.SIP.MaxCallDuration)
	}
	if c.SIP.ConnectionIdleTimeout < time.Second || c.SIP.ConnectionIdleTimeout > 24*time.Hour {
		return bad("sip.connection_idle_timeout", "want 1s to 24h, got %s", c.SIP.ConnectionIdleTimeout)
	}
	if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
		return bad("http.listen", "%q is not host:port", c.HTTP.Listen)
	}
	if (c.HTTP.TLSCert == "") != (c.HTTP.TLSKey == "") {
		return bad("http.tls_cert", "give both tls_cert and tls_key, or neither")
	}
	if c.HTTP.ReadTimeout < time.Second || c.HTTP.ReadTimeout > time.Hour {
		return bad("http.read_timeout", "want 1s to 1h, got %s", c.HTTP.ReadTimeout)
	}
	if c.HTTP.WriteTimeout < time.Second || c.HTTP.WriteTimeout > time.Hour {
		return bad("http.write_timeout", "want 1s to 1h, got %s", c.HTTP.WriteTimeout)
	}
	if c.HTTP.IdleTimeout < time.Second || c.HTTP.IdleTimeout > time.Hour {
		return bad("http.idle_timeout", "want 1s to 1h, got %s", c.HTTP.IdleTimeout)
	}
	if c.HTTP.MaxConns < 1 || c.HTTP.MaxConns > 1_000_000 {
		return bad("http.max_conns", "want 1 to 1000000, got %d", c.HTTP.MaxConns)
	}
	if c.HTTP.MaxConnsPerIP < 0 || c.HTTP.MaxConnsPerIP > c.HTTP.MaxConns {
		return bad("http.max_conns_per_ip", "want 0 (no limit) to max_conns (%d), got %d", c.HTTP.MaxConns, c.HTTP.MaxConnsPerIP)
	}
	if c.HTTP.MaxExports < 1 || c.HTTP.MaxExports > 10_000 {
		return bad("http.max_exports", "want 1 to 10000, got %d", c.HTTP.MaxExports)
	}
	if cs := c.HTTP.Console; cs.Enabled {
		if cs.SessionTTL < time.Minute || cs.SessionTTL > 30*24*time.Hour {
			return bad("http.console.session_ttl", "want 1m to 720h, got %s", cs.SessionTTL)
		}
		if cs.MaxSessions < 1 || cs.MaxSessions > 1_000_000 {
			return bad("http.console.max_sessions", "want 1 to 1000000, got %d", cs.MaxSessions)
		}
	}
	if c.HTTP.AdminToken != "" && len(c.HTTP.AdminToken) < 16 {
		return bad("http.admin_token", "at least 16 characters, or leave empty to generate one")
	}
	m, err := decimal.NewFromString(c.Funding.Minimum)
	if err != nil || !m.IsPositive() || m.Exponent() < -2 {
		return bad("funding.minimum", "%q: want a positive amount like \"50.00\"", c.Funding.Minimum)
	}
	if len(c.Fraud.HighRiskPrefixes) > 10_000 {
		return bad("fraud.high_risk_prefixes", "at most 10000")
	}
	for i, p := range c.Fraud.HighRiskPrefixes {
		if p == "" || len(p) > 15 || strings.Trim(p, "0123456789") != "" {
			return bad(fmt.Sprintf("fraud.high_risk_prefixes[%d]", i), "%q: want E.164 digits without +, like \"252\"", p)
		}
	}
	if err := c.Payments.validate(bad); err != nil {
		return err
	}
	if err := c.Notify.validate(bad); err != nil {
		return err
	}
	if err := c.Cluster.validate(bad); err != nil {
		return err
	}
	if err := c.Catalog.Validate(); err != nil {
		return err
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return bad("log.format", "%q: want text or json", c.Log.Format)
	}
	return nil
}

// MinFunding is Funding.Minimum as money (Validate has checked it).
func (c Config) MinFunding() decimal.Decimal { return decimal.RequireFromString(c.Funding.Minimum) }

func (p Payments) validate(bad func(string, string, ...any) error) error {
	if p.StripeAPIKey != "" && p.StripeAPIKeyFile != "" {
		return bad("payments.stripe_api_key_file", "give the key or a file holding it, not both")
	}
	if u, err := url.Parse(p.StripeBaseURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return bad("payments.stripe_base_url", "%q: want an http(s) URL", p.StripeBaseURL)
	}
	if p.RetryBackoff < 10*time.Millisecond || p.RetryBackoff > time.Hour {
		return bad("payments.retry_backoff", "want 10ms to 1h, got %s", p.RetryBackoff)
	}
	if p.MaxBackoff < p.RetryBackoff || p.MaxBackoff > 24*time.Hour {
		return bad("payments.max_backoff", "want retry_backoff to 24h, got %s", p.MaxBackoff)
	}
	if p.MaxAttempts < 1 || p.MaxAttempts > 1000 {
		return bad("payments.max_attempts", "want 1 to 1000, got %d", p.MaxAttempts)
	}
	return nil
}

func (n Notify) validate(bad func(string, string, ...any) error) error {
	s := n.SMTP
	if s.Host != "" {
		if a, err := mail.ParseAddress(s.From); err != nil || a.Address != s.From {
			return bad("notify.smtp.from", "%q: want a bare address like billing@operator.example", s.From)
		}
		if s.Port < 0 || s.Port > 65535 {
			return bad("notify.smtp.port", "want 1 to 65535 (0: the TLS mode's default), got %d", s.Port)
		}
	}
	switch s.TLS {
	case "starttls", "tls", "none":
	default:
		return bad("notify.smtp.tls", "%q: want starttls, tls or none", s.TLS)
	}
	if s.Password != "" && s.PasswordFile != "" {
		return bad("notify.smtp.password_file", "give the password or a file holding it, not both")
	}
	if n.RetryBackoff < 10*time.Millisecond || n.RetryBackoff > time.Hour {
		return bad("notify.retry_backoff", "want 10ms to 1h, got %s", n.RetryBackoff)
	}
	if n.MaxBackoff < n.RetryBackoff || n.MaxBackoff > 24*time.Hour {
		return bad("notify.max_backoff", "want retry_backoff to 24h, got %s", n.MaxBackoff)
	}
	if n.LowBalanceHorizon < time.Hour || n.LowBalanceHorizon > 90*24*time.Hour {
		return bad("notify.low_balance_horizon", "want 1h to 2160h, got %s", n.LowBalanceHorizon)
	}
	if n.LowBalanceEvery < time.Hour || n.LowBalanceEvery > 90*24*time.Hour {
		return bad("notify.low_balance_every", "want 1h to 2160h, got %s", n.LowBalanceEvery)
	}
	return nil
}

// secret is a value given inline, in a file, or in the environment.
func secret(inline, file, env string) (string, error) {
	switch {
	case inline != "":
		return inline, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	default:
		return os.Getenv(env), nil
	}
}

// StripeAPIKey is the payment provider's key from wherever it was given;
// empty when payments are not configured.
func (c Config) StripeAPIKey() (string, error) {
	k, err := secret(c.Payments.StripeAPIKey, c.Payments.StripeAPIKeyFile, "CREDITGATE_STRIPE_API_KEY")
	if err != nil {
		return "", fmt.Errorf("payments.stripe_api_key_file: %w", err)
	}
	return k, nil
}

// SMTPPassword is the mail relay's password from wherever it was given.
func (c Config) SMTPPassword() (string, error) {
	p, err := secret(c.Notify.SMTP.Password, c.Notify.SMTP.PasswordFile, "CREDITGATE_SMTP_PASSWORD")
	if err != nil {
		return "", fmt.Errorf("notify.smtp.password_file: %w", err)
	}
	return p, nil
}

// maxTrustedProxies is gateway.MaxTrustedProxies (configs does not import
// the gateway): every INVITE is checked against each entry.
const maxTrustedProxies = 256

// isAddressOrCIDR accepts what a trunk address or a trusted proxy may be:
// a CIDR, an IP, or IP:port with a port from 1 to 65535.
func isAddressOrCIDR(a string) bool {
	if _, err := netip.ParsePrefix(a); err == nil {
		return true
	}
	if _, err := netip.ParseAddr(a); err == nil {
		return true
	}
	ap, err := netip.ParseAddrPort(a)
	return err == nil && ap.Port() != 0
}

// isHeaderName: an RFC 3261 token (§25.1), which is what a header's name
// is, bounded.
func isHeaderName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-.!%*_+`'~", c) >= 0) {
			return false
		}
	}
	return true
}
