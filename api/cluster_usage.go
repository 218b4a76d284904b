// The cluster-wide usage report: this node's CDRs and every live peer's,
// merged in start order as they stream (cluster.go has the contract).
//
// Each peer is asked for its local-only JSON report at once; a peer that
// does not answer 200 within the peer timeout is left out and named: in
// the JSON report's "unavailable" (after "cdrs"), in CSV and XLSX in the
// X-Creditgate-Unavailable header. Then the report streams: one CDR of
// each source is held, the earliest start written next. A peer that
// stalls for longer than the peer timeout, or whose stream breaks, after
// the report has started cuts the report short (truncated body, as any
// failed export), so a report never looks complete when it is not.

package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/valyala/fasthttp"
)

// UnavailableHeader names, in a CSV or XLSX cluster-wide usage report,
// the nodes whose CDRs are missing: "node: reason", comma-separated.
const UnavailableHeader = "X-Creditgate-Unavailable"

// peerStream is one peer's usage report being read, one CDR at a time.
type peerStream struct {
	peer Peer
	body io.ReadCloser
	dec  *json.Decoder
}

// wireCDR is one row of the JSON usage report: a ledger.CDR whose times
// are RFC 3339 text ("" for none).
type wireCDR struct {
	ledger.CDR
	Start  string `json:"start"`
	Answer string `json:"answer"`
	End    string `json:"end"`
}

// next is the peer's next CDR; ok false at the end of its report.
func (p *peerStream) next() (c ledger.CDR, ok bool, err error) {
	if !p.dec.More() {
		// More is false at the list's end and on a read error alike:
		// only the closing ']' is an end.
		if tok, err := p.dec.Token(); err != nil || tok != json.Delim(']') {
			if err == nil {
				err = fmt.Errorf("unexpected %v", tok)
			}
			return c, false, fmt.Errorf("node %s's usage broke off: %w", p.peer.Node, err)
		}
		return c, false, nil
	}
	var w wireCDR
	if err := p.dec.Decode(&w); err != nil {
		return c, false, fmt.Errorf("node %s's usage: %w", p.peer.Node, err)
	}
	c = w.CDR
	for _, t := range []struct {
		s   string
		dst *time.Time
	}{{w.Start, &c.Start}, {w.Answer, &c.Answer}, {w.End, &c.End}} {
		if t.s == "" {
			continue
		}
		if *t.dst, err = time.Parse(time.RFC3339, t.s); err != nil {
			return c, false, fmt.Errorf("node %s's usage: call %s: %w", p.peer.Node, c.CallID, err)
		}
	}
	return c, true, nil
}

// idleBody cancels its request when no byte arrived for timeout: a peer
// that stalls mid-report cannot hold the export for ever.
type idleBody struct {
	io.ReadCloser
	timer   *time.Timer
	timeout time.Duration
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.timeout)
	n, err := b.ReadCloser.Read(p)
	b.timer.Stop()
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	return b.ReadCloser.Close()
}

// openPeerUsage asks every live peer for its local usage report, at once,
// and reads each up to the opening of its "cdrs" array. ctx ends the
// streams (cancel it when the report is done).
func (s *Server) openPeerUsage(ctx context.Context, rctx *fasthttp.RequestCtx, org string, q url.Values) ([]*peerStream, []Unavailable) {
	f := s.cluster.Load()
	lctx, cancel := context.WithTimeout(ctx, f.timeout)
	peers, err := f.peers.Peers(lctx)
	cancel()
	if err != nil {
		return nil, []Unavailable{{Node: "*", Error: "listing the peers: " + err.Error()}}
	}
	q.Set("scope", "local")
	q.Set("format", "json")
	auth := string(rctx.Request.Header.Peek("Authorization"))
	via := string(rctx.Request.Header.Peek(ViaHeader))
	streams := make([]*peerStream, len(peers))
	errs := make([]error, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		if p.Down {
			errs[i] = errNodeDown
			continue
		}
		wg.Go(func() {
			streams[i], errs[i] = f.openUsage(ctx, p, "/v1/orgs/"+url.PathEscape(org)+"/usage?"+q.Encode(), auth, via)
		})
	}
	wg.Wait()
	var open []*peerStream
	var unavailable []Unavailable
	for i, st := range streams {
		if errs[i] != nil {
			unavailable = append(unavailable, Unavailable{Node: peers[i].Node, Error: errs[i].Error()})
			continue
		}
		open = append(open, st)
	}
	return open, unavailable
}

