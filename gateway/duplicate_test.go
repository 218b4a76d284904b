package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// An INVITE repeated after its transaction is gone (another branch, the
// same Call-ID) while the call is up must not place a second call.
func TestRepeatedInviteIsNotASecondCall(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })

	// The same call (From tag, Call-ID) on a new transaction.
	again := newInvite(e.gw.Addr(), "+12125550100", "+442079460018")
	again.ReplaceHeader(sip.HeaderClone(sess.InviteRequest.From()))
	again.AppendHeader(sip.HeaderClone(sess.InviteRequest.CallID()))
	again.AppendHeader(sip.HeaderClone(sess.InviteRequest.Contact()))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	tx, err := e.caller.cli.TransactionRequest(ctx, again)
	must(t, err)
	defer tx.Terminate()
	select {
	case res := <-tx.Responses():
		t.Fatalf("the repeated INVITE was answered %d; want it dropped", res.StatusCode)
	case <-ctx.Done():
	}
	if n := e.carrier.invites.Load(); n != 1 {
		t.Fatalf("%d INVITEs at the carrier; want 1", n)
	}
	if n := len(e.gw.Calls()); n != 1 {
		t.Fatalf("%d calls up; want 1", n)
	}
	bctx, bcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer bcancel()
	must(t, sess.Bye(bctx))
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
}
