// Cluster-wide reads (README, Cluster mode): in cluster mode the calls list,
// ending a call, the usage report (cluster_usage.go) and the audit trail
// (cluster_audit.go) answer for every live node, whichever node is asked.
// The node asked answers its own part and asks each live peer (the
// cluster's registry of admin URLs, set with SetPeers) for the local-only
// form of the same request, ?scope=local, which never fans out again.
//
// Contract:
//   - The caller's own Authorization (and X-Creditgate-Via) headers are
//     forwarded: each peer authenticates the key and applies its role and
//     org scope itself, as for a request made to it directly.
//   - Every peer is asked at once, each bounded by the peer timeout. A peer
//     that does not answer in time, cannot be reached or answers an error
//     (401 for a key it does not know) is listed in the answer's
//     "unavailable" with the reason; the answer is still 200.
//   - DELETE /v1/calls/{id} of a call not up here is forwarded; the peer
//     that has the call ends it and writes its audit entry, this node
//     writes none (exactly one entry cluster-wide). 404 only if no peer had
//     it, naming the peers that could not say.

package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/ledger"
	"github.com/valyala/fasthttp"
)

// Peer is another node of the cluster: its id and its admin API's base
// URL (http(s)://host:port); Down when it registered once and its lease is
// gone (dead, stopped, or paused past its TTL): nothing to ask, but its
// history (CDRs, transactions, audit entries on its own disk) is missing
// from a merged read, which must say so.
type Peer struct {
	Node string
	URL  string
	Down bool
}

// errNodeDown is a Down peer's part of a merged history read.
var errNodeDown = errors.New("not running: its lease has ended (its history is on its own disk)")

// Peers lists the nodes other than this one, live and Down
// (cluster.Node.Peers, adapted by cmd/creditgate).
type Peers interface {
	Peers(ctx context.Context) ([]Peer, error)
}

// Unavailable names a node whose part of a cluster-wide answer is missing,
// and why. Node "*" means the peers themselves could not be listed.
type Unavailable struct {
	Node  string `json:"node"`
	Error string `json:"error"`
}

// maxPeerBody bounds what is read of one peer's answer to a calls list or
// an end: far above a node's max_calls calls (about 500 bytes each).
const maxPeerBody = 64 << 20

// fanOut is the server's cluster side; nil in single-node mode. Set once
// by SetPeers and never changed after.
type fanOut struct {
	self    string
	peers   Peers
	timeout time.Duration
	client  *http.Client
}

// SetPeers puts the server in cluster mode: self is this node's id (each
// call it lists is labelled with it), peers the live others, timeout the
// bound on each peer's answer. Until it is called the server answers for
// itself only, as in single-node mode.
func (s *Server) SetPeers(self string, peers Peers, timeout time.Duration) {
	s.cluster.Store(&fanOut{self: self, peers: peers, timeout: timeout, client: &http.Client{
		// Peers are reached directly, never through a proxy from the
		// environment; no redirect is followed with the bearer token.
		Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second,
			TLSHandshakeTimeout: timeout, ResponseHeaderTimeout: timeout},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}})
}

// closeIdle drops kept-alive connections to peers (Shutdown).
func (f *fanOut) closeIdle() {
	if f != nil {
		f.client.CloseIdleConnections()
	}
}

// localOnly reads ?scope=: "local" asks for this node's part only (what a
// peer asks), "" for the cluster's.
func localOnly(ctx *fasthttp.RequestCtx) (bool, error) {
	switch v := string(ctx.QueryArgs().Peek("scope")); v {
	case "":
		return false, nil
	case "local":
		return true, nil
	default:
		return false, badRequest("scope=%q: want local, or nothing for the whole cluster", v)
	}
}

// peerAnswer is one peer's answer to a forwarded request; err set when
// there was none (not listed, unreachable, timed out, body unreadable).
type peerAnswer struct {
	peer   Peer
	status int
	body   []byte
	err    error
}

// reason is why a peer's part is missing: its transport error, or its
// HTTP status with the message of its JSON error.
func (a peerAnswer) reason() string {
	if a.err != nil {
		return a.err.Error()
	}
	var e struct {
		Error struct{ Message string } `json:"error"`
	}
	if json.Unmarshal(a.body, &e) == nil && e.Error.Message != "" {
		return fmt.Sprintf("HTTP %d: %s", a.status, e.Error.Message)
	}
	return fmt.Sprintf("HTTP %d", a.status)
}

// askPeers sends method path (with ?scope=local added) to every live peer
// at once, with the caller's Authorization and Via headers, and waits for
// all of them, each bounded by the peer timeout. listErr is set when the
// peers could not be listed.
//
// It asks the live peers only: for calls up, a Down node has none (a
// survivor reaped them).
func (s *Server) askPeers(ctx *fasthttp.RequestCtx, method, path string, query url.Values) (answers []peerAnswer, listErr error) {
	all, err := s.askPeersEach(ctx, method, path, func(Peer) url.Values { return query })
	answers = all[:0]
	for _, a := range all {
		if !a.peer.Down {
			answers = append(answers, a)
		}
	}
	return answers, err
}

