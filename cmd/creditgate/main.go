// Command creditgate runs the real-time call authorization gateway.
//
//	creditgate serve [--config FILE] [--sip-listen ADDR] [--http-listen ADDR]
//	                 [--data-dir DIR] [--admin-token TOKEN]
//	creditgate demo [--api URL] [--sip ADDR] [--data-dir DIR]
//	creditgate cluster seed [--config FILE] [--data-dir DIR] [--cluster-etcd URL[,URL…]] [--node-id ID]
//	creditgate version | help [command]
package main

import (
	"crypto/tls"
	"crypto/x509"
	// Org time zones (minute pool months) must resolve on hosts without
	// /usr/share/zoneinfo, e.g. a distroless container.
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	_ "time/tzdata"

	"github.com/creditgate/creditgate/api"
	"github.com/creditgate/creditgate/cluster"
	"github.com/creditgate/creditgate/configs"
	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/internal/panics"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/notify"
	"github.com/creditgate/creditgate/payments"
	"github.com/creditgate/creditgate/rating"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

func main() { os.Exit(run(os.Args[1:])) }

func serveFlags(fs *flag.FlagSet) func([]string) error {
	def := configs.Default()
	var o overrides
	configPath := fs.String("config", "", "YAML config file (configs/creditgate.example.yaml documents every key); flags override it")
	fs.StringVar(&o.sipListen, "sip-listen", "", "SIP host:port, UDP and TCP (sip.listen; default "+def.SIP.Listen+")")
	fs.StringVar(&o.httpListen, "http-listen", "", "admin API host:port (http.listen; default "+def.HTTP.Listen+")")
	fs.StringVar(&o.dataDir, "data-dir", "", "data directory: the ledger and the admin token (data_dir; default "+def.DataDir+")")
	fs.StringVar(&o.adminToken, "admin-token", "", "admin API bearer token, at least 16 characters (http.admin_token; default: CREDITGATE_ADMIN_TOKEN, else DATA_DIR/admin-token, generated on first start)")
	fs.StringVar(&o.clusterEtcd, "cluster-etcd", "", "cluster mode: etcd client URLs, comma-separated (cluster.etcd; default: none, single-node)")
	fs.StringVar(&o.nodeID, "node-id", "", "cluster mode: this node's unique, stable name (cluster.node_id; default host-SIPPORT)")
	return func([]string) error { return serve(*configPath, o) }
}

// overrides are the serve flags that override config keys; "" leaves the
// key as the file (or the default) has it.
type overrides struct {
	sipListen, httpListen, dataDir, adminToken, clusterEtcd, nodeID string
}

// serve runs the gateway until a signal: config, store, SIP, workers, the
// admin API, then the wait and the drain.
func serve(configPath string, o overrides) error {
	cfg, err := loadConfig(configPath, o)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log)
	raiseFileLimit(log)
	// sipgo's transport and transaction layers log through this default;
	// send them through our handler so they share its level and format.
	sip.SetDefaultLogger(log.With("component", "sipgo"))
	// sipgo keeps these timers in package variables, read as transactions
	// start; set once here, before any exists.
	sip.Timer_D, sip.Timer_J, sip.Timer_L, sip.Timer_M = cfg.SIP.TransactionLinger, cfg.SIP.TransactionLinger,
		cfg.SIP.TransactionLinger, cfg.SIP.TransactionLinger

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	token, tokenFile, err := resolveToken(cfg)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	panics.Register(reg)
	opts := ledger.Options{
		MinFunding: cfg.MinFunding(), Plans: ledger.PlansOf(&cfg.Catalog), Registerer: reg, Logger: log}
	// In cluster mode the node joins and claims its earlier incarnations
	// before its ledger opens: the ledger's restart settlement must leave
	// alone the calls survivors already ended and settled (issue 17).
	var cn *clusterNode
	if !cfg.Cluster.Enabled() {
		if err := refuseClusterDir(cfg.DataDir); err != nil {
			return err
		}
	} else {
		if cn, err = joinCluster(context.Background(), cfg, log); err != nil {
			return err
		}
		opts.SettledElsewhere, opts.LastReaped = cn.rejoin.SettledElsewhere, cn.rejoin.LastReaped
		opts.PeerGuard = cn.guard
	}
	led, err := ledger.Open(filepath.Join(cfg.DataDir, "ledger"), opts)
	if err != nil {
		if cn != nil {
			cn.stop(log)
		}
		return storeLocked(cfg.DataDir, err)
	}
	defer led.Close()
	defer writePID(cfg.DataDir)()

	// books is what the gateway and the API spend through: the ledger
	// itself, or in cluster mode the cluster's Books over it.
	var books ledger.Books = led
	if cn != nil {
		if err := cn.start(context.Background(), cfg, led, log); err != nil {
			return err
		}
		// Deferred after the ledger's Close, so it runs before it: the
		// slices go back while the ledger can still record their return.
		defer cn.stop(log)
		books = cn.books
		// Lease, fencing, slices, etcd operations, replica: per node,
		// labelled node=<id>; registered in cluster mode only.
		reg.MustRegister(cluster.NewCollector(cn.node, cn.books, cn.replica))
	}

	gw, err := startGateway(cfg, led, books, reg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		gw.Close()
		return addrInUse("admin API", cfg.HTTP.Listen, "http-listen", "http.listen", fmt.Errorf("http listen: %w", err))
	}
	// Out of descriptors for a moment, fasthttp's Serve would return.
	ln = gw.KeepAccepting(ln, gateway.ListenerHTTP)
	// The payer and the notification sender run until the gateway has
	// stopped, and end before the ledger closes (defers run last first).
	ctx, stopWorkers := context.WithCancel(context.Background())
	var workers sync.WaitGroup
	defer func() { stopWorkers(); workers.Wait() }()
	payments, purchases, err := startNodeWorkers(ctx, &workers, cfg, cn, led, reg, log)
	if err != nil {
		gw.Close()
		return err
	}
	if cn != nil {
		workers.Go(func() { cn.follow(ctx, gw, led, log) })
		// The gateway listens: it can BYE a dead peer's calls.
		cn.startReaper(gw)
	}
	srv, apiDone, err := startAPI(cfg, ln, led, books, gw, token, payments, purchases, reg, log)
	if err != nil {
		cn.stopReaper()
		gw.Close()
		return err
	}
	if cn != nil {
		if err := cn.serveReads(cfg, srv, ln); err != nil {
			cn.stopReaper()
			gw.Close()
			_ = srv.Shutdown()
			return err
		}
	}
	attrs := []any{"sip", gw.Addr(), "http", ln.Addr().String(), "data_dir", cfg.DataDir}
	if tokenFile != "" {
		attrs = append(attrs, "admin_token_file", tokenFile)
	}
	log.Info("creditgate running", attrs...)

	// Caught until serve returns: a signal while the calls are being
	// ended after the drain must not kill the process half way.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	sig := waitForSignal(log, gw, sigs, apiDone, cfg.SIP.DrainTimeout)
	cn.stopReaper() // its BYEs go through the gateway
	err = gw.Close()
	_ = srv.Shutdown()
	log.Info("stopped", "reason", "signal "+sig.String())
	return err
}

