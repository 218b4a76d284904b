// Command loadtest drives SIP calls through a gateway, playing both the
// customer PBX that calls and the carrier that answers.
//
//	loadtest -target 127.0.0.1:5060 -carrier 127.0.0.1:5080 -rate 500 -calls 5000 -hold 1s \
//	    -from +14255550100 -to +33142278186
//
// Point the gateway's carrier trunk at -carrier and its customer trunk at
// the address the calls come from (-caller). A progress line is printed
// every second on stderr; the report goes to stdout, as JSON with -json.
// The exit status is 1 when any call failed.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/creditgate/creditgate/loadtest"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// run is the command: its flags (most of its length: one line each, with
// their help), then one run of the load tool and the report.
func run(args []string) int {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	var cfg loadtest.Config
	var from string
	var asJSON, quiet bool
	var tlsCert, tlsKey, tlsCA string
	fs.StringVar(&cfg.Target, "target", "127.0.0.1:5060", "the gateway's SIP address")
	fs.StringVar(&cfg.Caller, "caller", "127.0.0.1:0", "address the calls are sent from")
	fs.StringVar(&cfg.Carrier, "carrier", "127.0.0.1:5080", "address the carrier side answers on")
	fs.StringVar(&cfg.Transport, "transport", "udp", "the caller's transport: udp or tcp")
	fs.StringVar(&cfg.CarrierTransport, "carrier-transport", "", "the carrier side's transport (default: -transport)")
	fs.Float64Var(&cfg.Rate, "rate", 100, "calls started per second (open loop)")
	fs.IntVar(&cfg.Calls, "calls", 1000, "calls in the run")
	fs.DurationVar(&cfg.Hold, "hold", time.Second, "talk time before the caller hangs up")
	fs.IntVar(&cfg.MaxInFlight, "max-in-flight", 0, "calls up or in setup at once; over it a call is not started (0: no cap)")
	fs.StringVar(&cfg.Dialled, "to", "+33142278186", "number dialled")
	fs.StringVar(&from, "from", "+14255550100", "caller numbers, comma-separated, used in turn")
	fs.IntVar(&cfg.CallsPer, "calls-per-number", 1, "calls from each caller number before the next")
	fs.DurationVar(&cfg.SetupTimeout, "setup-timeout", 32*time.Second, "longest wait for a final answer")
	fs.StringVar(&tlsCert, "tls-cert", "", "certificate (PEM) the carrier side presents on tls")
	fs.StringVar(&tlsKey, "tls-key", "", "its key (PEM)")
	fs.StringVar(&tlsCA, "tls-ca", "", "CA (PEM) the caller side trusts on tls (default: system roots)")
	var slow loadtest.SlowReadConfig
	fs.IntVar(&slow.Conns, "slow-readers", 0, "meanwhile, this many clients read -slow-url slowly (0: none)")
	fs.StringVar(&slow.URL, "slow-url", "", "what the slow readers GET, e.g. http://127.0.0.1:8080/v1/orgs/load/usage?format=csv")
	fs.StringVar(&slow.Token, "slow-token", "", "the admin API bearer token for -slow-url")
	fs.IntVar(&slow.BytesPerSec, "slow-bps", 4, "bytes a second each slow reader reads")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	fs.BoolVar(&quiet, "quiet", false, "no progress line")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for _, n := range strings.Split(from, ",") {
		if n = strings.TrimSpace(n); n != "" {
			cfg.From = append(cfg.From, n)
		}
	}
	if cfg.Transport == "tls" || cfg.CarrierTransport == "tls" {
		t, err := loadTLS(tlsCert, tlsKey, tlsCA)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadtest:", err)
			return 2
		}
		cfg.TLS = t
	}
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var progress io.Writer = os.Stderr
	if quiet {
		progress = nil
	}
	// The slow readers run for as long as the calls do.
	slowCtx, stopSlow := context.WithCancel(ctx)
	slowDone := make(chan struct{})
	var slowRep loadtest.SlowReadReport
	var slowErr error
	if slow.Conns > 0 {
		slow.For = 24 * time.Hour
		go func() { defer close(slowDone); slowRep, slowErr = loadtest.SlowRead(slowCtx, slow) }()
	} else {
		close(slowDone)
	}
	rep, err := loadtest.Run(ctx, cfg, progress)
	stopSlow()
	<-slowDone
	if slowErr != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", slowErr)
		return 2
	}
	if slow.Conns > 0 {
		if asJSON {
			b, _ := json.Marshal(slowRep)
			fmt.Fprintln(os.Stderr, string(b))
		} else {
			fmt.Print(slowRep.String())
		}
	}
	if err != nil && rep.Attempted == 0 {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		return 2
	}
	if asJSON {
		fmt.Println(string(rep.JSON()))
	} else {
		fmt.Print(rep.String())
	}
	if rep.Failed > 0 || err != nil {
		return 1
	}
	return 0
}

func loadTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("-tls-cert/-tls-key: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("-tls-ca: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-tls-ca: %s holds no PEM certificate", caFile)
		}
	}
	return t, nil
}
