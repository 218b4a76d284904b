package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// An INVITE the gateway cannot handle — no Contact, a Contact that does
// not parse or is no SIP URI, a Request-URI that is not sip:, a From
// without a tag — gets a 4xx naming the problem within one transaction,
// before any money is held. Without Contact it got no final answer at all
// (credit was held, sipgo's dialog layer refused the INVITE, and the
// caller retransmitted for 32 s).
func TestUnhandleableInviteAnswered(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	cases := []struct {
		name   string
		edit   func(req *sip.Request)
		status int
		phrase string
	}{
		{"no Contact", func(*sip.Request) {}, 400, "Missing Contact"},
		{"unparsable Contact", func(req *sip.Request) {
			req.AppendHeader(sip.NewHeader("Contact", `"unterminated <sip:pbx@127.0.0.1`))
		}, 400, "Invalid Contact"},
		{"Contact not a SIP URI", func(req *sip.Request) {
			req.AppendHeader(sip.NewHeader("Contact", "<mailto:pbx@example.com>"))
		}, 400, "Invalid Contact"},
		{"wildcard Contact", func(req *sip.Request) {
			req.AppendHeader(sip.NewHeader("Contact", "*"))
		}, 400, "Invalid Contact"},
		{"non-SIP Request-URI", func(req *sip.Request) {
			req.AppendHeader(&e.caller.contact)
			var u sip.Uri
			must(t, sip.ParseUri("http://example.com/+442079460018", &u))
			req.Recipient = u
			req.SetDestination(e.gw.Addr())
		}, 416, "Unsupported URI Scheme"},
		{"From without tag", func(req *sip.Request) {
			req.AppendHeader(&e.caller.contact)
			req.From().Params = sip.NewParams()
		}, 400, "Missing From tag"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := newInvite(e.gw.Addr(), "+12125550100", "+442079460018")
			tc.edit(req)
			// A correctness bound, not a timing: one transaction, answered
			// long before the caller's Timer B (32 s).
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			tx, err := e.caller.cli.TransactionRequest(ctx, req)
			must(t, err)
			defer tx.Terminate()
			for {
				select {
				case res := <-tx.Responses():
					if res.StatusCode < 200 {
						continue
					}
					if res.StatusCode != tc.status || res.Reason != tc.phrase {
						t.Fatalf("answered %d %s; want %d %s", res.StatusCode, res.Reason, tc.status, tc.phrase)
					}
					if w := res.GetHeader("Warning"); w == nil || !strings.HasPrefix(w.Value(), `399 creditgate "`) {
						t.Fatalf("no Warning naming the problem: %v", res)
					}
				case <-ctx.Done():
					t.Fatal("no final answer within 1 s")
				}
				break
			}
			if n := e.carrier.invites.Load(); n != 0 {
				t.Fatalf("%d INVITEs reached the carrier", n)
			}
			if b := e.balance("acme"); !b.Equal(d("50.00")) {
				t.Fatalf("balance %s after a refused INVITE; want 50.00", b)
			}
			o, err := e.ledger.Org("acme")
			must(t, err)
			if !o.Held.IsZero() {
				t.Fatalf("%s held after a refused INVITE", o.Held)
			}
			if n := len(e.cdrs("acme")); n != 0 {
				t.Fatalf("%d CDRs for refused INVITEs", n)
			}
			if n := len(e.gw.Calls()); n != 0 {
				t.Fatalf("%d calls up", n)
			}
			must(t, e.ledger.CheckInvariants())
		})
	}
}
