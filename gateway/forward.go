package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// forward sends the authorized call to its carrier and relays what comes
// back until the call is answered, refused or cancelled.
func (g *Gateway) forward(req *sip.Request, tx sip.ServerTransaction, c *call, received time.Time) {
	if len(c.routes) == 0 {
		g.failBeforeAnswer(c, ErrNoRoute, 404)
		g.refuse(req, tx, ErrNoRoute)
		return
	}
	in, err := g.dialogUA(req.Transport()).ReadInvite(req, tx)
	if err != nil {
		// checkInvite let through only what a dialog can be made of; this
		// is a bug, and the caller still gets a final answer.
		g.failBeforeAnswer(c, err, 500)
		g.refuse(req, tx, fmt.Errorf("caller leg: %w", err))
		return
	}
	defer in.Close()
	c.in = in
	g.register(c, in.ID)

	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.RingTimeout)
	defer cancel()
	// A CANCEL from the caller ends the caller's dialog context; cancelling
	// ours makes WaitAnswer send CANCEL to the carrier.
	stop := context.AfterFunc(in.Context(), cancel)
	defer stop()

	var sess *sipgo.DialogClientSession
	var answering ledger.Trunk
	for i, carrier := range c.routes {
		answering = carrier
		var target sip.Uri
		if err = sip.ParseUri(carrier.URI, &target); err != nil {
			err = fmt.Errorf("carrier %s uri %q: %w", carrier.ID, carrier.URI, err)
			continue
		}
		if i == 0 {
			g.m.setup.Observe(time.Since(received).Seconds())
		}
		sess, err = g.attempt(ctx, in, c, g.outboundInvite(req, c, target, i), carrier)
		if sess != nil {
			defer sess.Close()
		}
		if err == nil || !failover(err) || in.Context().Err() != nil || ctx.Err() != nil {
			break
		}
		if i+1 < len(c.routes) {
			g.log.Warn("carrier failed before answer; trying the next", "call_id", c.id, "carrier", carrier.ID,
				"next", c.routes[i+1].ID, "error", err)
		}
	}
	if sess == nil {
		g.log.Warn("no carrier took the call", "call_id", c.id, "org", c.org, "error", err)
		c.end(ledger.ReasonFailed, 503, byeNone)
		_ = in.Respond(503, "Service Unavailable", nil, sip.NewHeader("Retry-After", "5"))
		return
	}
	c.out = sess
	if err != nil {
		g.notAnswered(c, in, sess, err)
		return
	}
	c.mu.Lock()
	c.answeredBy(answering)
	c.mu.Unlock()
	g.bridge(c, in, sess)
}

// bridge connects a call the carrier answered: its dialog joins the
// registry, billing starts, the carrier gets its ACK and the caller the
// 200 OK with the carrier's SDP. If billing cannot start, the carrier's
// leg is BYEd and the caller gets 503.
func (g *Gateway) bridge(c *call, in *sipgo.DialogServerSession, sess *sipgo.DialogClientSession) {
	g.mu.Lock()
	c.mu.Lock()
	c.outID = sess.ID
	c.mu.Unlock()
	g.byOut[sess.ID] = c
	g.mu.Unlock()

	if se, ok := deltaSeconds(sess.InviteResponse, "Session-Expires", "x"); ok && !c.free && se >= g.cfg.MinSE {
		// A shorter interval the carrier answered with is the one the
		// call runs on (RFC 4028 §7.2: a UAS may lower it to its
		// Min-SE); set before answer arms the expiry.
		c.mu.Lock()
		c.live.session = min(c.live.session, se)
		c.mu.Unlock()
	}
	if err := c.answer(); err != nil {
		g.log.Error("could not start billing; ending call", "call_id", c.id, "org", c.org, "error", err)
		_ = sess.Ack(g.ctx)
		c.end(ledger.ReasonFailed, 503, byeNone)
		g.goBye("carrier", c.id, sess.Bye)
		_ = in.Respond(503, "Service Unavailable", nil, sip.NewHeader("Retry-After", "5"))
		return
	}
	if err := sess.Ack(g.ctx); err != nil {
		g.log.Warn("ACK to carrier failed", "call_id", c.id, "error", err)
	}
	answer := sess.InviteResponse
	res := sip.NewResponseFromRequest(in.InviteRequest, 200, "OK", answer.Body())
	if ct := answer.ContentType(); ct != nil {
		res.AppendHeader(sip.HeaderClone(ct))
	}
	if !c.free {
		// The interval the call runs on, and who refreshes: the
		// gateway, as the caller leg's UAS (RFC 4028 §9).
		c.mu.Lock()
		session := c.live.session
		c.mu.Unlock()
		res.AppendHeader(sip.NewHeader("Session-Expires", sessionExpiresValue(session, "uas")))
		if c.callerTimer {
			res.AppendHeader(sip.NewHeader("Require", "timer"))
		}
	}
	c.sendMu.Lock()
	err := in.WriteResponse(res)
	c.confirmed = err == nil
	c.sendMu.Unlock()
	if err != nil {
		// The caller cancelled as the carrier answered, or never ACKed.
		reason := ledger.ReasonFailed
		if errors.Is(err, sip.ErrTransactionCanceled) {
			reason = ledger.ReasonCanceled
		}
		g.log.Warn("caller leg did not confirm the answer", "call_id", c.id, "error", err)
		c.end(reason, 200, byeCarrier)
	}
}

