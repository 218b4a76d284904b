// The calls a reap ends: the CDR of a dead node's call that was up, and
// the BYEs to both legs of it (LegEnder), at the end of what it paid.

package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/creditgate/creditgate/ledger"
)

// LegEnder ends both legs of a dead node's call from its dialog record (the
// gateway's opaque JSON, ledger.Books.AnswerDialog): a BYE in each, from
// this node. The binary gives the gateway's (gateway.(*Gateway).EndLegs).
type LegEnder func(ctx context.Context, callID string, dialog json.RawMessage) error

// reapCDR is the CDR of a dead node's call that was up: it paid what it
// committed and the increment it held, and ended at end.
func reapCDR(r *Record, end time.Time) ledger.CDR {
	c := r.Call
	charge, minutes := r.final()
	billed := c.BilledS
	if c.Hold.Open {
		billed += c.Hold.Seconds
	}
	cdr := ledger.CDR{CallID: c.ID, Details: c.Details, Start: c.Start.UTC(), Answer: c.Answer.UTC(), End: end.UTC(),
		BilledS: billed, PoolMinutes: minutes, Charge: charge, DisconnectReason: ledger.ReasonNodeFailure, SIPStatus: 200}
	if minutes > 0 {
		cdr.Pool = c.Plan
	}
	if d := end.Sub(c.Answer); d > 0 {
		cdr.DurationS = int((d + time.Second - 1) / time.Second)
	}
	return cdr
}

// maxReapByes bounds the calls whose legs one reap ends at once (as the
// gateway's own restart does).
const maxReapByes = 64

// endLegs ends the call's legs at `at` (at once if it is past) through
// the LegEnder, holding a place in sem meanwhile; it returns when they
// were (true), or when the Books close or the LegEnder failed (false: the
// reap is not done).
func (b *Books) endLegs(callID string, dialog json.RawMessage, at time.Time, sem chan struct{}) bool {
	b.reap.mu.Lock()
	ender := b.reap.ender
	b.reap.mu.Unlock()
	if ender == nil {
		b.log.Error("cluster reaper: no leg ender; a dead node's call's legs are not ended", "call_id", callID)
		return true // nobody could ever end them here
	}
	if d := at.Sub(b.clk.Now()); d > 0 {
		fire := make(chan struct{})
		t := b.clk.AfterFunc(d, func() { close(fire) })
		select {
		case <-b.reap.ctx.Done():
			t.Stop()
			return false
		case <-fire:
		}
	}
	select {
	case sem <- struct{}{}:
		defer func() { <-sem }()
	case <-b.reap.ctx.Done():
		return false
	}
	if err := ender(b.reap.ctx, callID, dialog); err != nil {
		b.log.Warn("cluster reaper: ending a dead node's call's legs failed", "call_id", callID, "error", err)
		// Cancelled: the gateway is closing and the BYEs may not have
		// left; another survivor sends them. Any other failure (a
		// record that does not parse) a retry would not mend.
		return !errors.Is(err, context.Canceled)
	}
	return true
}
