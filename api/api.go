// Package api is creditgate's admin HTTP API (README, Admin API) on fasthttp: JSON in
// and out, a bearer token on everything but /metrics, /healthz and /readyz
// (the configured admin token or an API key, whose role each route's
// access column checks: auth.go), money as decimal strings, every refusal a
// JSON error that changed nothing, and every change that succeeded one
// entry in the audit trail (audit.go).
package api

import (
	"bytes"
	"context"
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
	"sync/atomic"
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
	// purchases are the one-time purchases (purchases.go); nil: none.
	purchases Purchases

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

	// access keeps the API keys and the audit journal; nil: only the
	// bootstrap token works and every change is refused (it could not be
	// journaled).
	access Access
	// started is when this server was built: the bootstrap key's
	// created_at in lists (it comes from the configuration, not the
	// ledger). bootstrapUsed is its last use, in Unix nanoseconds.
	started       time.Time
	bootstrapUsed atomic.Int64
	// console serves /console/... (SetConsole); nil: no console.
	console fasthttp.RequestHandler
	// cluster asks the peers for cluster-wide reads (SetPeers,
	// cluster.go); nil: single-node mode. Set once, when the node has
	// joined and its API listens; read by every request.
	cluster atomic.Pointer[fanOut]
}

// Access is what the API needs besides ledger.Books: the API keys and the
// audit journal (ledger/keys.go, ledger/audit.go). *ledger.Ledger
// implements it; a Books that does not can be given one with SetAccess.
type Access interface {
	CreateKey(k ledger.APIKey, a ledger.AuditEntry) (ledger.AuditEntry, error)
	RotateKey(id string, hash []byte, a ledger.AuditEntry) (ledger.AuditEntry, error)
	RevokeKey(id string, a ledger.AuditEntry) (ledger.AuditEntry, error)
	Key(id string) (ledger.APIKey, bool)
	Keys() []ledger.APIKey
	KeyUsed(id string, at time.Time)
	Audit(a ledger.AuditEntry) (ledger.AuditEntry, error)
	AuditEntries(f ledger.AuditFilter, after uint64, limit int) ([]ledger.AuditEntry, uint64, error)
}

var _ Access = (*ledger.Ledger)(nil)

// Readiness is optional on a ledger.Books whose node can be unfit to take
// calls while its Err is nil: a cluster node past its local lease deadline
// (cluster.Books). /readyz asks Ready of a Books that has it (Ready
// includes Err), Err of the others, and answers 503 with the error.
type Readiness interface {
	Ready() error
}

// SetAccess gives the API its key store and audit journal (New takes them
// from its Books when it implements Access, as *ledger.Ledger does). Call
// it before Serve: it is read without a lock.
func (s *Server) SetAccess(a Access) { s.access = a }

// SetPayments tells the API whether auto-recharge can pay.
func (s *Server) SetPayments(configured bool) { s.payments = configured }

