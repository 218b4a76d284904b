package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/creditgate/creditgate/internal/panics"
	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// Restart safety. The ledger settles every call a dead process left up, but
// the legs would run on, unpaid, until someone hangs up. So an answered
// call's two dialogs are written to the ledger with its answer — everything
// a BYE in each needs, independent of sipgo's in-memory sessions — and on
// start the gateway sends BYE in both for every record the last run left.
// Emergency calls get no record: they cost nothing, media never crossed the
// gateway, and cutting one because the gateway restarted helps no one.

// legState is one leg of a call as seen by us: enough to send a request in
// its dialog (RFC 3261 §12.2.1.1).
type legState struct {
	CallID    string   `json:"call_id"`
	From      string   `json:"from"`   // our side, with our tag
	To        string   `json:"to"`     // the far side, with its tag
	Target    string   `json:"target"` // the remote target (its Contact)
	Route     []string `json:"route,omitempty"`
	CSeq      uint32   `json:"cseq"` // the last CSeq we sent in this dialog
	Transport string   `json:"transport"`
}

// dialogState is a call's two legs.
type dialogState struct {
	In  legState `json:"in"`  // the caller's: we are its UAS
	Out legState `json:"out"` // the carrier's: we are its UAC
}

// inLeg describes the caller's leg: our To tag was set by ReadInvite, the
// route set is the INVITE's Record-Route in order (§12.1.1).
func inLeg(s *sipgo.DialogServerSession) legState {
	req := s.InviteRequest
	l := legState{CallID: req.CallID().Value(), From: req.To().Value(), To: req.From().Value(),
		CSeq: s.CSEQ(), Transport: req.Transport()}
	if ct := req.Contact(); ct != nil {
		l.Target = ct.Address.String()
	}
	for _, rr := range req.GetHeaders("Record-Route") {
		l.Route = append(l.Route, rr.Value())
	}
	return l
}

// outLeg describes the carrier's leg: the route set is the 2xx's
// Record-Route reversed (§12.1.2).
func outLeg(s *sipgo.DialogClientSession) legState {
	req, res := s.InviteRequest, s.InviteResponse
	l := legState{CallID: req.CallID().Value(), From: req.From().Value(), To: res.To().Value(),
		Target: req.Recipient.String(), CSeq: s.CSEQ(), Transport: req.Transport()}
	if ct := res.Contact(); ct != nil {
		l.Target = ct.Address.String()
	}
	rrs := res.GetHeaders("Record-Route")
	for i := len(rrs) - 1; i >= 0; i-- {
		l.Route = append(l.Route, rrs[i].Value())
	}
	return l
}

// dialogRecord is the call's record for the ledger; nil for calls that get
// none.
func (c *call) dialogRecord() json.RawMessage {
	if c.free || c.in == nil || c.out == nil || c.out.InviteResponse == nil {
		return nil
	}
	b, err := json.Marshal(dialogState{In: inLeg(c.in), Out: outLeg(c.out)})
	if err != nil {
		return nil
	}
	return b
}

// bye builds a BYE in the leg's dialog without its session.
func (l legState) bye() (*sip.Request, error) {
	var target sip.Uri
	if err := sip.ParseUri(l.Target, &target); err != nil {
		return nil, fmt.Errorf("remote target %q: %w", l.Target, err)
	}
	from, err := parseNameAddr(l.From)
	if err != nil {
		return nil, fmt.Errorf("from %q: %w", l.From, err)
	}
	to, err := parseNameAddr(l.To)
	if err != nil {
		return nil, fmt.Errorf("to %q: %w", l.To, err)
	}
	routes := make([]sip.RouteHeader, 0, len(l.Route)+1)
	for _, r := range l.Route {
		var rh sip.RouteHeader
		if err := sip.ParseUri(trimAngles(r), &rh.Address); err != nil {
			return nil, fmt.Errorf("route %q: %w", r, err)
		}
		routes = append(routes, rh)
	}
	ruri := target
	strict := len(routes) > 0 && !routes[0].Address.UriParams.Has("lr")
	if strict {
		// A strict router: it takes the Request-URI, and the remote target
		// goes last in the Route set (§12.2.1.1).
		ruri = routes[0].Address
		routes = append(routes[1:], sip.RouteHeader{Address: target})
	}
	req := sip.NewRequest(sip.BYE, ruri)
	req.AppendHeader(&sip.FromHeader{DisplayName: from.name, Address: from.uri, Params: from.params})
	req.AppendHeader(&sip.ToHeader{DisplayName: to.name, Address: to.uri, Params: to.params})
	cid := sip.CallIDHeader(l.CallID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: l.CSeq + 1, MethodName: sip.BYE})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	for i := range routes {
		req.AppendHeader(&routes[i])
	}
	if l.Transport != "" {
		req.SetTransport(l.Transport)
	}
	if len(routes) > 0 && !strict {
		req.SetDestination(routes[0].Address.HostPort())
	}
	return req, nil
}