// failBeforeAnswer settles a call that never left the gateway.
func (g *Gateway) failBeforeAnswer(c *call, err error, status int) {
	g.log.Warn("call failed before it reached a carrier", "call_id", c.id, "org", c.org, "error", err)
	c.release()
	if c.tracked {
		if _, err := g.ledger.CloseCall(c.id, ledger.CallEnd{At: g.clock.Now(), Reason: ledger.ReasonFailed, SIPStatus: status}); err != nil {
			g.log.Error("settling call failed", "call_id", c.id, "error", err)
		}
	}
}

// notAnswered handles every way a call can end before answer: a failure
// response, the caller's CANCEL, the ring timeout, a transport error.
func (g *Gateway) notAnswered(c *call, in *sipgo.DialogServerSession, sess *sipgo.DialogClientSession, err error) {
	var dr *sipgo.ErrDialogResponse
	switch {
	case errors.As(err, &dr):
		status := dr.Res.StatusCode
		c.end(ledger.ReasonFailed, status, byeNone)
		if status == 401 || status == 407 {
			// The carrier's challenge is for us, not for our customer.
			status = 502
		}
		_ = in.Respond(status, dr.Res.Reason, nil)
	case errors.Is(in.Context().Err(), context.Canceled):
		// The caller cancelled; the transaction layer answered 487.
		c.end(ledger.ReasonCanceled, 487, byeNone)
		if r := sess.InviteResponse; r != nil && r.IsSuccess() {
			// The carrier answered as we cancelled: take and drop that call.
			_ = sess.Ack(g.ctx)
			g.goBye("carrier", c.id, sess.Bye)
		}
	default:
		status, phrase := 408, "Request Timeout"
		if g.ctx.Err() != nil {
			status, phrase = 503, "Service Unavailable"
		}
		c.end(ledger.ReasonFailed, status, byeNone)
		_ = in.Respond(status, phrase, nil)
	}
}

// errNoResponse: a carrier sent nothing, not even 100 Trying, within
// FailoverTimeout.
var errNoResponse = errors.New("no response from the carrier")