// New builds the API server. reg serves /metrics and takes the API's own
// metrics. token is the bootstrap key's secret (key id "bootstrap", role
// operator_admin). Keys and the audit journal are l's when it implements
// Access (see SetAccess).
func New(l ledger.Books, gw *gateway.Gateway, token string, reg *prometheus.Registry, now func() time.Time, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{ledger: l, gw: gw, token: []byte(token), log: log, now: now,
		metrics: fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))}
	s.started = now().UTC()
	if a, ok := l.(Access); ok {
		s.access = a
	}
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
	s.cluster.Load().closeIdle()
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
		ready := s.ledger.Err
		if r, ok := s.ledger.(Readiness); ok {
			ready = r.Ready
		}
		if err := ready(); err != nil {
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
	who, err := s.authenticate(ctx)
	if err != nil {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="creditgate"`)
		s.fail(ctx, err)
		return
	}
	if strings.HasPrefix(path, "/debug/pprof/") {
		// The profiler costs CPU and shows the process's insides:
		// operator admins only.
		if who.Role != RoleOperatorAdmin {
			s.fail(ctx, fmt.Errorf("%w: role %s may not read the profiler (operator_admin only)", errForbidden, who.Role))
			return
		}
		if err := s.pprof(ctx); err != nil {
			s.fail(ctx, err)
		}
		return
	}
	if err := s.route(ctx, path, who); err != nil {
		s.fail(ctx, err)
	}
}

// route is one endpoint: a method and a path whose {name} segments are
// passed to the handler by name, with its two declarative columns:
// access (who may call it, auth.go) and journal (what a successful change
// writes to the audit trail, audit.go; zero for reads). A route without
// an access column is refused to everyone, and a mutating one without a
// journal fails the tests.
type route struct {
	method  string
	pattern string
	access  access
	journal journal
	handle  func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error
}

// request is one authenticated request on its way through a route.
type request struct {
	who  principal
	args map[string]string
	// target, kind and after, when a handler sets them, say what the
	// audit entry names better than the route's columns can: a created
	// object's id, the kind of a PATCH that changed only contacts, the
	// transaction a funding made. gone: the object is no more (a call
	// ended), so the entry's after is null.
	target string
	kind   string
	after  any
	gone   bool
}

func (rq *request) arg(name string) string { return rq.args[name] }

var routes = []route{
	{"GET", "/v1/openapi.yaml", openRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, _ *request) error {
		ctx.SetContentType("application/yaml")
		ctx.SetBody(OpenAPI)
		return nil
	}},
	{"GET", "/v1/whoami", openRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error { return s.whoami(ctx, rq) }},
	{"POST", "/v1/orgs", operatorWrite, changes(ledger.AuditOrg, orgState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.createOrg(ctx, rq)
	}},
	{"GET", "/v1/orgs", listRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error { return s.listOrgs(ctx, rq.who) }},
	{"GET", "/v1/orgs/{org}/users", orgRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.listUsers(ctx, rq.arg("org"))
	}},
	{"DELETE", "/v1/orgs/{org}/users/{user}", orgWrite, changes(ledger.AuditUser, userState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.deleteUser(ctx, rq.arg("org"), rq.arg("user"))
	}},
	{"GET", "/v1/orgs/{org}/toll-free", orgRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.listTollFree(ctx, rq.arg("org"))
	}},
	{"GET", "/v1/trunks", operatorRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, _ *request) error { return s.listTrunks(ctx) }},
	{"DELETE", "/v1/trunks/{id}", operatorWrite, changes(ledger.AuditTrunk, trunkState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.deleteTrunk(ctx, rq.arg("id"))
	}},
	{"GET", "/v1/orgs/{org}", orgRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error { return s.getOrg(ctx, rq.arg("org")) }},
	{"PATCH", "/v1/orgs/{org}", orgWrite, changes(ledger.AuditOrg, orgState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.patchOrg(ctx, rq)
	}},
	{"PUT", "/v1/orgs/{org}/toll-free/{number}", operatorWrite, changes(ledger.AuditTollFree, tollFreeState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.putTollFree(ctx, rq.arg("org"), rq.arg("number"))
	}},
	{"DELETE", "/v1/orgs/{org}/toll-free/{number}", operatorWrite, changes(ledger.AuditTollFree, tollFreeState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.deleteTollFree(ctx, rq.arg("org"), rq.arg("number"))
	}},
	{"POST", "/v1/orgs/{org}/credits", orgWrite, changes(ledger.AuditFunding, balanceState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.fund(ctx, rq)
	}},
	{"POST", "/v1/orgs/{org}/purchases", orgWrite, changes(ledger.AuditFunding, balanceState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.startPurchase(ctx, rq.arg("org"))
	}},
	{"GET", "/v1/orgs/{org}/purchases/{id}", orgRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.getPurchase(ctx, rq.arg("org"), rq.arg("id"))
	}},
	{"PUT", "/v1/orgs/{org}/fraud-guard", operatorWrite, changes(ledger.AuditFraudGuard, fraudGuardState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.putFraudGuard(ctx, rq.arg("org"))
	}},
	{"PUT", "/v1/orgs/{org}/auto-recharge", orgWrite, changes(ledger.AuditAutoRecharge, autoRechargeState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.putAutoRecharge(ctx, rq.arg("org"))
	}},
	{"GET", "/v1/orgs/{org}/usage", orgRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error { return s.usage(ctx, rq.arg("org")) }},
	{"GET", "/v1/orgs/{org}/transactions", orgRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.transactions(ctx, rq.arg("org"))
	}},
	{"PUT", "/v1/orgs/{org}/users/{user}", orgWrite, changes(ledger.AuditUser, userState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.putUser(ctx, rq.arg("org"), rq.arg("user"))
	}},
	{"PUT", "/v1/trunks/{id}", operatorWrite, changes(ledger.AuditTrunk, trunkState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.putTrunk(ctx, rq.arg("id"))
	}},
	{"PUT", "/v1/rates", operatorWrite, changes(ledger.AuditDeck, deckState), func(s *Server, ctx *fasthttp.RequestCtx, _ *request) error { return s.putRates(ctx) }},
	{"GET", "/v1/rates", operatorRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, _ *request) error { return s.getRate(ctx) }},
	{"GET", "/v1/calls", listRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error { return s.listCalls(ctx, rq.who) }},
	{"DELETE", "/v1/calls/{id}", callEnd, changes(ledger.AuditCall, callState), func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.endCall(ctx, rq)
	}},
	{"GET", "/v1/keys", listRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error { return s.listKeys(ctx, rq.who) }},
	{"POST", "/v1/keys", keyCreate, keyChanges, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.createKey(ctx, rq)
	}},
	{"POST", "/v1/keys/{id}/rotate", keyChange, keyChanges, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.rotateKey(ctx, rq)
	}},
	{"DELETE", "/v1/keys/{id}", keyChange, keyChanges, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error {
		return s.revokeKey(ctx, rq)
	}},
	{"GET", "/v1/audit", listRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, rq *request) error { return s.listAudit(ctx, rq.who) }},
}

// match reports whether path fits pattern, and its {name} segments.
func match(pattern string, path []string) (map[string]string, bool) {
	want := strings.Split(strings.Trim(pattern, "/"), "/")
	if len(want) != len(path) {
		return nil, false
	}
	var args map[string]string
	for i, w := range want {
		switch {
		case strings.HasPrefix(w, "{") && path[i] != "":
			if args == nil {
				args = map[string]string{}
			}
			args[strings.Trim(w, "{}")] = path[i]
		case w != path[i]:
			return nil, false
		}
	}
	return args, true
}

// route finds the request's route, checks who may call it (auth.go) and
// runs it; a change that succeeded is journaled (audit.go).
func (s *Server) route(ctx *fasthttp.RequestCtx, path string, who principal) error {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	method := string(ctx.Method())
	found := false
	for i := range routes {
		r := &routes[i]
		args, ok := match(r.pattern, parts)
		if !ok {
			continue
		}
		found = true
		if r.method != method {
			continue
		}
		if elsewhere, err := s.callElsewhere(ctx, r, args); err != nil || elsewhere {
			if err != nil {
				return err
			}
			// Not up here: the peer that has it ends and journals it.
			return s.endCallOnPeers(ctx, who, r, args["id"])
		}
		if err := s.permit(who, r, args); err != nil {
			return err
		}
		rq := &request{who: who, args: args}
		if r.journal.kind == "" {
			return r.handle(s, ctx, rq)
		}
		return s.journaled(ctx, r, rq)
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