type nameAddr struct {
	name   string
	uri    sip.Uri
	params sip.HeaderParams
}

func parseNameAddr(v string) (nameAddr, error) {
	na := nameAddr{params: sip.NewParams()}
	name, err := sip.ParseAddressValue(v, &na.uri, &na.params)
	na.name = name
	return na, err
}

func trimAngles(s string) string {
	if i, j := strings.IndexByte(s, '<'), strings.IndexByte(s, '>'); i >= 0 && j > i {
		return s[i+1 : j]
	}
	return s
}

// endLeftCalls sends BYE in both legs of every call the last run left up
// (the ledger has settled their money already) and forgets their records.
// It runs in the background from Start; the gateway takes calls meanwhile.
func (g *Gateway) endLeftCalls() {
	left := g.ledger.Dialogs()
	if len(left) == 0 {
		return
	}
	g.log.Warn("ending calls the last run left up: BYE to both legs", "calls", len(left))
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, d := range left {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			defer panics.Recover(g.log, panics.Call, nil, "call_id", d.Call)
			var st dialogState
			if err := json.Unmarshal(d.Data, &st); err != nil {
				g.log.Error("unreadable dialog record; dropping it", "call_id", d.Call, "error", err)
			} else {
				g.byeBoth(d.Call, st)
			}
			if err := g.ledger.ForgetDialog(d.Call); err != nil {
				g.log.Error("could not forget dialog record", "call_id", d.Call, "error", err)
			}
		}()
	}
	wg.Wait()
}

// byeBoth ends both legs of a call from its record, in parallel.
func (g *Gateway) byeBoth(callID string, st dialogState) {
	var wg sync.WaitGroup
	for _, leg := range []struct {
		name  string
		state legState
	}{{"caller", st.In}, {"carrier", st.Out}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer panics.Recover(g.log, panics.Call, nil, "call_id", callID, "leg", leg.name)
			err := g.byeLeg(leg.state)
			g.m.leftCallByes.WithLabelValues(leg.name, byeResult(err)).Inc()
			if err != nil {
				g.log.Warn("BYE to a leg left up by the last run failed", "call_id", callID, "leg", leg.name, "error", err)
				return
			}
			g.log.Info("ended a leg left up by the last run", "call_id", callID, "leg", leg.name)
		}()
	}
	wg.Wait()
}

func (g *Gateway) byeLeg(l legState) error {
	req, err := l.bye()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.ByeTimeout)
	defer cancel()
	res, err := g.dialogUA(l.Transport).Client.Do(ctx, req)
	if err != nil {
		return err
	}
	if !res.IsSuccess() {
		return &sipgo.ErrDialogResponse{Res: res}
	}
	return nil
}

// byeResult is the metric label of a BYE's outcome: 481 means the far end
// had already hung up, which is as good as confirmed.
func byeResult(err error) string {
	var dr *sipgo.ErrDialogResponse
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &dr) && slices.Contains([]int{481, 408}, dr.Res.StatusCode):
		return "gone"
	default:
		return "failed"
	}
}

// forgetDialog drops a call's record once its BYEs are done (or none were
// needed).
func (g *Gateway) forgetDialog(c *call) {
	if c.free {
		return
	}
	if err := g.ledger.ForgetDialog(c.id); err != nil {
		g.log.Warn("could not forget dialog record; the next start will BYE this call again", "call_id", c.id, "error", err)
	}
}