// attempt sends the carrier leg's INVITE and waits for its final answer,
// relaying provisional responses (with early-media SDP) to the caller. It
// gives up on a carrier that has not answered at all within FailoverTimeout,
// so the next can be tried while the caller still waits. A carrier trunk
// with a username and password answers a 401/407 challenge with digest
// credentials (sipgo resends the INVITE, retrying a stale nonce once);
// without them a challenge is a failure like any other.
func (g *Gateway) attempt(ctx context.Context, in *sipgo.DialogServerSession, c *call, out *sip.Request, carrier ledger.Trunk) (*sipgo.DialogClientSession, error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// With nothing received there is nothing to CANCEL (RFC 3261 §9.1);
	// sipgo's force-cancel cause makes WaitAnswer return at once instead of
	// waiting out Timer B.
	var silent atomic.Bool
	timer := time.AfterFunc(g.cfg.FailoverTimeout, func() {
		silent.Store(true)
		cancel(sipgo.WaitAnswerForceCancelErr)
	})
	defer timer.Stop()
	sess, err := g.dialogUA(out.Transport()).WriteInvite(actx, out)
	if err != nil {
		return nil, err
	}
	err = sess.WaitAnswer(actx, sipgo.AnswerOptions{Username: carrier.Username, Password: carrier.Password, OnResponse: func(res *sip.Response) error {
		if !timer.Stop() && silent.Load() {
			return errNoResponse
		}
		if res.StatusCode > 100 && res.StatusCode < 200 {
			hdrs := []sip.Header{}
			if ct := res.ContentType(); ct != nil {
				hdrs = append(hdrs, sip.HeaderClone(ct))
			}
			_ = in.Respond(res.StatusCode, res.Reason, res.Body(), hdrs...)
		}
		return nil
	}})
	if err != nil && silent.Load() {
		err = fmt.Errorf("%w: %w", errNoResponse, err)
	}
	return sess, err
}

// failover reports whether a carrier's failure before answer lets the call
// try the next carrier: a timeout, a 408 or a 5xx. 4xx are about the call
// (the next carrier would say the same) and 6xx say so explicitly.
func failover(err error) bool {
	var dr *sipgo.ErrDialogResponse
	if errors.As(err, &dr) {
		code := dr.Res.StatusCode
		return code == 408 || (code >= 500 && code < 600)
	}
	return errors.Is(err, errNoResponse)
}

// outboundInvite builds the carrier leg's INVITE: a new dialog (Call-ID,
// tags, CSeq) that carries the caller's SDP untouched. Attempt n > 0 (a
// failover) gets a Call-ID of its own.
func (g *Gateway) outboundInvite(req *sip.Request, c *call, target sip.Uri, n int) *sip.Request {
	user := "+" + c.to
	if c.free {
		user = c.to
	}
	ruri := sip.Uri{Scheme: "sip", User: user, Host: target.Host, Port: target.Port, UriParams: target.UriParams}
	out := sip.NewRequest(sip.INVITE, ruri)
	if tr, ok := target.UriParams.Get("transport"); ok && tr != "" {
		out.SetTransport(sip.NetworkToLower(tr))
	}
	fromUser := "+" + c.from
	if c.from == "" {
		fromUser = "anonymous"
	}
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: fromUser, Host: g.addr.host}, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(16))
	out.AppendHeader(from)
	out.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: user, Host: target.Host}, Params: sip.NewParams()})
	cid := sip.CallIDHeader(c.id)
	if n > 0 {
		cid = sip.CallIDHeader(fmt.Sprintf("%s-%d", c.id, n+1))
	}
	out.AppendHeader(&cid)
	out.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.INVITE})
	mf := sip.MaxForwardsHeader(70)
	if in := req.MaxForwards(); in != nil {
		mf = sip.MaxForwardsHeader(in.Val() - 1)
	}
	out.AppendHeader(&mf)
	if h := req.GetHeader("P-Asserted-Identity"); h != nil {
		out.AppendHeader(sip.HeaderClone(h))
	}
	if ct := req.ContentType(); ct != nil {
		out.AppendHeader(sip.HeaderClone(ct))
	}
	out.SetBody(req.Body())
	if !c.free {
		// RFC 4028: the interval negotiated with the caller, the
		// gateway's floor, and that it knows the extension. The
		// gateway refreshes (liveness.go), so no refresher is asked.
		out.AppendHeader(sip.NewHeader("Session-Expires", secondsValue(c.live.session)))
		out.AppendHeader(sip.NewHeader("Min-SE", secondsValue(g.cfg.MinSE)))
		out.AppendHeader(sip.NewHeader("Supported", "timer"))
	}
	return out
}
