// Package api is creditgate's admin HTTP API (README, Admin API) on fasthttp: JSON in
// and out, a bearer token on everything but /metrics, /healthz and /readyz,
// money as decimal strings, and every refusal a JSON error that changed
// nothing.
package api

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/internal/panics"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// OpenAPI is the API's OpenAPI 3 document, served at /v1/openapi.yaml; a
// test holds it and the routes to each other.
//
//go:embed openapi.yaml
var OpenAPI []byte

// Limits of the API.
const (
	MaxJSONBody = 64 << 10
	MaxDeckBody = 64 << 20
)

// Server serves the admin API.
type Server struct {
	ledger  ledger.Books
	gw      *gateway.Gateway
	token   []byte
	log     *slog.Logger
	now     func() time.Time
	metrics fasthttp.RequestHandler
	srv     *fasthttp.Server
	// payments says whether a payment provider is configured; without
	// one, enabling auto-recharge is refused rather than left to wait.
	payments bool

	limits Limits
	// exports holds a token per streamed export running (stream.go);
	// nil: no limit.
	exports chan struct{}
	// streams counts the producers of streamed responses, which outlive
	// their handlers; Shutdown cancels streamCtx and waits for them.
	streams     sync.WaitGroup
	streamCtx   context.Context
	stopStream  context.CancelFunc
	exportsDone *prometheus.CounterVec

	// adviceCache keeps each org's funding advice for adviceTTL: it reads
	// 30 days of CDRs, too much for every GET of a busy org.
	adviceMu    sync.Mutex
	adviceCache map[string]ledger.Advice

	// console serves /console/... (SetConsole); nil: no console.
	console fasthttp.RequestHandler
}

// SetPayments tells the API whether auto-recharge can pay.
func (s *Server) SetPayments(configured bool) { s.payments = configured }

// New builds the API server. reg serves /metrics and takes the API's own
// metrics.
func New(l ledger.Books, gw *gateway.Gateway, token string, reg *prometheus.Registry, now func() time.Time, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{ledger: l, gw: gw, token: []byte(token), log: log, now: now,
		metrics: fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))}
	s.streamCtx, s.stopStream = context.WithCancel(context.Background())
	s.exportsDone = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_http_exports_total",
		Help: "Streamed exports (usage reports) by how they ended: completed, abandoned by the client, failed, refused busy."},
		[]string{"result"})
	for _, r := range []string{exportCompleted, exportAbandoned, exportFailed, exportBusy} {
		s.exportsDone.WithLabelValues(r)
	}
	reg.MustRegister(s.exportsDone, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "creditgate_http_exports_active",
		Help: "Streamed exports running now (at most http.max_exports)."},
		func() float64 { return float64(len(s.exports)) }))
	s.srv = &fasthttp.Server{
		Handler:            s.Handle,
		Name:               "creditgate",
		MaxRequestBodySize: MaxDeckBody,
		ReadBufferSize:     16 << 10,
		// A stalled client is cut per write (stallConn), not by one
		// deadline for the whole response.
		WriteTimeout: 0,
		// fasthttp's own log line per accept error and per over-cap
		// connection would be the one unstructured line in the log.
		Logger: fasthttpLogger{log},
	}
	return s
}

// Serve serves on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	return s.srv.Serve(stallListener{Listener: ln, timeout: s.limits.WriteTimeout})
}