// loadConfig is the config file (or the defaults) with the flags over it,
// validated.
func loadConfig(configPath string, ov overrides) (configs.Config, error) {
	cfg := configs.Default()
	if configPath != "" {
		var err error
		if cfg, err = configs.Load(configPath); err != nil {
			return cfg, err
		}
	}
	for _, o := range []struct {
		flag string
		key  *string
	}{{ov.sipListen, &cfg.SIP.Listen}, {ov.httpListen, &cfg.HTTP.Listen}, {ov.dataDir, &cfg.DataDir},
		{ov.adminToken, &cfg.HTTP.AdminToken}, {ov.nodeID, &cfg.Cluster.NodeID}} {
		if o.flag != "" {
			*o.key = o.flag
		}
	}
	if ov.clusterEtcd != "" {
		cfg.Cluster.Etcd = strings.Split(ov.clusterEtcd, ",")
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

// startGateway loads the rate deck and starts SIP.
func startGateway(cfg configs.Config, led *ledger.Ledger, books ledger.Books, reg prometheus.Registerer, log *slog.Logger) (*gateway.Gateway, error) {
	deck, source, err := loadDeck(led, cfg.Rating.DeckFile)
	if err != nil {
		return nil, err
	}
	log.Info("rate deck loaded", "source", source, "rows", deck.Rows())
	tlsCfg, err := sipTLS(cfg.SIP)
	if err != nil {
		return nil, err
	}
	gw, err := gateway.New(gateway.Config{Listen: cfg.SIP.Listen, RingTimeout: cfg.SIP.RingTimeout,
		ByeTimeout: cfg.SIP.ByeTimeout, MaxCalls: cfg.SIP.MaxCalls, MaxPending: cfg.SIP.MaxPending,
		FailoverTimeout: cfg.SIP.FailoverTimeout, Catalog: &cfg.Catalog, HighRisk: cfg.Fraud.HighRiskPrefixes,
		RatePerSource: cfg.SIP.RatePerSource, BurstPerSource: cfg.SIP.BurstPerSource,
		TLSListen: cfg.SIP.TLSListen, TLS: tlsCfg, Conns: gateway.ConnLimits{MaxConns: cfg.SIP.MaxConnections,
			MaxPerSource: cfg.SIP.MaxConnectionsPerSource, IdleTimeout: cfg.SIP.ConnectionIdleTimeout,
			ReservedFDs: cfg.SIP.ReservedFDs},
		SessionExpires: cfg.SIP.SessionExpires, MinSE: cfg.SIP.MinSE, KeepaliveInterval: cfg.SIP.KeepaliveInterval,
		KeepaliveTimeout: cfg.SIP.KeepaliveTimeout, MaxCallDuration: cfg.SIP.MaxCallDuration,
		Front: gateway.FrontConfig{TrustedProxies: cfg.SIP.TrustedProxies, SourceHeader: cfg.SIP.SourceHeader}}, books, deck, clock.Real{}, reg, log)
	if err != nil {
		return nil, err
	}
	if err := gw.Start(); err != nil {
		if cfg.SIP.TLSListen != "" && strings.Contains(err.Error(), cfg.SIP.TLSListen) {
			return nil, addrInUse("SIP TLS", cfg.SIP.TLSListen, "", "sip.tls_listen", err)
		}
		return nil, addrInUse("SIP", cfg.SIP.Listen, "sip-listen", "sip.listen", err)
	}
	return gw, nil
}

// startAPI serves the admin API on ln (HTTPS when configured); apiDone
// gets Serve's error should it ever return.
func startAPI(cfg configs.Config, ln net.Listener, led *ledger.Ledger, books ledger.Books, gw *gateway.Gateway, token string, payments bool,
	purchases api.Purchases, reg *prometheus.Registry, log *slog.Logger) (*api.Server, <-chan error, error) {
	srv := api.New(books, gw, token, reg, time.Now, log)
	// API keys and the audit trail live in the same ledger (said
	// explicitly: New would find them there too).
	srv.SetAccess(led)
	srv.SetPayments(payments)
	srv.SetPurchases(purchases) // the ledger's, or etcd's in cluster mode (singletons.go)
	if err := mountConsole(cfg, srv, reg, log); err != nil {
		ln.Close()
		return nil, nil, err
	}
	h := cfg.HTTP
	srv.SetLimits(api.Limits{ReadTimeout: h.ReadTimeout, WriteTimeout: h.WriteTimeout, IdleTimeout: h.IdleTimeout,
		MaxConns: h.MaxConns, MaxConnsPerIP: h.MaxConnsPerIP, MaxExports: h.MaxExports})
	apiDone := make(chan error, 1)
	if h.TLSCert != "" {
		// Load now, so a bad file stops the start instead of the API.
		if _, err := tls.LoadX509KeyPair(h.TLSCert, h.TLSKey); err != nil {
			ln.Close()
			return nil, nil, fmt.Errorf("http.tls_cert/http.tls_key: %w", err)
		}
		go func() { apiDone <- srv.ServeTLS(ln, h.TLSCert, h.TLSKey) }()
	} else {
		go func() { apiDone <- srv.Serve(ln) }()
	}
	return srv, apiDone, nil
}

// waitForSignal returns the signal that ends the run, once the drain it
// starts is over. Only a signal ends the process. The admin API stopping
// does not: calls are not ended because the API had a bad moment.
func waitForSignal(log *slog.Logger, gw *gateway.Gateway, sigs <-chan os.Signal, apiDone <-chan error, drainTimeout time.Duration) os.Signal {
	for {
		select {
		case sig := <-sigs:
			drain(log, gw, sigs, sig, drainTimeout)
			return sig
		case err := <-apiDone:
			log.Error("admin API stopped; SIP and the calls up go on until a signal", "error", err)
			apiDone = nil
		}
	}
}

// startWorkers starts a single node's auto-recharge payer (when a payment
// provider is configured; it says whether one is) and notification sender;
// a cluster node runs the cluster's instead (singletons.go).
func startWorkers(ctx context.Context, wg *sync.WaitGroup, cfg configs.Config, led *ledger.Ledger, reg prometheus.Registerer, log *slog.Logger) (bool, error) {
	key, err := cfg.StripeAPIKey()
	if err != nil {
		return false, err
	}
	if key != "" {
		p := cfg.Payments
		payer, err := payments.New(led, payments.Config{APIKey: key, BaseURL: p.StripeBaseURL, Backoff: p.RetryBackoff,
			MaxBackoff: p.MaxBackoff, MaxAttempts: p.MaxAttempts}, clock.Real{}, reg, log.With("component", "recharge"))
		if err != nil {
			return false, err
		}
		wg.Go(func() { payer.Run(ctx) })
	} else {
		log.Info("auto-recharge off: no payment provider key (payments.stripe_api_key or CREDITGATE_STRIPE_API_KEY)")
	}
	pass, err := cfg.SMTPPassword()
	if err != nil {
		return false, err
	}
	m := cfg.Notify.SMTP
	sender, err := notify.New(led, notify.Config{SMTP: notify.SMTP{Host: m.Host, Port: m.Port, Username: m.Username,
		Password: pass, From: m.From, TLS: m.TLS}, Backoff: cfg.Notify.RetryBackoff, MaxBackoff: cfg.Notify.MaxBackoff,
		LowBalanceHorizon: cfg.Notify.LowBalanceHorizon, LowBalanceEvery: cfg.Notify.LowBalanceEvery},
		clock.Real{}, reg, log.With("component", "notify"))
	if err != nil {
		return false, err
	}
	if m.Host == "" {
		log.Info("notification email off: no notify.smtp.host (webhooks still go)")
	}
	wg.Go(func() { sender.Run(ctx) })
	return key != "", nil
}

// drain lets the calls up end on their own for up to timeout, taking no new
// ones; the admin API and metrics stay up meanwhile (readyz says 503). A
// second signal cuts it short.
func drain(log *slog.Logger, gw *gateway.Gateway, sigs <-chan os.Signal, sig os.Signal, timeout time.Duration) {
	log.Info("draining: taking no new calls", "signal", sig.String(), "calls_up", len(gw.Calls()), "drain_timeout", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		select {
		case sig := <-sigs:
			log.Warn("second signal: ending calls now", "signal", sig.String())
			cancel()
		case <-ctx.Done():
		}
	}()
	if left := gw.Drain(ctx); left > 0 {
		log.Warn("drain over; ending the calls still up with BYE", "calls", left)
		return
	}
	log.Info("drained: no calls up")
}

func newLogger(c configs.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// resolveToken finds the admin token: flag or config, then the environment,
// then DATA_DIR/admin-token, else a new random one written there (0600).
// It returns the token file's path when the token came from (or went to) it.
func resolveToken(cfg configs.Config) (token, file string, err error) {
	if cfg.HTTP.AdminToken != "" {
		return cfg.HTTP.AdminToken, "", nil
	}
	if t := os.Getenv("CREDITGATE_ADMIN_TOKEN"); t != "" {
		if len(t) < 16 {
			return "", "", errors.New("CREDITGATE_ADMIN_TOKEN: at least 16 characters")
		}
		return t, "", nil
	}
	file = filepath.Join(cfg.DataDir, "admin-token")
	if b, err := os.ReadFile(file); err == nil {
		t := strings.TrimSpace(string(b))
		if len(t) >= 16 {
			return t, file, nil
		}
		return "", "", fmt.Errorf("%s: token shorter than 16 characters", file)
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", "", fmt.Errorf("admin token: %w", err)
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", "", err
	}
	token = hex.EncodeToString(raw)
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("write admin token: %w", err)
	}
	return token, file, nil
}

// loadDeck prefers the deck an operator uploaded (kept in the ledger), then
// the configured file, then the built-in sample.
func loadDeck(l *ledger.Ledger, file string) (*rating.Deck, string, error) {
	if b := l.Deck(); len(b) > 0 {
		d, err := rating.ParseDeck(bytes.NewReader(b))
		if err != nil {
			return nil, "", fmt.Errorf("stored rate deck: %w", err)
		}
		return d, "uploaded", nil
	}
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, "", fmt.Errorf("rating.deck_file: %w", err)
		}
		defer f.Close()
		d, err := rating.ParseDeck(f)
		if err != nil {
			return nil, "", fmt.Errorf("rating.deck_file %s: %w", file, err)
		}
		return d, file, nil
	}
	return rating.SampleDeck(), "built-in sample", nil
}

// sipTLS loads the SIP TLS certificate and CA named in the config; nil when
// TLS is off and no CA is set.
func sipTLS(c configs.SIP) (*tls.Config, error) {
	if c.TLSListen == "" && c.TLSCA == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.TLSCert != "" || c.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("sip.tls_cert/sip.tls_key: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	if c.TLSCA != "" {
		pem, err := os.ReadFile(c.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("sip.tls_ca: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("sip.tls_ca: %s holds no PEM certificate", c.TLSCA)
		}
	}
	return t, nil
}
