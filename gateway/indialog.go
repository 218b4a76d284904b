package gateway

import (
	"context"
	"errors"

	"github.com/creditgate/creditgate/ledger"
	"github.com/emiago/sipgo/sip"
)

// maxInDialogWait bounds how long a relayed in-dialog request may wait for
// the other leg's final response (64·T1, RFC 3261 Timer B/F).
var maxInDialogWait = 64 * sip.T1

// onInDialog relays a request inside an established call — a re-INVITE for
// hold or a session-timer refresh, an UPDATE, an INFO (DTMF) — to the other
// leg and its final response back. Metering is untouched: a call is billed
// from answer to BYE whatever its media does.
func (g *Gateway) onInDialog(req *sip.Request, tx sip.ServerTransaction) {
	c, fromCaller := g.inDialogCall(req, tx)
	if c == nil {
		return
	}
	c.mu.Lock()
	answered := c.state == stateAnswered
	c.mu.Unlock()
	if !answered {
		res := sip.NewResponseFromRequest(req, 491, "Request Pending", nil)
		res.AppendHeader(sip.NewHeader("Retry-After", "1"))
		_ = tx.Respond(res)
		return
	}

	// The other leg's remote target is its Contact (RFC 3261 §12.2.1.1).
	var target sip.Uri
	if fromCaller {
		target = c.out.InviteRequest.Recipient
		if ct := c.out.InviteResponse.Contact(); ct != nil {
			target = ct.Address
		}
	} else {
		target = c.in.InviteRequest.Contact().Address // ReadInvite refuses INVITEs without one
	}
	fwd := sip.NewRequest(req.Method, target)
	if ct := req.ContentType(); ct != nil {
		fwd.AppendHeader(sip.HeaderClone(ct))
	}
	fwd.SetBody(req.Body())

	ctx, cancel := context.WithTimeout(g.ctx, maxInDialogWait)
	defer cancel()
	c.sendMu.Lock()
	sent := g.clock.Now()
	var res *sip.Response
	var err error
	if fromCaller {
		res, err = c.out.Do(ctx, fwd)
	} else {
		res, err = c.in.Do(ctx, fwd)
	}
	c.sendMu.Unlock()
	if err != nil {
		g.log.Warn("in-dialog request not answered by the other leg", "call_id", c.id, "method", string(req.Method), "error", err)
		_ = tx.Respond(sip.NewResponseFromRequest(req, 408, "Request Timeout", nil))
		return
	}
	// The relay moved our CSeq on in that leg; a BYE after a crash must
	// go above it. Under c.mu, as the boundary's step and the end's state
	// change are: in cluster mode the update rewrites the call's takeover
	// record, and a write racing a step or a close could land an older
	// record over a newer one (a lost history point, a stale CSeq, a close
	// undone). Once the call ended there is nothing to update.
	// The wait for the takeover record to land in etcd (pendingBooks) is
	// after c.mu: a hang-up or a boundary is not held up by an etcd leader
	// election. The record written is the call's latest either way.
	var landed <-chan error
	c.mu.Lock()
	if c.state == stateAnswered {
		if rec := c.dialogRecord(); rec != nil {
			var err error
			if g.later != nil {
				landed, err = g.later.UpdateDialogPending(c.id, rec)
			} else {
				err = g.ledger.UpdateDialog(c.id, rec)
			}
			if err != nil && !errors.Is(err, ledger.ErrCallEnded) {
				g.log.Warn("could not update the call's dialog record", "call_id", c.id, "error", err)
			}
		}
	}
	c.mu.Unlock()
	if landed != nil {
		if err := <-landed; err != nil {
			g.log.Warn("could not update the call's dialog record", "call_id", c.id, "error", err)
		}
	}
	if res.IsSuccess() {
		// Both legs took part: proof of life of both, and a session
		// refresh if it was a re-INVITE or UPDATE (liveness.go). The
		// call's accounting is untouched.
		c.relayed(sent, req.IsInvite() || req.Method == sip.UPDATE)
	}
	if req.IsInvite() && res.IsSuccess() {
		// We are the UAC of the relayed re-INVITE: its 2xx is ours to ACK.
		ack := sip.NewRequest(sip.ACK, target)
		if fromCaller {
			err = c.out.WriteRequest(ack)
		} else {
			err = c.in.WriteRequest(ack)
		}
		if err != nil {
			g.log.Warn("ACK of relayed re-INVITE failed", "call_id", c.id, "error", err)
		}
	}
	back := sip.NewResponseFromRequest(req, res.StatusCode, res.Reason, res.Body())
	if ct := res.ContentType(); ct != nil {
		back.AppendHeader(sip.HeaderClone(ct))
	}
	if req.IsInvite() && res.IsSuccess() {
		back.AppendHeader(sip.HeaderClone(&g.dialogUA(req.Transport()).ContactHDR))
	}
	_ = tx.Respond(back)
}

// dialogOf finds the call a request belongs to and whether it came from the
// caller's leg (we are its UAS) or the carrier's (we are its UAC).
func (g *Gateway) dialogOf(req *sip.Request) (c *call, fromCaller bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if id, err := sip.DialogIDFromRequestUAS(req); err == nil {
		if c := g.byIn[id]; c != nil {
			return c, true
		}
	}
	if id, err := sip.DialogIDFromRequestUAC(req); err == nil {
		if c := g.byOut[id]; c != nil {
			return c, false
		}
	}
	return nil, false
}

func (g *Gateway) onAck(req *sip.Request, tx sip.ServerTransaction) {
	id, err := sip.DialogIDFromRequestUAS(req)
	if err != nil {
		return
	}
	g.mu.Lock()
	c := g.byIn[id]
	g.mu.Unlock()
	if c != nil && c.in != nil {
		_ = c.in.ReadAck(req, tx)
	}
}

func (g *Gateway) onBye(req *sip.Request, tx sip.ServerTransaction) {
	c, fromCaller := g.inDialogCall(req, tx)
	if c == nil {
		return
	}
	var err error
	if fromCaller {
		err = c.in.ReadBye(req, tx)
	} else {
		err = c.out.ReadBye(req, tx)
	}
	if err != nil {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 400, "Bad Request", nil))
		return
	}
	if fromCaller {
		c.end(ledger.ReasonCallerHangup, 200, byeCarrier)
	} else {
		c.end(ledger.ReasonCalleeHangup, 200, byeCaller)
	}
}

// inDialogCall checks an in-dialog request and finds its call and leg.
// When it returns nil the request has been answered: 4xx/5xx for a bad
// request, 481 when it belongs to no call up.
func (g *Gateway) inDialogCall(req *sip.Request, tx sip.ServerTransaction) (c *call, fromCaller bool) {
	if b := checkRequest(req); b != nil {
		g.refuseBadRequest(req, tx, b)
		return nil, false
	}
	c, fromCaller = g.dialogOf(req)
	if c == nil {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
	}
	return c, fromCaller
}