// openUsage is one peer's report, read up to the first CDR; the request
// ends with ctx or when the body stays silent for the peer timeout.
func (f *fanOut) openUsage(ctx context.Context, p Peer, path, auth, via string) (*peerStream, error) {
	rctx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(f.timeout, cancel)
	req, err := http.NewRequestWithContext(rctx, "GET", p.URL+path, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if via != "" {
		req.Header.Set(ViaHeader, via)
	}
	res, err := f.client.Do(req)
	if err != nil {
		cancel()
		if errors.Is(err, context.Canceled) && ctx.Err() == nil {
			return nil, fmt.Errorf("no answer within %v", f.timeout)
		}
		return nil, err
	}
	body := &idleBody{ReadCloser: res.Body, timer: timer, timeout: f.timeout}
	st := &peerStream{peer: p, body: closeFunc{body, cancel}, dec: json.NewDecoder(body)}
	if res.StatusCode != 200 {
		b, _ := io.ReadAll(io.LimitReader(body, 64<<10))
		st.body.Close()
		return nil, errors.New(peerAnswer{peer: p, status: res.StatusCode, body: b}.reason())
	}
	// {"cdrs":[
	for _, want := range []any{json.Delim('{'), "cdrs", json.Delim('[')} {
		tok, err := st.dec.Token()
		if err != nil || tok != want {
			st.body.Close()
			if err == nil {
				err = fmt.Errorf("unexpected %v, want %v", tok, want)
			}
			return nil, fmt.Errorf("unreadable usage report: %w", err)
		}
	}
	return st, nil
}

// closeFunc closes a body, then ends its request's context.
type closeFunc struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c closeFunc) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// mergedCDRs is a cdrSource over the local CDRs (pulled from each) and the
// peers' streams, earliest start first; ties by node order (this node
// first), so a merge is deterministic. It closes the peers' streams.
func mergedCDRs(cctx context.Context, local iter.Seq2[*ledger.CDR, error], peers []*peerStream) cdrSource {
	return func(fn func(*ledger.CDR) error) error {
		defer func() {
			for _, p := range peers {
				p.body.Close()
			}
		}()
		nextLocal, stop := iter.Pull2(local)
		defer stop()
		// heads[0] is this node's next CDR, heads[i+1] peer i's; nil: done.
		heads := make([]*ledger.CDR, 1+len(peers))
		advance := func(i int) error {
			if i == 0 {
				c, err, ok := nextLocal()
				switch {
				case !ok:
					heads[0] = nil
				case err != nil:
					return err
				default:
					cp := *c // the ledger may reuse *c for the next row
					heads[0] = &cp
				}
				return nil
			}
			c, ok, err := peers[i-1].next()
			if err != nil {
				return err
			}
			heads[i] = nil
			if ok {
				heads[i] = &c
			}
			return nil
		}
		for i := range heads {
			if err := advance(i); err != nil {
				return err
			}
		}
		for {
			if err := cctx.Err(); err != nil {
				return fmt.Errorf("shutting down: %w", err)
			}
			min := -1
			for i, h := range heads {
				if h != nil && (min < 0 || h.Start.Before(heads[min].Start)) {
					min = i
				}
			}
			if min < 0 {
				return nil
			}
			if err := fn(heads[min]); err != nil {
				return err
			}
			if err := advance(min); err != nil {
				return err
			}
		}
	}
}

// localCDRs is EachCDR as a sequence a merge can pull from.
func (s *Server) localCDRs(org string, from, to time.Time) iter.Seq2[*ledger.CDR, error] {
	return func(yield func(*ledger.CDR, error) bool) {
		stopped := errors.New("stopped")
		err := s.ledger.EachCDR(org, from, to, func(c *ledger.CDR) error {
			if !yield(c, nil) {
				return stopped
			}
			return nil
		})
		if err != nil && !errors.Is(err, stopped) {
			yield(nil, err)
		}
	}
}

// unavailableHeader is the X-Creditgate-Unavailable value.
func unavailableHeader(us []Unavailable) string {
	parts := make([]string, len(us))
	for i, u := range us {
		// One header line: no line breaks from a peer's message.
		parts[i] = strings.NewReplacer("\r", " ", "\n", " ", ",", ";").Replace(u.Node + ": " + u.Error)
	}
	return strings.Join(parts, ", ")
}

// clusterUsage streams the cluster-wide usage report (usage's checks and
// format choice done): peers opened first, so the unavailable ones can be
// named before the first byte.
func (s *Server) clusterUsage(ctx *fasthttp.RequestCtx, org string, from, to time.Time, format string,
	write func(io.Writer, cdrSource) error) error {
	q := url.Values{}
	for _, k := range []string{"from", "to"} {
		if v := ctx.QueryArgs().Peek(k); len(v) > 0 {
			q.Set(k, string(v))
		}
	}
	// The peers' requests outlive this handler (the report streams after
	// it returns); Shutdown ends them through streamCtx.
	pctx, cancel := context.WithCancel(s.streamCtx)
	peers, unavailable := s.openPeerUsage(pctx, ctx, org, q)
	done := func() {
		for _, p := range peers {
			p.body.Close()
		}
		cancel()
	}
	if unavailable == nil {
		unavailable = []Unavailable{}
	}
	if format == "" || format == "json" {
		write = func(w io.Writer, src cdrSource) error { return writeUsageJSONWith(w, src, unavailable) }
	} else if len(unavailable) > 0 {
		ctx.Response.Header.Set(UnavailableHeader, unavailableHeader(unavailable))
	}
	err := s.stream(ctx, "usage "+org, func(cctx context.Context, w io.Writer) error {
		defer done()
		return write(w, mergedCDRs(cctx, s.localCDRs(org, from, to), peers))
	})
	if err != nil {
		done()
	}
	return err
}