// ServeTLS serves HTTPS on ln with the certificate and key in the PEM
// files, TLS 1.2 at least, until Shutdown. The bearer token then never
// crosses the network in the clear.
func (s *Server) ServeTLS(ln net.Listener, certFile, keyFile string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("admin API TLS: %w", err)
	}
	return s.srv.Serve(tls.NewListener(stallListener{Listener: ln, timeout: s.limits.WriteTimeout},
		&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
}

// Shutdown stops accepting, ends the exports still streaming and waits for
// requests in flight and for the exports' producers.
func (s *Server) Shutdown() error {
	s.stopStream()
	err := s.srv.Shutdown()
	s.streams.Wait()
	return err
}

// Handle routes one request. A panic in it is contained to this request:
// counted, logged, answered 500 and the connection closed.
func (s *Server) Handle(ctx *fasthttp.RequestCtx) {
	defer panics.Recover(s.log, panics.HTTP, func() {
		ctx.Response.Reset()
		ctx.SetConnectionClose()
		s.fail(ctx, errInternal)
	}, "method", string(ctx.Method()), "path", string(ctx.Path()))
	path := string(ctx.Path())
	switch path {
	case "/metrics":
		s.metrics(ctx)
		return
	case "/healthz":
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString("ok\n")
		return
	case "/readyz":
		ctx.SetContentType("text/plain; charset=utf-8")
		if err := s.ledger.Err(); err != nil {
			ctx.SetStatusCode(503)
			ctx.SetBodyString("not ready: " + err.Error() + "\n")
			return
		}
		if s.gw.Draining() {
			ctx.SetStatusCode(503)
			ctx.SetBodyString("not ready: draining, taking no new calls\n")
			return
		}
		ctx.SetBodyString("ready\n")
		return
	}
	if s.console != nil && consolePath(path) {
		s.console(ctx)
		return
	}
	if !s.authorized(ctx) {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="creditgate"`)
		s.fail(ctx, errUnauthorized)
		return
	}
	if strings.HasPrefix(path, "/debug/pprof/") {
		if err := s.pprof(ctx); err != nil {
			s.fail(ctx, err)
		}
		return
	}
	if err := s.route(ctx, path); err != nil {
		s.fail(ctx, err)
	}
}

func (s *Server) authorized(ctx *fasthttp.RequestCtx) bool {
	h := ctx.Request.Header.Peek("Authorization")
	tok, ok := bytes.CutPrefix(h, []byte("Bearer "))
	return ok && len(s.token) > 0 && subtle.ConstantTimeCompare(tok, s.token) == 1
}

// route is one endpoint: a method and a path whose "*" segments are passed
// to the handler in order.
type route struct {
	method  string
	pattern string
	handle  func(s *Server, ctx *fasthttp.RequestCtx, args []string) error
}

var routes = []route{
	{"GET", "/v1/openapi.yaml", func(s *Server, ctx *fasthttp.RequestCtx, _ []string) error {
		ctx.SetContentType("application/yaml")
		ctx.SetBody(OpenAPI)
		return nil
	}},
	{"POST", "/v1/orgs", func(s *Server, ctx *fasthttp.RequestCtx, _ []string) error { return s.createOrg(ctx) }},
	{"GET", "/v1/orgs", func(s *Server, ctx *fasthttp.RequestCtx, _ []string) error { return s.listOrgs(ctx) }},
	{"GET", "/v1/orgs/*/users", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.listUsers(ctx, a[0]) }},
	{"DELETE", "/v1/orgs/*/users/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.deleteUser(ctx, a[0], a[1]) }},
	{"GET", "/v1/orgs/*/toll-free", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.listTollFree(ctx, a[0]) }},
	{"GET", "/v1/trunks", func(s *Server, ctx *fasthttp.RequestCtx, _ []string) error { return s.listTrunks(ctx) }},
	{"DELETE", "/v1/trunks/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.deleteTrunk(ctx, a[0]) }},
	{"GET", "/v1/orgs/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.getOrg(ctx, a[0]) }},
	{"PATCH", "/v1/orgs/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.patchOrg(ctx, a[0]) }},
	{"PUT", "/v1/orgs/*/toll-free/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.putTollFree(ctx, a[0], a[1]) }},
	{"DELETE", "/v1/orgs/*/toll-free/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error {
		return s.deleteTollFree(ctx, a[0], a[1])
	}},
	{"POST", "/v1/orgs/*/credits", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.fund(ctx, a[0]) }},
	{"PUT", "/v1/orgs/*/fraud-guard", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.putFraudGuard(ctx, a[0]) }},
	{"PUT", "/v1/orgs/*/auto-recharge", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.putAutoRecharge(ctx, a[0]) }},
	{"GET", "/v1/orgs/*/usage", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.usage(ctx, a[0]) }},
	{"GET", "/v1/orgs/*/transactions", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.transactions(ctx, a[0]) }},
	{"PUT", "/v1/orgs/*/users/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.putUser(ctx, a[0], a[1]) }},
	{"PUT", "/v1/trunks/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.putTrunk(ctx, a[0]) }},
	{"PUT", "/v1/rates", func(s *Server, ctx *fasthttp.RequestCtx, _ []string) error { return s.putRates(ctx) }},
	{"GET", "/v1/rates", func(s *Server, ctx *fasthttp.RequestCtx, _ []string) error { return s.getRate(ctx) }},
	{"GET", "/v1/calls", func(s *Server, ctx *fasthttp.RequestCtx, _ []string) error { return s.listCalls(ctx) }},
	{"DELETE", "/v1/calls/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.endCall(ctx, a[0]) }},
}

// match reports whether path fits pattern, and the "*" segments.
func match(pattern string, path []string) ([]string, bool) {
	want := strings.Split(strings.Trim(pattern, "/"), "/")
	if len(want) != len(path) {
		return nil, false
	}
	var args []string
	for i, w := range want {
		switch {
		case w == "*" && path[i] != "":
			args = append(args, path[i])
		case w != path[i]:
			return nil, false
		}
	}
	return args, true
}

func (s *Server) route(ctx *fasthttp.RequestCtx, path string) error {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	method := string(ctx.Method())
	found := false
	for _, r := range routes {
		args, ok := match(r.pattern, parts)
		if !ok {
			continue
		}
		found = true
		if r.method == method {
			return r.handle(s, ctx, args)
		}
	}
	if found {
		return errMethod
	}
	return errNotFound
}

func (s *Server) fail(ctx *fasthttp.RequestCtx, err error) {
	e := lookupError(err)
	if e.status >= 500 {
		s.log.Error("admin API request failed", "method", string(ctx.Method()), "path", string(ctx.Path()), "error", err)
	}
	body := map[string]any{"code": e.code, "message": err.Error()}
	var de *rating.DeckError
	if errors.As(err, &de) {
		lines := make([]map[string]any, 0, len(de.Lines))
		for _, l := range de.Lines {
			lines = append(lines, map[string]any{"line": l.Line, "error": l.Err})
		}
		body["lines"] = lines
	}
	writeJSON(ctx, e.status, map[string]any{"error": body})
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	enc := json.NewEncoder(ctx)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// decode reads exactly one JSON object into v, refusing unknown fields,
// trailing data and oversized bodies.
func decode(ctx *fasthttp.RequestCtx, v any) error {
	body := ctx.PostBody()
	if len(body) > MaxJSONBody {
		return fmt.Errorf("%w: at most %d bytes of JSON", errTooLarge, MaxJSONBody)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBadJSON, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: trailing data after the JSON object", errBadJSON)
	}
	return nil
}

func uintArg(ctx *fasthttp.RequestCtx, name string, def, maxv uint64) (uint64, error) {
	v := string(ctx.QueryArgs().Peek(name))
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n > maxv {
		return 0, badRequest("%s=%q: want a whole number from 0 to %d", name, v, maxv)
	}
	return n, nil
}

// parseTimeArg reads a time bound of the query; a time the ledger's keys
// cannot be compared with (ledger.CheckTime) is refused, naming the range.
func parseTimeArg(ctx *fasthttp.RequestCtx, name string) (time.Time, error) {
	v := string(ctx.QueryArgs().Peek(name))
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		if t, err = time.Parse(time.DateOnly, v); err != nil {
			return time.Time{}, badRequest("%s=%q: want RFC 3339 or YYYY-MM-DD", name, v)
		}
	}
	if err := ledger.CheckTime(t); err != nil {
		return time.Time{}, fmt.Errorf("%s=%q: %w", name, v, err)
	}
	return t, nil
}