// askPeersEach is askPeers with each peer's own query (query(p) is not
// changed; scope=local is added to a copy), for reads of history: a Down
// peer is in the answers with errNodeDown, so the read names it.
func (s *Server) askPeersEach(ctx *fasthttp.RequestCtx, method, path string, query func(p Peer) url.Values) (answers []peerAnswer, listErr error) {
	f := s.cluster.Load()
	lctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	peers, err := f.peers.Peers(lctx)
	cancel()
	if err != nil {
		return nil, err
	}
	auth := string(ctx.Request.Header.Peek("Authorization"))
	via := string(ctx.Request.Header.Peek(ViaHeader))
	answers = make([]peerAnswer, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		answers[i].peer = p
		if p.Down {
			answers[i].err = errNodeDown
			continue
		}
		q := url.Values{}
		for k, v := range query(p) {
			q[k] = v
		}
		q.Set("scope", "local")
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(context.Background(), f.timeout)
			defer cancel()
			answers[i].status, answers[i].body, answers[i].err = f.do(rctx, method, p.URL+path+"?"+q.Encode(), auth, via)
		})
	}
	wg.Wait()
	return answers, nil
}

// do is one bounded request to a peer and its whole (bounded) answer.
func (f *fanOut) do(ctx context.Context, method, u, auth, via string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return 0, nil, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if via != "" {
		req.Header.Set(ViaHeader, via)
	}
	res, err := f.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return 0, nil, fmt.Errorf("no answer within %v", f.timeout)
		}
		return 0, nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, maxPeerBody+1))
	if err != nil {
		return 0, nil, fmt.Errorf("reading the answer: %w", err)
	}
	if len(body) > maxPeerBody {
		return 0, nil, fmt.Errorf("answer over %d bytes", maxPeerBody)
	}
	return res.StatusCode, body, nil
}

// nodeCall is a call up with the node that carries it (cluster mode).
type nodeCall struct {
	gateway.CallInfo
	Node string `json:"node,omitempty"`
}

// localCalls are the calls up on this node the principal may see, as the
// API shows them.
func (s *Server) localCalls(who principal) []nodeCall {
	calls := s.gw.Calls()
	if who.Role.OrgScoped() {
		calls = slices.DeleteFunc(calls, func(c gateway.CallInfo) bool { return c.Org != who.Org })
	}
	f := s.cluster.Load()
	out := make([]nodeCall, len(calls))
	for i, c := range calls {
		// The gateway keeps numbers as digits; the API speaks E.164.
		c.From, c.To = e164(c.From), e164(c.To)
		out[i] = nodeCall{CallInfo: c}
		if f != nil {
			out[i].Node = f.self
		}
	}
	return out
}

// clusterCalls answers GET /v1/calls for the whole cluster: this node's
// calls and every live peer's, in start order, and the peers whose calls
// are missing.
func (s *Server) clusterCalls(ctx *fasthttp.RequestCtx, calls []nodeCall) error {
	unavailable := []Unavailable{}
	answers, err := s.askPeers(ctx, "GET", "/v1/calls", nil)
	if err != nil {
		unavailable = append(unavailable, Unavailable{Node: "*", Error: "listing the peers: " + err.Error()})
	}
	for _, a := range answers {
		var got struct {
			Calls []nodeCall `json:"calls"`
		}
		if a.err == nil && a.status == 200 {
			if err := json.Unmarshal(a.body, &got); err != nil {
				a.err = fmt.Errorf("unreadable answer: %w", err)
			}
		}
		if a.err != nil || a.status != 200 {
			unavailable = append(unavailable, Unavailable{Node: a.peer.Node, Error: a.reason()})
			continue
		}
		for _, c := range got.Calls {
			c.Node = a.peer.Node // the registry's name for it, whatever it says
			calls = append(calls, c)
		}
	}
	slices.SortFunc(calls, func(a, b nodeCall) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return strings.Compare(a.Node+"\x00"+a.ID, b.Node+"\x00"+b.ID)
	})
	writeJSON(ctx, 200, map[string]any{"calls": calls, "unavailable": unavailable})
	return nil
}

// callElsewhere reports whether a request is DELETE /v1/calls/{id} of a
// call not up on this node, in cluster mode, not itself local-only: one
// the peers must be asked to end.
func (s *Server) callElsewhere(ctx *fasthttp.RequestCtx, r *route, args map[string]string) (bool, error) {
	if s.cluster.Load() == nil || r.method != "DELETE" || r.pattern != "/v1/calls/{id}" {
		return false, nil
	}
	local, err := localOnly(ctx)
	if err != nil || local {
		return false, err
	}
	_, up := s.callUp(args["id"])
	return !up, nil
}

// endCallOnPeers asks every live peer to end call id (local-only). The
// role is checked here; the org scope, the end and its audit entry are the
// peer's that has the call, so this node journals nothing.
func (s *Server) endCallOnPeers(ctx *fasthttp.RequestCtx, who principal, r *route, id string) error {
	if !r.access.roles.has(who.Role) {
		return fmt.Errorf("%w: role %s may not %s %s", errForbidden, who.Role, r.method, r.pattern)
	}
	answers, err := s.askPeers(ctx, "DELETE", "/v1/calls/"+url.PathEscape(id), nil)
	if err != nil {
		return fmt.Errorf("%w: %s (not up on this node; the peers could not be listed: %v)", ledger.ErrUnknownCall, id, err)
	}
	var missing []string
	for _, a := range answers {
		switch {
		case a.err == nil && a.status >= 200 && a.status <= 299:
			ctx.Response.Header.Set("X-Creditgate-Node", a.peer.Node)
			ctx.SetStatusCode(204)
			return nil
		case a.err == nil && a.status == 404:
			// Not there.
		default:
			missing = append(missing, a.peer.Node+": "+a.reason())
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s (not up on this node or any peer that answered; unavailable: %s)",
			ledger.ErrUnknownCall, id, strings.Join(missing, "; "))
	}
	return fmt.Errorf("%w: %s", ledger.ErrUnknownCall, id)
}
